"""The REST API (FastAPI): ``POST /v1/analyze``, ``GET /v1/schema``, ``/healthz``, ``/readyz`` and the OpenAPI docs.

The model loads once per process, in the background, so ``/healthz`` answers at once and ``/readyz`` says when
the model is there. Requests that arrive together are analysed together: a ``MicroBatcher`` merges the reviews of
every waiting request into one ``ReviewAnalyzer.analyze`` call (which batches them through the model), waiting at
most ``batch_wait_ms`` for company. Run it with ``reviewlens serve --model DIR`` (extra ``reviewlens[serve]``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError, ReviewlensError, require

require("fastapi", "serve")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

logger = logging.getLogger(__name__)

CONFIG_ENV = "REVIEWLENS_SERVE_CONFIG"
"""Environment variable through which ``reviewlens serve`` hands its settings to uvicorn's worker processes."""


@dataclass
class ServeConfig:
    """Settings of the API server. The defaults suit one CPU box; raise ``max_batch`` on a GPU."""

    model: str | None = None
    """Bundle directory; None means the default bundle."""
    max_reviews: int = 64
    """Reviews per request; more is answered 413."""
    max_chars: int = 2000
    """Characters per review; a longer review is answered 413."""
    batch_wait_ms: float = 5.0
    """How long the first waiting request waits for others to join its batch."""
    max_batch: int = 64
    """Reviews per merged analyzer call."""
    batching: bool = True
    """False: one analyzer call per request, one at a time (the baseline of benchmarks/load_api.py)."""
    scorer_batch_size: int = 64
    """Sequences per forward pass inside the analyzer."""
    torch_threads: int | None = None
    """torch intra-op threads (None: torch's default, one per core). 1 is best on a box shared with other work,
    or with several ``--workers``."""
    device: str = "auto"
    """Where the model runs: "auto" (the GPU when there is one), "cpu", "cuda", "cuda:1" ..."""

    def __post_init__(self) -> None:
        for name in ("max_reviews", "max_chars", "max_batch", "scorer_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ReviewlensError(f"serve setting {name} must be at least 1, not {getattr(self, name)!r}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ReviewlensError(f"serve setting torch_threads must be at least 1, not {self.torch_threads!r}")
        if self.batch_wait_ms < 0:
            raise ReviewlensError(f"serve setting batch_wait_ms must be >= 0, not {self.batch_wait_ms!r}")

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "ServeConfig":
        raw = os.environ.get(CONFIG_ENV)
        return cls(**json.loads(raw)) if raw else cls()


# --------------------------------------------------------------------------- running the analyzer


class ServiceUnavailable(ReviewlensError):
    """The model is not loaded (yet), or the server is shutting down."""


@dataclass
class _Job:
    texts: list[str]
    highlights: bool
    top_k: int
    future: asyncio.Future
    arrived: float


AnalyzeFn = Callable[..., list]
"""``analyze(texts, highlights=..., top_k=...) -> list`` with one result per text, e.g. ``ReviewAnalyzer.analyze``."""


@dataclass
class RunnerStats:
    """What a runner has done: requests answered, analyzer calls made, reviews analysed."""

    requests: int = 0
    calls: int = 0
    reviews: int = 0
    largest_call: int = 0
    failed_calls: int = 0
    busy_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "busy_seconds": round(self.busy_seconds, 3)}

    def timed(self, analyze: AnalyzeFn, texts: list[str], highlights: bool, top_k: int) -> list:
        """Run ``analyze`` (in a worker thread), adding its time to ``busy_seconds``."""
        start = time.perf_counter()
        try:
            return analyze(texts, highlights=highlights, top_k=top_k)
        finally:
            self.busy_seconds += time.perf_counter() - start


