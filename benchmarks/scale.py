"""Throughput and memory of `reviewlens analyze`: the local path against the Ray engine with 1 and 2 workers.

    python benchmarks/scale.py                          # 20,000 reviews (real NIKL texts, repeated), models/default
    python benchmarks/scale.py --quick                  # 2,000 reviews
    python benchmarks/scale.py --model path/to/bundle --reviews 5000 --no-highlights

The reviews are written as ``--shards`` CSV files (the Ray engine's unit of work and of resumption) and once
as a single CSV for the local path. Each configuration is one ``reviewlens analyze`` process, started fresh,
so its time is end to end (imports, model loading, Ray start-up, reading, analysis, writing) and its memory
is its own: the peak of the summed RSS of the process and every process under it (Ray's raylet, GCS and
workers included), sampled every 0.2 s. The CPU seconds are those of the same process tree (each process's
last sample), so reviews per CPU-second show the engines' cost even on a machine shared with other work,
where wall-clock rates depend on the share of the CPUs each run got. Every configuration uses one torch thread
per worker. Rates are also shown as a ratio to the local path measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NIKL = ROOT.parent / "shared" / "data" / "nikl-absa-2022"
EXAMPLES = ROOT / "examples" / "fashion_reviews.csv"
DEFAULT_MODEL = ROOT / "models" / "default"
CLI = [sys.executable, "-m", "reviewlens.cli"]


def real_texts() -> tuple[list[str], str]:
    """NIKL review sentences (train, then dev), or the shipped example reviews when NIKL is absent."""
    texts = []
    for name in ("train.jsonl", "dev.jsonl"):
        if (NIKL / name).exists():
            with open(NIKL / name, encoding="utf-8") as handle:
                texts += [json.loads(line)["sentence_form"] for line in handle if line.strip()]
    if texts:
        return texts, "NIKL 2022 ABSA train+dev sentences"
    import csv

    with open(EXAMPLES, encoding="utf-8", newline="") as handle:
        return [row["text"] for row in csv.DictReader(handle)], f"{EXAMPLES.name} (NIKL data not found)"


def write_inputs(workdir: Path, n: int, shards: int) -> tuple[Path, Path]:
    """``n`` reviews as one CSV (local path) and as ``shards`` CSVs in a directory (Ray engine)."""
    import pandas as pd

    texts, _ = real_texts()
    frame = pd.DataFrame({"id": [f"r{i:07d}" for i in range(n)], "text": [texts[i % len(texts)] for i in range(n)]})
    single = workdir / "reviews.csv"
    frame.to_csv(single, index=False)
    shard_dir = workdir / "shards"
    shard_dir.mkdir()
    size = -(-n // shards)
    for s in range(shards):
        frame.iloc[s * size:(s + 1) * size].to_csv(shard_dir / f"part-{s:03d}.csv", index=False)
    return single, shard_dir


def sample_tree(pid: int, cpu: dict[int, float]) -> int:
    """Summed RSS in bytes of ``pid`` and its descendants; records each one's CPU seconds in ``cpu``."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            with proc.oneshot():
                total += proc.memory_info().rss
                times = proc.cpu_times()
                cpu[proc.pid] = max(cpu.get(proc.pid, 0.0), times.user + times.system)
        except psutil.Error:
            pass
    return total


def run(cmd: list[str], env: dict) -> tuple[float, int, int, float, str]:
    """(wall seconds, exit code, peak tree RSS in bytes, tree CPU seconds, stderr tail) of one command."""
    peak = 0
    cpu: dict[int, float] = {}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, sample_tree(proc.pid, cpu))
        time.sleep(0.2)
    wall = time.perf_counter() - start
    reader.join(timeout=10)
    return wall, proc.returncode, peak, sum(cpu.values()), b"".join(err).decode("utf-8", "replace")[-1500:]


def count_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    if path.is_dir():
        return sum(pq.read_metadata(p).num_rows for p in path.glob("*.parquet"))
    import pandas as pd

    return len(pd.read_csv(path, dtype=str, keep_default_na=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL if (DEFAULT_MODEL / "reviewlens.json").exists()
                        else None, help="bundle directory (default: models/default)")
    parser.add_argument("--reviews", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2,000 reviews")
    parser.add_argument("--shards", type=int, default=4, help="input files for the Ray engine")
    parser.add_argument("--highlights", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=256, help="reviews per Ray block / local progress step")
    parser.add_argument("--configs", default="local,ray1,ray2", help="comma list of local, ray1, ray2, ...")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.model is None:
        parser.error("no --model given and models/default is missing")
    n = 2_000 if args.quick else args.reviews

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="reviewlens-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    single, shard_dir = write_inputs(workdir, n, args.shards)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_DEDUP_LOGS="0")
    common = ["--model", str(args.model), "--batch-size", str(args.batch_size), "--chunk-size", str(args.chunk_size),
              "--highlights" if args.highlights else "--no-highlights"]
    _, source = real_texts()
    print(f"# {n:,} reviews ({source}), model {args.model}, highlights {'on' if args.highlights else 'off'}, "
          f"{os.cpu_count()} CPU(s) seen, 1 torch thread per worker", flush=True)

    rows = []
    for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
        if config == "local":
            out = workdir / "local.csv"
            cmd = CLI + ["analyze", "--input", str(single), "--output", str(out), "--format", "csv", *common]
            workers = 1
        elif config.startswith("ray"):
            workers = int(config[3:] or 1)
            out = workdir / f"{config}-out"
            cmd = CLI + ["analyze", "--engine", "ray", "--workers", str(workers), "--input", str(shard_dir),
                         "--output", str(out), *common]
        else:
            parser.error(f"unknown config {config!r}")
        wall, code, peak, cpu, err = run(cmd, env)
        if code != 0:
            print(f"{config} failed with exit code {code}:\n{err}", file=sys.stderr)
            rows.append((config, workers, 0, wall, cpu, peak))
            continue
        written = count_rows(out)
        rows.append((config, workers, written, wall, cpu, peak))
        print(f"  {config}: {written:,} rows in {wall:.1f} s, {cpu:.1f} CPU s", flush=True)

    local = next((r for r in rows if r[0] == "local" and r[2]), None)

    def ratio(value: float, base: float | None) -> str:
        return f"{value / base:.2f}x" if base and value else "-"

    print()
    print("| engine | workers | reviews written | wall s (end to end) | reviews/s | vs local | CPU s (all processes) "
          "| reviews per CPU s | vs local | peak RSS MB (all processes) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for config, workers, written, wall, cpu, peak in rows:
        rate, efficiency = written / wall, (written / cpu if cpu else 0.0)
        name = "local (one process)" if config == "local" else f"ray ({args.shards} input files)"
        print(f"| {name} | {workers} | {written:,} | {wall:.1f} | {rate:.1f} | "
              f"{ratio(rate, local and local[2] / local[3])} | {cpu:.1f} | {efficiency:.1f} | "
              f"{ratio(efficiency, local and local[2] / local[4])} | {peak / 2**20:,.0f} |")


if __name__ == "__main__":
    main()
