"""The REST API: answer shape and order, limits and 4xx errors, micro-batching, model errors, readiness."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'reviewlens[serve]'")
httpx = pytest.importorskip("httpx", reason="the serve extra is not installed: pip install 'reviewlens[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from reviewlens.analyzer import ReviewAnalyzer  # noqa: E402
from reviewlens.bundle import ModelBundle  # noqa: E402
from reviewlens.errors import ModelError  # noqa: E402
from reviewlens.serve.api import MicroBatcher, create_app  # noqa: E402

REVIEWS = ["옷은 예쁘지만 배송은 늦어요", "색이 정말 이뻐요", "", "품질이 좀 떨어지지만 가격이 싸니까"]
POISON = "이 리뷰는 모델을 망가뜨려요"


class RecordingAnalyzer:
    """A real analyzer that records the size of every call and fails on the POISON review."""

    def __init__(self, analyzer: ReviewAnalyzer) -> None:
        self.inner = analyzer
        self.bundle = analyzer.bundle
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def analyze(self, texts, **kwargs):
        texts = list(texts)
        with self.lock:
            self.calls.append(len(texts))
        if POISON in texts:
            raise RuntimeError("the model fell over")
        return self.inner.analyze(texts, **kwargs)


@pytest.fixture(scope="module")
def eager_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """A copy of the tiny bundle with every threshold at 0: each keyword is detected, so the answers have
    keywords and highlights whatever the few seconds of training taught the tiny model."""
    dest = tmp_path_factory.mktemp("eager") / "bundle"
    shutil.copytree(tiny_bundle, dest)
    bundle = ModelBundle.load(dest)
    bundle.thresholds = {k: 0.0 for k in bundle.schema.keywords}
    bundle.write_manifest()
    return dest


@pytest.fixture(scope="module")
def analyzer(eager_bundle) -> ReviewAnalyzer:
    return ReviewAnalyzer.from_pretrained(eager_bundle)


@pytest.fixture(scope="module")
def client(analyzer):
    with TestClient(create_app(analyzer, max_reviews=8, max_chars=200)) as test_client:
        yield test_client


def _concurrently(app, bodies: list[dict]) -> list[httpx.Response]:
    """POST every body to /v1/analyze at the same time (one event loop, the app's lifespan running)."""

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
                return await asyncio.gather(*(http.post("/v1/analyze", json=body) for body in bodies))

    return asyncio.run(main())


# --------------------------------------------------------------------------- answers


def test_analyze_answers_each_review_in_order_like_the_cli(client, analyzer):
    response = client.post("/v1/analyze", json={"reviews": REVIEWS, "highlights": True})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["text"] for r in results] == REVIEWS
    expected = json.loads(json.dumps([r.to_dict() for r in analyzer.analyze(REVIEWS)], ensure_ascii=False))
    assert results == expected  # the JSON of `reviewlens analyze --format json`
    assert results[2]["keywords"] == [] and results[2]["completion"] == ""
    first = results[0]
    assert set(first) == {"text", "completion", "keywords"}
    assert len(first["keywords"]) == len(analyzer.keywords)  # every threshold is 0
    keyword = first["keywords"][0]
    assert set(keyword) == {"keyword", "probability", "level", "level_probabilities", "highlights",
                            "sentiment_highlights"}
    assert any(k["highlights"] or k["sentiment_highlights"] for k in first["keywords"])
    for k in first["keywords"]:
        for h in k["highlights"] + k["sentiment_highlights"]:
            assert REVIEWS[0][h["start"]:h["end"]] == h["word"]


def test_analyze_without_highlights_and_with_ids(client):
    body = {"reviews": REVIEWS[:2], "highlights": False, "ids": ["a-1", "b-2"]}
    results = client.post("/v1/analyze", json=body).json()["results"]
    assert [r["id"] for r in results] == ["a-1", "b-2"]
    assert [r["text"] for r in results] == REVIEWS[:2]
    assert all(not k["highlights"] and not k["sentiment_highlights"] for r in results for k in r["keywords"])