class MicroBatcher:
    """Merges the reviews of concurrent requests into one analyzer call.

    One worker task drains an asyncio queue. It takes the oldest request, lets others join until that request has
    waited ``wait_ms`` or ``max_batch`` reviews are collected, and runs ``analyze`` once per (highlights, top_k)
    group in a thread; each request gets its slice of the results. Requests that arrive while the model is busy
    queue up and go together in the next call, so the batch grows with the load. When a merged call fails, each of
    its requests is run alone, so an error reaches only the request that caused it and the others still succeed.
    """

    def __init__(self, analyze: AnalyzeFn, *, max_batch: int = 64, wait_ms: float = 5.0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.analyze = analyze
        self.max_batch = max_batch
        self.wait_s = max(0.0, wait_ms) / 1000.0
        self.stats = RunnerStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._held: _Job | None = None  # a job that did not fit the previous batch goes first in the next

    async def start(self) -> None:
        """Start the worker task (in the running event loop)."""
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(), name="reviewlens-microbatcher")

    async def stop(self) -> None:
        """Stop the worker; requests still waiting get ``ServiceUnavailable``."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        waiting = [self._held] if self._held is not None else []
        self._held = None
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for job in waiting:
            _fail_job(job, ServiceUnavailable("the server is shutting down"))

    async def submit(self, texts: Sequence[str], *, highlights: bool = True, top_k: int = 3) -> list:
        """Analyse ``texts`` (together with whatever else is waiting); one result per text, in order."""
        if self._worker is None or self._queue is None:
            raise ServiceUnavailable("the batcher is not running (call start() first)")
        loop = asyncio.get_running_loop()
        job = _Job(list(texts), bool(highlights), int(top_k), loop.create_future(), loop.time())
        await self._queue.put(job)
        return await job.future

    async def _collect(self) -> list[_Job]:
        """The next batch: the oldest job plus those that arrive within its wait bound and fit ``max_batch``."""
        assert self._queue is not None
        first = self._held if self._held is not None else await self._queue.get()
        self._held = None
        jobs, size = [first], len(first.texts)
        loop = asyncio.get_running_loop()
        deadline = first.arrived + self.wait_s
        while size < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                except asyncio.CancelledError:
                    for waiting in jobs:
                        _fail_job(waiting, ServiceUnavailable("the server is shutting down"))
                    raise
            if size + len(job.texts) > self.max_batch:
                self._held = job
                break
            jobs.append(job)
            size += len(job.texts)
        return jobs

    async def _run(self) -> None:
        while True:
            jobs = await self._collect()
            groups: dict[tuple[bool, int], list[_Job]] = {}
            for job in jobs:
                groups.setdefault((job.highlights, job.top_k), []).append(job)
            try:
                for (highlights, top_k), group in groups.items():
                    try:
                        await self._run_group(group, highlights, top_k)
                    except Exception as exc:  # never let the worker die; the requests get the error
                        logger.exception("micro-batch worker error")
                        for job in group:
                            _fail_job(job, exc)
            except asyncio.CancelledError:
                for job in jobs:
                    _fail_job(job, ServiceUnavailable("the server is shutting down"))
                raise

    async def _call(self, texts: list[str], highlights: bool, top_k: int) -> list:
        self.stats.calls += 1
        self.stats.largest_call = max(self.stats.largest_call, len(texts))
        try:
            results = await asyncio.to_thread(self.stats.timed, self.analyze, texts, highlights, top_k)
        except Exception:
            self.stats.failed_calls += 1
            raise
        if len(results) != len(texts):
            self.stats.failed_calls += 1
            raise ModelError(f"the analyzer returned {len(results)} result(s) for {len(texts)} review(s)")
        self.stats.reviews += len(texts)
        return list(results)

    async def _run_group(self, jobs: list[_Job], highlights: bool, top_k: int) -> None:
        jobs = [job for job in jobs if not job.future.done()]  # a caller that went away needs no answer
        if not jobs:
            return
        texts = [text for job in jobs for text in job.texts]
        try:
            results = await self._call(texts, highlights, top_k)
        except Exception as exc:
            if len(jobs) == 1:
                _fail_job(jobs[0], exc)
                return
            logger.warning("a merged call of %d requests failed (%s: %s); running them one by one",
                           len(jobs), type(exc).__name__, exc)
            for job in jobs:
                try:
                    _finish_job(job, await self._call(job.texts, highlights, top_k))
                except Exception as single_exc:
                    _fail_job(job, single_exc)
                self.stats.requests += 1
            return
        start = 0
        for job in jobs:
            _finish_job(job, results[start:start + len(job.texts)])
            start += len(job.texts)
            self.stats.requests += 1


class SerialRunner:
    """One analyzer call per request, one at a time: the baseline that micro-batching is measured against."""

    def __init__(self, analyze: AnalyzeFn) -> None:
        self.analyze = analyze
        self.stats = RunnerStats()
        self._lock: asyncio.Lock | None = None

    async def start(self) -> None:
        self._lock = asyncio.Lock()

    async def stop(self) -> None:
        self._lock = None

    async def submit(self, texts: Sequence[str], *, highlights: bool = True, top_k: int = 3) -> list:
        if self._lock is None:
            raise ServiceUnavailable("the runner is not running (call start() first)")
        texts = list(texts)
        async with self._lock:
            self.stats.calls += 1
            self.stats.largest_call = max(self.stats.largest_call, len(texts))
            try:
                results = await asyncio.to_thread(self.stats.timed, self.analyze, texts, highlights, top_k)
            except Exception:
                self.stats.failed_calls += 1
                raise
        if len(results) != len(texts):
            raise ModelError(f"the analyzer returned {len(results)} result(s) for {len(texts)} review(s)")
        self.stats.requests += 1
        self.stats.reviews += len(texts)
        return list(results)


def _finish_job(job: _Job, results: list) -> None:
    if not job.future.done():
        job.future.set_result(results)


def _fail_job(job: _Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)


# --------------------------------------------------------------------------- the model, loaded once


class ModelSlot:
    """The bundle's manifest (read at once) and its analyzer (loaded once, in the background)."""

    def __init__(self, model: Any, batch_size: int = 64, device: str = "auto") -> None:
        from ..analyzer import ReviewAnalyzer
        from ..bundle import ModelBundle, resolve_bundle_path

        self.batch_size = batch_size
        self.device = device
        self.error: str | None = None
        if isinstance(model, (str, os.PathLike)) or model is None:
            self.path = resolve_bundle_path(model)
            self.bundle = ModelBundle.load(self.path)  # fails fast, before the server starts, on a wrong path
            self.analyzer: ReviewAnalyzer | None = None
        else:
            if not hasattr(model, "analyze") or not hasattr(model, "bundle"):
                raise ModelError(f"create_app takes a bundle path or a ReviewAnalyzer, not {type(model).__name__}")
            self.analyzer = model
            self.bundle = model.bundle
            self.path = Path(model.bundle.path) if model.bundle.path is not None else None

    @property
    def ready(self) -> bool:
        return self.analyzer is not None

    def load(self) -> None:
        """Load the weights (blocking; run in a thread)."""
        from ..analyzer import ReviewAnalyzer

        try:
            self.analyzer = ReviewAnalyzer.from_pretrained(self.path, batch_size=self.batch_size, device=self.device)
            logger.info("model %s loaded", self.path)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            logger.exception("loading the model %s failed", self.path)

    def analyze(self, texts: list[str], *, highlights: bool = True, top_k: int = 3) -> list:
        if self.analyzer is None:
            raise ServiceUnavailable(self.error or "the model is still loading")
        return self.analyzer.analyze(texts, highlights=highlights, top_k=top_k)


