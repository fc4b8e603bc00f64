"""Device choice for inference: "auto" picks the GPU when there is one; a GPU that is not there is a clear error.

The two GPU tests run only where torch sees a CUDA GPU: the same bundle must analyse reviews the same on the GPU
as on the CPU, and the offline base must embed the same."""

import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from reviewlens.cli import app
from reviewlens.device import resolve_device
from reviewlens.errors import ReviewlensError

runner = CliRunner()


def test_auto_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device(" AUTO ") == "cuda"
    assert resolve_device("cpu") == "cpu"


def test_missing_or_unknown_devices_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ReviewlensError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ReviewlensError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    with pytest.raises(ReviewlensError, match="'gpu0' is not a torch device"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ReviewlensError, match="only 1 CUDA GPU"):
        resolve_device("cuda:3")


def test_cli_device_option(tiny_bundle, monkeypatch):
    result = runner.invoke(app, ["analyze", "--model", str(tiny_bundle), "--device", "cpu", "--format", "json",
                                 "배송이 빨라요"])
    assert result.exit_code == 0, result.output
    assert "배송이 빨라요" in result.stdout
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in (["analyze", "--model", str(tiny_bundle), "--device", "cuda", "배송이 빨라요"],
                    ["demo", "--model", str(tiny_bundle), "--device", "cuda"],
                    ["serve", "--model", str(tiny_bundle), "--device", "cuda"]):  # refused before uvicorn starts
        result = runner.invoke(app, command)
        assert result.exit_code != 0
        assert "no CUDA GPU" in result.output, result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_analysis_matches_cpu(tiny_bundle):
    from reviewlens.analyzer import ReviewAnalyzer

    texts = ["옷은 예쁘지만 배송은 늦어요", "품질이 좀 떨어지지만 가격이 싸니까", "색이 정말 이뻐요"] * 30
    cpu = ReviewAnalyzer.from_pretrained(tiny_bundle, device="cpu")
    gpu = ReviewAnalyzer.from_pretrained(tiny_bundle)  # auto
    assert str(gpu.scorer.device).startswith("cuda")
    np.testing.assert_allclose(gpu.keyword_probabilities(texts), cpu.keyword_probabilities(texts), atol=1e-4)
    on_cpu, on_gpu = cpu.analyze(texts), gpu.analyze(texts)
    assert [r.completion() for r in on_gpu] == [r.completion() for r in on_cpu]
    for a, b in zip(on_gpu, on_cpu):
        for ka, kb in zip(a.keywords, b.keywords):
            assert ka.probability == pytest.approx(kb.probability, abs=1e-4)
            assert [h.word for h in ka.highlights] == [h.word for h in kb.highlights]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_sentence_embeddings_match_cpu(tiny_base):
    """The pooling behind ``bases.offline_embedder`` (audit --linear, the active-learning ensemble) on CUDA."""
    from reviewlens.bases import _load_encoder, _mean_pooled

    texts = ["옷은 예쁘지만 배송은 늦어요", "색이 정말 이뻐요", "가격 대비 소재가 좋아요 길이가 짧아요"] * 5
    on_cpu = _mean_pooled(*_load_encoder(tiny_base, "cpu"), texts, 4, 64)
    tok, model = _load_encoder(tiny_base, "cuda")
    assert model.device.type == "cuda"
    on_gpu = _mean_pooled(tok, model, texts, 4, 64)
    assert on_gpu.dtype == np.float32 and on_gpu.shape == on_cpu.shape
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)


def test_the_api_loads_its_bundle_on_the_chosen_device(tiny_bundle, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from reviewlens.analyzer import ReviewAnalyzer
    from reviewlens.serve.api import create_app

    real, devices = ReviewAnalyzer.from_pretrained, []

    def recording_load(path, **kwargs):
        devices.append(kwargs.get("device"))
        return real(path, **kwargs)

    monkeypatch.setattr(ReviewAnalyzer, "from_pretrained", staticmethod(recording_load))
    with TestClient(create_app(tiny_bundle, device="cpu")) as http:
        deadline = time.monotonic() + 60
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the model did not load in 60 s"
            time.sleep(0.1)
        assert http.post("/v1/analyze", json={"reviews": ["배송이 빨라요"]}).status_code == 200
    assert devices == ["cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ReviewlensError, match="no CUDA GPU"):  # at once, not in the background load
        create_app(tiny_bundle, device="cuda")