def test_schema_health_ready_and_docs(client, analyzer):
    schema = client.get("/v1/schema").json()
    assert schema["keywords"] == list(analyzer.bundle.schema.keywords)
    assert schema["levels"] == list(analyzer.bundle.schema.levels)
    assert schema["thresholds"] == analyzer.bundle.thresholds
    assert schema["clause_weight"] == analyzer.bundle.clause_weight
    assert schema["model"]["base_model"] == analyzer.bundle.base_model
    assert schema["model"]["name"] == Path(analyzer.bundle.path).name
    assert schema["limits"]["max_reviews"] == 8 and schema["limits"]["max_chars"] == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/analyze", "/v1/schema", "/healthz", "/readyz"} <= set(paths)
    assert client.get("/docs").status_code == 200


# --------------------------------------------------------------------------- limits and 4xx errors


@pytest.mark.parametrize("body, status, code, words", [
    ({"reviews": ["좋아요"] * 9}, 413, "too_many_reviews", "limit is 8"),
    ({"reviews": ["좋아요", "가" * 201]}, 413, "review_too_long", "reviews[1]"),
    ({"reviews": []}, 422, "invalid_request", "empty"),
    ({"reviews": ["좋아요", 3]}, 422, "invalid_request", "reviews[1]"),
    ({"reviews": "좋아요"}, 422, "invalid_request", "reviews"),
    ({"reviews": ["좋아요"], "highlights": "yes"}, 422, "invalid_request", "highlights"),
    ({"reviews": ["좋아요"], "top_k": 0}, 422, "invalid_request", "top_k"),
    ({"review": ["좋아요"]}, 422, "invalid_request", "review"),
    ({"reviews": ["좋아요", "별로"], "ids": ["x"]}, 422, "invalid_request", "one id per review"),
    (["좋아요"], 422, "invalid_request", "body"),
])
def test_bad_requests_get_clear_json_errors(client, body, status, code, words):
    response = client.post("/v1/analyze", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert words in error["message"]


def test_malformed_json_is_400(client):
    response = client.post("/v1/analyze", content='{"reviews": ["좋아요",'.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


def test_oversized_body_is_refused_before_parsing(client):
    response = client.post("/v1/analyze", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_unknown_route_and_method_are_json(client):
    assert client.get("/v2/nothing").json()["error"]["code"] == "not_found"
    assert client.get("/v1/analyze").status_code == 405


# --------------------------------------------------------------------------- micro-batching


def test_concurrent_requests_share_one_model_call(analyzer):
    recording = RecordingAnalyzer(analyzer)
    # the batch closes when it is full (8 reviews), long before the 5 s wait bound
    app = create_app(recording, batch_wait_ms=5000, max_batch=8)
    texts = [f"{REVIEWS[i % 2]} {i}번" for i in range(8)]
    responses = _concurrently(app, [{"reviews": [t], "highlights": False} for t in texts])
    assert [r.status_code for r in responses] == [200] * 8
    assert [r.json()["results"][0]["text"] for r in responses] == texts  # each request gets its own review back
    assert recording.calls == [8]


def test_batches_respect_max_batch_and_the_wait_bound(analyzer):
    recording = RecordingAnalyzer(analyzer)
    app = create_app(recording, batch_wait_ms=300, max_batch=4)
    bodies = [{"reviews": [REVIEWS[0]], "highlights": False}] * 5 + [{"reviews": REVIEWS[:2], "highlights": False}]
    responses = _concurrently(app, bodies)
    assert [r.status_code for r in responses] == [200] * 6
    assert [len(r.json()["results"]) for r in responses] == [1] * 5 + [2]
    assert sum(recording.calls) == 7 and max(recording.calls) <= 4 and len(recording.calls) >= 2


def test_without_batching_each_request_is_its_own_call(analyzer):
    recording = RecordingAnalyzer(analyzer)
    app = create_app(recording, batching=False)
    responses = _concurrently(app, [{"reviews": [REVIEWS[1]], "highlights": False}] * 4)
    assert [r.status_code for r in responses] == [200] * 4
    assert recording.calls == [1, 1, 1, 1]


def test_a_failing_request_in_a_merged_batch_does_not_fail_the_others(analyzer):
    recording = RecordingAnalyzer(analyzer)
    app = create_app(recording, batch_wait_ms=5000, max_batch=4)
    bodies = [{"reviews": [REVIEWS[0]]}, {"reviews": [POISON]}, {"reviews": [REVIEWS[1]]}, {"reviews": [REVIEWS[3]]}]
    responses = _concurrently(app, bodies)
    assert [r.status_code for r in responses] == [200, 500, 200, 200]
    assert responses[1].json()["error"]["code"] == "model_error"
    assert "fell over" in responses[1].json()["error"]["message"]
    assert responses[3].json()["results"][0]["text"] == REVIEWS[3]
    assert recording.calls == [4, 1, 1, 1, 1]  # the merged call, then each request alone


def test_a_model_error_is_500_json_and_the_server_stays_healthy(analyzer):
    recording = RecordingAnalyzer(analyzer)
    with TestClient(create_app(recording)) as http:
        failed = http.post("/v1/analyze", json={"reviews": [POISON]})
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "model_error"
        assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
        after = http.post("/v1/analyze", json={"reviews": [REVIEWS[0]]})
        assert after.status_code == 200 and after.json()["results"][0]["text"] == REVIEWS[0]


def test_microbatcher_rejects_a_wrong_number_of_results():
    class Short:
        def __call__(self, texts, **kwargs):
            texts = list(texts)
            return texts[:-1] if len(texts) > 1 else texts

    async def main():
        batcher = MicroBatcher(Short(), max_batch=4, wait_ms=0)
        await batcher.start()
        try:
            with pytest.raises(ModelError, match="2 review"):
                await batcher.submit(["a", "b"])
            assert await batcher.submit(["only"]) == ["only"]  # the worker survived the error
        finally:
            await batcher.stop()

    asyncio.run(main())


# --------------------------------------------------------------------------- loading


def test_a_bundle_path_loads_in_the_background(tiny_bundle, monkeypatch):
    release = threading.Event()
    real = ReviewAnalyzer.from_pretrained

    def slow_load(path, **kwargs):
        assert release.wait(30)
        return real(path, **kwargs)

    monkeypatch.setattr(ReviewAnalyzer, "from_pretrained", staticmethod(slow_load))
    with TestClient(create_app(tiny_bundle)) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 503
        early = http.post("/v1/analyze", json={"reviews": [REVIEWS[0]]})
        assert early.status_code == 503 and early.json()["error"]["code"] == "model_not_ready"
        assert early.headers["retry-after"]
        assert http.get("/v1/schema").json()["model"]["path"] == str(tiny_bundle)  # the manifest is read at once
        release.set()
        deadline = time.monotonic() + 60
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the model did not load in 60 s"
            time.sleep(0.1)
        assert http.post("/v1/analyze", json={"reviews": [REVIEWS[0]]}).status_code == 200


def test_a_failed_load_is_reported(tiny_bundle, monkeypatch):
    def broken(path, **kwargs):
        raise ModelError(f"{path}: weights are corrupt")

    monkeypatch.setattr(ReviewAnalyzer, "from_pretrained", staticmethod(broken))
    with TestClient(create_app(tiny_bundle)) as http:
        deadline = time.monotonic() + 10
        while http.get("/readyz").json()["error"]["code"] != "model_load_failed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert http.get("/healthz").status_code == 503
        assert "corrupt" in http.post("/v1/analyze", json={"reviews": ["좋아요"]}).json()["error"]["message"]


def test_a_wrong_model_path_fails_at_once(tmp_path):
    with pytest.raises(ModelError, match="reviewlens.json is missing"):
        create_app(tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reviewlens_serve_command_serves_the_bundle(eager_bundle, tmp_path):
    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "reviewlens.cli", "serve", "--model", str(eager_bundle),
                                "--port", str(port), "--max-reviews", "5", "--log-level", "warning"],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300  # generous: a loaded, shared machine is slow to import torch
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text(errors="replace")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "reviewlens serve was not ready in 300 s"
            time.sleep(0.25)
        answer = httpx.post(f"{base}/v1/analyze", json={"reviews": REVIEWS[:2]}, timeout=30)
        assert answer.status_code == 200
        assert [r["text"] for r in answer.json()["results"]] == REVIEWS[:2]
        assert httpx.post(f"{base}/v1/analyze", json={"reviews": ["a"] * 6}, timeout=10).status_code == 413
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def test_reviewlens_serve_refuses_a_missing_bundle(tmp_path):
    from typer.testing import CliRunner

    from reviewlens.cli import app

    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "reviewlens.json is missing" in result.output