# --------------------------------------------------------------------------- request and response bodies


class AnalyzeRequest(BaseModel):
    """Reviews to analyse."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"reviews": ["옷은 예쁘지만 배송은 늦어요", "색이 정말 이뻐요"], "highlights": True}]})

    reviews: list[StrictStr] = Field(description="Review texts; one result comes back per review, in order.")
    highlights: StrictBool = Field(True, description="Also find the words behind each keyword and sentiment.")
    top_k: StrictInt = Field(3, ge=1, le=20, description="Highlighted words per keyword.")
    ids: list[StrictStr] | None = Field(None, description="Optional ids, one per review, echoed in the results.")


class HighlightOut(BaseModel):
    word: str
    start: int
    end: int
    score: float


class KeywordOut(BaseModel):
    keyword: str
    probability: float
    level: int
    level_probabilities: dict[str, float]
    highlights: list[HighlightOut]
    sentiment_highlights: list[HighlightOut]


class ReviewOut(BaseModel):
    """``ReviewAnalysis.to_dict()``: the shape of ``reviewlens analyze --format json``."""

    id: str | None = None
    text: str
    completion: str
    keywords: list[KeywordOut]


class AnalyzeResponse(BaseModel):
    results: list[ReviewOut]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_response(status: int, code: str, message: str, details: list[dict] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON body of every error: ``{"error": {"code", "message", "details"}}``."""
    return JSONResponse({"error": {"code": code, "message": message, "details": details or []}},
                        status_code=status, headers=headers)


