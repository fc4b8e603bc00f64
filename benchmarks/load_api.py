"""Load test of the REST API on loopback: throughput, latency percentiles and failures, with and without
micro-batching.

Each mode gets its own ``reviewlens serve`` process with the given bundle (``--batching`` and ``--no-batching``:
one analyzer call per request, one at a time). For every concurrency level a fixed number of requests (one review
each, cycled from the example reviews) goes out from that many concurrent clients, in rounds that alternate between
the modes so that a change in the machine's load hits both alike, stopping early at a time bound. Throughput is
answered requests per second of sending time; a reply counts as failed when it is not a 2xx or does not hold one
result per review.

    python benchmarks/load_api.py --model models/default
    python benchmarks/load_api.py --model path/to/bundle --quick        # fewer requests, shorter bound

Target (issue #4): zero failed requests, and micro-batching >= 3x the throughput of one-at-a-time at concurrency 32.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "fashion_reviews.csv"
DEFAULT_MODEL = ROOT / "models" / "default"
FALLBACK_REVIEWS = ["옷은 예쁘지만 배송은 늦어요", "색이 정말 이뻐요", "품질이 좀 떨어지지만 가격이 싸니까",
                    "배송 빨라요. 사이즈도 딱 맞아요"]


@dataclass
class LevelResult:
    mode: str
    concurrency: int
    planned: int
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    reasons: Counter = field(default_factory=Counter)
    wall: float = 0.0
    calls: int = 0
    reviews: int = 0
    busy: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.latencies) + self.failures

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.ok / self.wall if self.wall else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


def load_reviews(path: Path | None = None) -> list[str]:
    """The review texts requests cycle through: ``path`` (any file reviewlens reads) or the bundled examples."""
    if path is not None:
        sys.path.insert(0, str(ROOT / "src"))
        from reviewlens.data import read_reviews

        return [r.text for r in read_reviews(path, ignore_labels=True).reviews if r.text.strip()]
    if EXAMPLES.exists():
        with open(EXAMPLES, encoding="utf-8") as fh:
            texts = [row["text"] for row in csv.DictReader(fh) if row.get("text")]
        if texts:
            return texts
    return FALLBACK_REVIEWS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, batching: bool, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "reviewlens.cli", "serve", "--model", str(model), "--port", str(port),
               "--log-level", "warning", "--batch-wait-ms", str(args.batch_wait_ms), "--max-batch",
               str(args.max_batch), "--batch-size", str(args.batch_size),
               "--batching" if batching else "--no-batching"]
    if args.threads:
        command += ["--threads", str(args.threads)]
    return subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})


async def wait_ready(http, base: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if (await http.get(f"{base}/readyz", timeout=2)).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.25)
    raise SystemExit(f"the server was not ready in {timeout:.0f} s; log: {log}")


async def server_stats(base: str) -> dict:
    import httpx

    async with httpx.AsyncClient() as http:
        return (await http.get(f"{base}/readyz", timeout=30)).json().get("stats", {})


async def run_level(base: str, mode: str, concurrency: int, n_requests: int, time_limit: float,
                    reviews: list[str], per_request: int, highlights: bool, request_timeout: float) -> LevelResult:
    """One round: ``n_requests`` from ``concurrency`` clients on fresh connections (so none sat idle long enough
    for the server to close it, which would show up as a failure that is the benchmark's, not the server's)."""
    import httpx

    result = LevelResult(mode, concurrency, n_requests)
    counter = iter(range(n_requests))
    stop_at = float("inf")

    async def client(http) -> None:
        for i in counter:
            if time.perf_counter() > stop_at:
                return
            body = {"reviews": [reviews[(i * per_request + j) % len(reviews)] for j in range(per_request)],
                    "highlights": highlights}
            t0 = time.perf_counter()
            try:
                response = await http.post(f"{base}/v1/analyze", json=body, timeout=request_timeout)
                reason = None if response.is_success else f"HTTP {response.status_code}"
                if reason is None and len(response.json().get("results", [])) != per_request:
                    reason = "wrong number of results"
            except Exception as exc:  # a timeout or a dropped connection is a failed request
                reason = type(exc).__name__
            if reason is None:
                result.latencies.append(time.perf_counter() - t0)
            else:
                result.failures += 1
                result.reasons[reason] += 1

    before = await server_stats(base)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as requests_client:
        start = time.perf_counter()
        stop_at = start + time_limit
        await asyncio.gather(*(client(requests_client) for _ in range(concurrency)))
        result.wall = time.perf_counter() - start
    after = await server_stats(base)
    result.calls = after.get("calls", 0) - before.get("calls", 0)
    result.reviews = after.get("reviews", 0) - before.get("reviews", 0)
    result.busy = after.get("busy_seconds", 0.0) - before.get("busy_seconds", 0.0)
    return result


MODES = {"batching": "micro-batching", "serial": "one-at-a-time"}


def merge(total: LevelResult, part: LevelResult) -> None:
    total.latencies += part.latencies
    total.failures += part.failures
    total.reasons.update(part.reasons)
    total.wall += part.wall
    total.calls += part.calls
    total.reviews += part.reviews
    total.busy += part.busy


async def run_all(model: Path, modes: list[str], args: argparse.Namespace, reviews: list[str]) -> list[LevelResult]:
    """Start one server per mode, then run every level in rounds that alternate between the modes, so a change
    in the machine's load during the run hits both modes alike."""
    import httpx

    servers = {}
    try:
        for mode in modes:
            port = free_port()
            log = Path(args.log_dir) / f"serve-{mode}.log"
            servers[mode] = (start_server(model, port, mode == "batching", args, log), f"http://127.0.0.1:{port}", log)
        for mode, (process, base, log) in servers.items():
            async with httpx.AsyncClient() as http:
                await wait_ready(http, base, process, log, args.ready_timeout)
                for i in range(args.warmup):
                    await http.post(f"{base}/v1/analyze", json={"reviews": [reviews[i % len(reviews)]],
                                                                "highlights": args.highlights}, timeout=120)
        results = []
        for concurrency in args.concurrency:
            totals = {mode: LevelResult(MODES[mode], concurrency, args.requests) for mode in modes}
            per_round = -(-args.requests // args.rounds)
            for round_ in range(args.rounds):
                order = modes if round_ % 2 == 0 else modes[::-1]
                for mode in order:
                    left = args.requests - totals[mode].sent
                    if left <= 0 or totals[mode].wall >= args.time_limit:
                        continue
                    part = await run_level(servers[mode][1], MODES[mode], concurrency, min(per_round, left),
                                           args.time_limit - totals[mode].wall, reviews,
                                           args.reviews_per_request, args.highlights, args.request_timeout)
                    merge(totals[mode], part)
            for level in totals.values():
                reasons = f" failures: {dict(level.reasons)}" if level.failures else ""
                print(f"  {level.mode:>14}  c={concurrency:<3} {level.ok}/{level.sent} ok in {level.wall:.1f} s"
                      f"{reasons}", file=sys.stderr, flush=True)
            results += totals.values()
        return results
    finally:
        for process, _, _ in servers.values():
            process.terminate()
        for process, _, _ in servers.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def model_only(model: Path, reviews: list[str], args: argparse.Namespace, n: int) -> tuple[float, float]:
    """The analyzer alone, in this process: seconds for ``n`` reviews in one call and one call per review (the
    ceiling of what merging requests can gain, without HTTP)."""
    import torch

    from reviewlens.analyzer import ReviewAnalyzer

    if args.threads:
        torch.set_num_threads(args.threads)
    analyzer = ReviewAnalyzer.from_pretrained(model, batch_size=args.batch_size)
    texts = [reviews[i % len(reviews)] for i in range(n)]
    analyzer.analyze(texts[:2], highlights=args.highlights)
    merged = one = 0.0
    for _ in range(2):  # alternate, so a change in load hits both
        start = time.perf_counter()
        analyzer.analyze(texts, highlights=args.highlights)
        merged += time.perf_counter() - start
        start = time.perf_counter()
        for text in texts:
            analyzer.analyze([text], highlights=args.highlights)
        one += time.perf_counter() - start
    return merged, one


def print_tables(results: list[LevelResult], args: argparse.Namespace) -> None:
    print("\n| mode | concurrency | planned | sent | ok | failed (non-2xx/error) | wall s | req/s | p50 ms | p95 ms "
          "| p99 ms | reviews per model call | model busy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        per_call = f"{r.reviews / r.calls:.1f}" if r.calls else "-"
        print(f"| {r.mode} | {r.concurrency} | {r.planned} | {r.sent} | {r.ok} | {r.failures} | {r.wall:.1f} | "
              f"{r.throughput:.1f} | {r.percentile(50):.0f} | {r.percentile(95):.0f} | {r.percentile(99):.0f} | "
              f"{per_call} | {r.busy / r.wall:.0%} |")
    by = {(r.mode, r.concurrency): r for r in results}
    if any(m == "one-at-a-time" for m, _ in by) and any(m == "micro-batching" for m, _ in by):
        print("\n| concurrency | micro-batching req/s | one-at-a-time req/s | speed-up (same run) |")
        print("|---:|---:|---:|---:|")
        for c in args.concurrency:
            b, s = by.get(("micro-batching", c)), by.get(("one-at-a-time", c))
            if b and s and s.throughput:
                print(f"| {c} | {b.throughput:.1f} | {s.throughput:.1f} | {b.throughput / s.throughput:.2f}x |")
        c = max(args.concurrency)
        b, s = by.get(("micro-batching", c)), by.get(("one-at-a-time", c))
        if b and s and s.throughput:
            failed = sum(r.failures for r in results)
            speedup = b.throughput / s.throughput
            print(f"\ntarget: 0 failed requests -> {failed} failed; micro-batching >= 3x at concurrency {c} -> "
                  f"{speedup:.2f}x ({'met' if failed == 0 and speedup >= 3 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="Bundle directory (default: models/default).")
    parser.add_argument("--quick", action="store_true", help="96 requests a level, 30 s bound a level and mode "
                        "(default 256, 60 s).")
    parser.add_argument("--requests", type=int, default=None, help="Requests per concurrency level.")
    parser.add_argument("--time-limit", type=float, default=None, help="Seconds per level before it stops sending.")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--reviews", type=Path, default=None, help="Cycle the reviews of this file (e.g. "
                        "../shared/data/aihub-absa-fashion/dev.jsonl, real lengths) instead of examples/.")
    parser.add_argument("--reviews-per-request", type=int, default=1)
    parser.add_argument("--highlights", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--modes", default="batching,serial", help="batching, serial or both (comma-separated).")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="The server's sequences per forward pass.")
    parser.add_argument("--threads", type=int, default=None, help="The server's torch threads (default: torch's; "
                        "1 on a machine shared with other work).")
    parser.add_argument("--rounds", type=int, default=4, help="Rounds per level, alternating between the modes.")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--model-only", action=argparse.BooleanOptionalAction, default=True,
                        help="Also time the analyzer alone: one merged call against one call per review.")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="Seconds before a request counts as "
                        "failed.")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--log-dir", default=os.environ.get("TMPDIR", "/tmp"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the server processes are stopped on kill
    args.requests = args.requests or (96 if args.quick else 256)
    args.time_limit = args.time_limit or (30.0 if args.quick else 60.0)
    model = args.model or (DEFAULT_MODEL if (DEFAULT_MODEL / "reviewlens.json").exists() else None)
    if model is None:
        raise SystemExit(f"no --model given and {DEFAULT_MODEL} does not exist; pass --model BUNDLE_DIR")
    reviews = load_reviews(args.reviews)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    print(f"model {model}; {len(reviews)} distinct reviews from {args.reviews or EXAMPLES.relative_to(ROOT)}; "
          f"{os.cpu_count()} CPU core(s), load average {os.getloadavg()[0]:.1f} at start; "
          f"{args.requests} requests a level (bound {args.time_limit:.0f} s), {args.reviews_per_request} review(s) a "
          f"request, highlights {'on' if args.highlights else 'off'}, batch wait {args.batch_wait_ms} ms, "
          f"max batch {args.max_batch}, server torch threads {args.threads or 'default'}, {args.rounds} alternating "
          "rounds a level", flush=True)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise SystemExit(f"unknown mode(s) {unknown}; use batching and/or serial")
    results = asyncio.run(run_all(model, modes, args, reviews))
    print_tables(results, args)
    if args.model_only:
        n = max(args.concurrency)
        merged, one = model_only(model, reviews, args, n)
        print(f"\nanalyzer alone (no HTTP, this process): {n} reviews in one call {merged / 2:.2f} s, one call per "
              f"review {one / 2:.2f} s -> merging gains {one / merged:.2f}x at most")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