class _BodyLimit:
    """Answers 413 to a request whose Content-Length exceeds ``max_bytes``, before its body is read."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                    response = error_response(413, "body_too_large", f"the request body is {int(value):,} bytes; "
                                              f"the limit is {self.max_bytes:,}")
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _field_name(loc: Sequence) -> str:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


# --------------------------------------------------------------------------- the app


def create_app(model: str | os.PathLike | Any | None = None, *, max_reviews: int = 64, max_chars: int = 2000,
               batch_wait_ms: float = 5.0, max_batch: int = 64, batching: bool = True,
               scorer_batch_size: int = 64, torch_threads: int | None = None, device: str = "auto") -> FastAPI:
    """The FastAPI app serving one bundle: ``model`` is a bundle directory (None: the default) or a loaded
    ``ReviewAnalyzer``. A path's manifest and ``device`` are checked at once; the weights load in the background
    at startup, on ``device`` (a loaded analyzer stays where it is)."""
    from ..device import resolve_device

    config = ServeConfig(model=None, max_reviews=max_reviews, max_chars=max_chars, batch_wait_ms=batch_wait_ms,
                         max_batch=max_batch, batching=batching, scorer_batch_size=scorer_batch_size,
                         torch_threads=torch_threads, device=resolve_device(device))
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    slot = ModelSlot(model, batch_size=config.scorer_batch_size, device=config.device)
    runner = MicroBatcher(slot.analyze, max_batch=config.max_batch, wait_ms=config.batch_wait_ms) \
        if config.batching else SerialRunner(slot.analyze)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runner.start()
        loading = None if slot.ready else asyncio.create_task(asyncio.to_thread(slot.load))
        try:
            yield
        finally:
            await runner.stop()
            if loading is not None and not loading.done():
                loading.cancel()

    app = FastAPI(title="reviewlens", version=_version(), lifespan=lifespan,
                  description="Keywords, per-keyword sentiment and the words behind them, for Korean product reviews.")
    app.state.slot, app.state.runner, app.state.config = slot, runner, config

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            reason = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {}).get("error", "")
            return error_response(400, "malformed_json", f"the request body is not valid JSON ({reason}); send "
                                  '{"reviews": ["..."], "highlights": true}')
        details = [{"field": _field_name(e.get("loc", ())), "problem": e.get("msg", "")} for e in errors]
        shown = "; ".join(f"{d['field']}: {d['problem']}" for d in details[:5])
        more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
        return error_response(422, "invalid_request", f"{shown}{more}", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.post("/v1/analyze", response_model=None, tags=["analysis"],
              responses={200: {"model": AnalyzeResponse}, 400: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
                         422: {"model": ErrorResponse}, 500: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def analyze(body: AnalyzeRequest) -> JSONResponse:
        """Keywords, their sentiment and (optionally) highlighted words of each review, in the given order."""
        reviews = body.reviews
        if not reviews:
            return error_response(422, "invalid_request", "reviews is empty; send at least one review")
        if len(reviews) > config.max_reviews:
            return error_response(413, "too_many_reviews", f"{len(reviews)} reviews in one request; the limit is "
                                  f"{config.max_reviews} (split them over several requests)")
        too_long = [{"field": f"reviews[{i}]", "problem": f"{len(text):,} characters"}
                    for i, text in enumerate(reviews) if len(text) > config.max_chars]
        if too_long:
            first = too_long[0]
            return error_response(413, "review_too_long", f"{first['field']} is {first['problem']} long; the limit is "
                                  f"{config.max_chars:,} characters a review (split the review)", too_long)
        if body.ids is not None and len(body.ids) != len(reviews):
            return error_response(422, "invalid_request", f"ids has {len(body.ids)} item(s) but reviews has "
                                  f"{len(reviews)}; give one id per review or none")
        if not slot.ready:
            return error_response(503, "model_not_ready", slot.error or "the model is still loading; retry shortly "
                                  "(GET /readyz says when it is ready)", headers={"Retry-After": "2"})
        try:
            results = await runner.submit(reviews, highlights=body.highlights, top_k=body.top_k)
        except ServiceUnavailable as exc:
            return error_response(503, "unavailable", str(exc), headers={"Retry-After": "2"})
        except ReviewlensError as exc:
            logger.error("analysis failed: %s", exc)
            return error_response(500, "model_error", str(exc))
        except Exception as exc:
            logger.exception("analysis failed")
            return error_response(500, "model_error", f"the model failed on this request ({type(exc).__name__}: "
                                  f"{exc}); the server is still up")
        out = []
        for i, result in enumerate(results):
            item = result.to_dict()
            if body.ids is not None:
                item = {"id": body.ids[i], **{k: v for k, v in item.items() if k != "id"}}
            out.append(item)
        return JSONResponse({"results": out})

    @app.get("/v1/schema", tags=["model"])
    async def schema() -> dict:
        """The bundle's keywords, sentiment levels, calibrated thresholds and clause weight, model information and
        request limits."""
        bundle = slot.bundle
        return {
            "keywords": list(bundle.schema.keywords), "levels": list(bundle.schema.levels),
            "thresholds": dict(bundle.thresholds), "clause_weight": getattr(bundle, "clause_weight", 0.0),
            "aliases": dict(getattr(bundle.schema, "aliases", {}) or {}),
            "model": {"path": str(slot.path) if slot.path else None, "name": slot.path.name if slot.path else None,
                      "base_model": bundle.base_model, "kind": bundle.kind, "backend": bundle.backend,
                      "created": bundle.created, "versions": bundle.versions, "metrics": bundle.metrics},
            "limits": {"max_reviews": config.max_reviews, "max_chars": config.max_chars,
                       "max_batch": config.max_batch, "batch_wait_ms": config.batch_wait_ms,
                       "batching": config.batching},
        }

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        """Liveness: 200 while the process serves (also while the model loads); 503 once loading has failed."""
        if slot.error is not None:
            return error_response(503, "model_load_failed", slot.error)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """Readiness: 200 once the model is loaded and requests are answered, 503 before."""
        if not slot.ready:
            code, message = ("model_load_failed", slot.error) if slot.error else ("loading", "the model is loading")
            return error_response(503, code, message, headers={"Retry-After": "2"})
        return JSONResponse({"status": "ready", "model": str(slot.path) if slot.path else None,
                             "stats": runner.stats.to_dict()})

    max_bytes = config.max_reviews * (config.max_chars * 6 + 256) + 65536  # \uXXXX escapes take 6 bytes a char
    app.add_middleware(_BodyLimit, max_bytes=max_bytes)
    return app


def app_from_env() -> FastAPI:
    """The app of ``reviewlens serve`` (settings from ``$REVIEWLENS_SERVE_CONFIG``); a uvicorn factory."""
    config = ServeConfig.from_env()
    return create_app(config.model, max_reviews=config.max_reviews, max_chars=config.max_chars,
                      batch_wait_ms=config.batch_wait_ms, max_batch=config.max_batch, batching=config.batching,
                      scorer_batch_size=config.scorer_batch_size, torch_threads=config.torch_threads,
                      device=config.device)


def run_server(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
               log_level: str = "info") -> None:
    """Check the bundle and the device, then serve it with uvicorn (``workers`` processes, each loading the
    model once)."""
    from ..bundle import ModelBundle, resolve_bundle_path
    from ..device import resolve_device

    uvicorn = require("uvicorn", "serve")
    if workers < 1:
        raise ReviewlensError(f"--workers must be at least 1, not {workers}")
    path = resolve_bundle_path(config.model).resolve()
    ModelBundle.load(path)  # a wrong --model fails here, with the fix, rather than in every worker
    config.device = resolve_device(config.device)  # so does a --device that is not here
    config.model = str(path)
    os.environ[CONFIG_ENV] = config.to_env()
    # keep-alive longer than uvicorn's 5 s default: a pooled client connection that sat idle a few seconds would
    # otherwise be closed under it, and its next POST fail (POSTs are not retried)
    uvicorn.run("reviewlens.serve.api:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, timeout_keep_alive=30)


def _version() -> str:
    from .. import __version__

    return __version__
