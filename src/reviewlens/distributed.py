"""Analyze many review files on a Ray cluster (``reviewlens analyze --engine ray``, extra ``reviewlens[ray]``).

One Ray Data pipeline runs over every input file that has no output yet:

```
input files ──► read tasks (reviewlens' readers) ──► blocks of ``rows_per_block`` reviews
            ──► map_batches on an actor pool (each actor loads the bundle once) ──► driver
            ──► <output_dir>/<input stem>.parquet, one per input file, written atomically
```

The files are parsed by the same readers as the local path (``read_texts``: CSV in UTF-8 or CP949, JSONL,
Parquet, NIKL/AI Hub jsonl, ``.txt``), so ids, text cleaning and row-level errors are identical; Ray's own
CSV/JSON readers would type ids as numbers and report bad rows without file, row and field. Output columns
are those of the local ``--format csv`` output: id, text, completion, keywords (a JSON string).

Resumable by input file: a file whose output exists is skipped, and an output appears only once every row of
its input is analysed (temp name, then rename). A file that cannot be read does not stop the others; it is
reported at the end and gets no output, so a rerun after fixing it analyses just that file.
Paths must be visible to every node (a shared filesystem) on a multi-node cluster.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .analyzer import ANALYSIS_COLUMNS
from .errors import ReviewlensError, require

logger = logging.getLogger(__name__)

INPUT_SUFFIXES = (".csv", ".jsonl", ".parquet", ".txt")
_ROUTING_COLUMNS = ("source", "rows_in_file", "error")
READ_CPUS = 0.5
"""CPUs of a read task. Not 1 on purpose: equal resources would let Ray fuse reading (and with it the split of
a file into blocks) into the actors, so one actor would analyse a whole file while the others wait."""
WAIT_FOR_ACTORS_S = 900
"""How long the pipeline waits for all ``num_workers`` actors to start before it fails (not hangs)."""


@dataclass
class FileResult:
    """What happened to one input file."""

    source: str
    output: str
    status: str  # "done", "skipped" (output already there) or "failed"
    rows: int = 0
    error: str | None = None


@dataclass
class RayAnalysisReport:
    """The files of one ``analyze_with_ray`` run and how long it took."""

    files: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    rows_per_worker: dict[str, int] = field(default_factory=dict)  # "node:pid" of each actor -> reviews

    def by_status(self, status: str) -> list[FileResult]:
        return [f for f in self.files if f.status == status]

    @property
    def rows(self) -> int:
        """Reviews analysed in this run (skipped files not counted)."""
        return sum(f.rows for f in self.by_status("done"))

    def raise_for_failures(self) -> None:
        """Raise a ReviewlensError listing the files that could not be analysed."""
        failed = self.by_status("failed")
        if failed:
            shown = "\n".join(f"  {f.error}" for f in failed)
            raise ReviewlensError(f"{len(failed)} of {len(self.files)} input file(s) could not be analysed and have "
                                  f"no output; fix them and rerun (finished files are skipped):\n{shown}")


# -- planning (driver) --------------------------------------------------------------------------------------


def expand_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Input files from files, directories (their review files, not recursive) and glob patterns, sorted."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    found: dict[Path, None] = {}
    for item in items:
        text = str(item)
        if glob.has_magic(text):
            matches = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
            files = [p for p in matches if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES]
            if not files:
                raise ReviewlensError(f"{text}: no review files ({', '.join(INPUT_SUFFIXES)}) match this pattern")
        elif Path(text).is_dir():
            files = sorted(p for p in Path(text).iterdir()
                           if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in INPUT_SUFFIXES)
            if not files:
                raise ReviewlensError(f"{text}: the directory has no review files ({', '.join(INPUT_SUFFIXES)})")
        elif Path(text).is_file():
            files = [Path(text)]
        else:
            raise ReviewlensError(f"{text}: no such file, directory or glob match")
        found.update(dict.fromkeys(p.resolve() for p in files))
    return list(found)


def output_path(source: Path, output_dir: Path) -> Path:
    """Where the analysis of ``source`` goes: ``<output_dir>/<stem>.parquet``."""
    return output_dir / f"{source.stem}.parquet"


def plan_outputs(sources: Sequence[Path], output_dir: Path) -> dict[Path, Path]:
    """Input -> output path, refusing two inputs with one output and an output that would replace an input."""
    outputs: dict[Path, Path] = {}
    seen: dict[Path, Path] = {}
    inputs = set(sources)
    for source in sources:
        out = output_path(source, output_dir)
        if out in seen:
            raise ReviewlensError(f"{seen[out]} and {source} would both be written to {out}; rename one of them "
                                  "or analyse them into different --output directories")
        if out in inputs:
            raise ReviewlensError(f"the output {out} would replace the input file {out}; choose another --output")
        seen[out] = source
        outputs[source] = out
    return outputs


# -- inside Ray --------------------------------------------------------------------------------------------


def _read_schema():
    import pyarrow as pa

    return pa.schema([("source", pa.string()), ("rows_in_file", pa.int64()), ("error", pa.string()),
                      ("id", pa.string()), ("text", pa.string())])


def _output_schema():
    import pyarrow as pa

    return pa.schema([(name, pa.string()) for name in ANALYSIS_COLUMNS])


def read_files(batch: dict, *, skip_bad_rows: bool = False, rejects_dir: str | None = None):
    """A Ray map_batches function: read each path of ``batch["path"]`` with ``read_texts``.

    A file that cannot be read becomes one row whose ``error`` is the ReviewlensError's message.
    """
    import pyarrow as pa

    from .data import read_texts

    columns: dict[str, list] = {name: [] for name in _read_schema().names}
    for path in batch["path"]:
        path = str(path)
        rejects = Path(rejects_dir) / f"{Path(path).stem}.rejects.jsonl" if rejects_dir else None
        try:
            ids, texts = read_texts(path, skip_bad_rows=skip_bad_rows, rejects_path=rejects)
        except ReviewlensError as exc:
            ids, texts, error = [None], [None], str(exc)
        else:
            ids, error = (ids if ids is not None else [None] * len(texts)), None
        columns["source"] += [path] * len(texts)
        columns["rows_in_file"] += [len(texts)] * len(texts)
        columns["error"] += [error] * len(texts)
        columns["id"] += [None if i is None else str(i) for i in ids]
        columns["text"] += texts
    return pa.Table.from_pydict(columns, schema=_read_schema())


class BundleAnalyzer:
    """A Ray actor: loads the bundle once, then analyses blocks of reviews into the output columns."""

    def __init__(self, model: str, *, batch_size: int = 64, highlights: bool = True, top_k: int = 3,
                 sentiment_scope: str = "clause", threads: int = 1) -> None:
        import torch

        from .analyzer import ReviewAnalyzer

        torch.set_num_threads(max(1, threads))
        self.analyzer = ReviewAnalyzer.from_pretrained(model, batch_size=batch_size)
        self.highlights, self.top_k, self.sentiment_scope = highlights, top_k, sentiment_scope
        self.worker = f"{ray_node_ip()}:{os.getpid()}"

    def __call__(self, table):
        import pyarrow as pa

        from .analyzer import analysis_rows

        data = table.to_pydict()
        live = [i for i, error in enumerate(data["error"]) if error is None]
        results = self.analyzer.analyze([data["text"][i] for i in live], ids=[data["id"][i] for i in live],
                                        highlights=self.highlights, top_k=self.top_k,
                                        sentiment_scope=self.sentiment_scope)
        out = {name: [None] * table.num_rows for name in ANALYSIS_COLUMNS}
        for i, row in zip(live, analysis_rows(results)):
            for name in ANALYSIS_COLUMNS:
                out[name][i] = row[name]
        out.update({name: data[name] for name in _ROUTING_COLUMNS})
        out["worker"] = [self.worker] * table.num_rows
        schema = pa.schema([f for f in _read_schema() if f.name in _ROUTING_COLUMNS] + list(_output_schema())
                           + [pa.field("worker", pa.string())])
        return pa.Table.from_pydict({name: out[name] for name in schema.names}, schema=schema)


def ray_node_ip() -> str:
    """This Ray node's IP address (``local`` outside Ray)."""
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # pragma: no cover - outside a Ray worker
        return "local"


# -- writing (driver) --------------------------------------------------------------------------------------


class _OutputFile:
    """One output Parquet, written to a temp name and renamed into place when its last row arrives."""

    def __init__(self, source: str, path: Path, metadata: dict[str, str]) -> None:
        import pyarrow.parquet as pq

        self.source, self.path, self.rows = source, path, 0
        self.expected: int | None = None
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        schema = _output_schema().with_metadata({f"reviewlens.{k}": v for k, v in metadata.items()})
        self.writer = pq.ParquetWriter(self.tmp, schema)

    def write(self, table) -> None:
        self.writer.write_table(table.select(list(ANALYSIS_COLUMNS)).cast(self.writer.schema))
        self.rows += table.num_rows

    @property
    def complete(self) -> bool:
        return self.expected is not None and self.rows >= self.expected

    def commit(self) -> None:
        self.writer.close()
        with open(self.tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


def _clean_stale_temps(output_dir: Path, outputs: Iterable[Path]) -> None:
    """Remove temp files that an earlier, killed run left behind."""
    for out in outputs:
        for stale in output_dir.glob(f".{glob.escape(out.name)}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()


# -- the engine --------------------------------------------------------------------------------------------


def analyze_with_ray(model: str | os.PathLike | None, inputs: str | os.PathLike | Iterable[str | os.PathLike],
                     output_dir: str | os.PathLike, num_workers: int = 2, batch_size: int = 64, *,
                     highlights: bool = True, top_k: int = 3, sentiment_scope: str = "clause",
                     skip_bad_rows: bool = False, rows_per_block: int = 256, cpus_per_worker: float = 1.0,
                     address: str | None = None) -> RayAnalysisReport:
    """Analyse every review file of ``inputs`` into ``output_dir`` with ``num_workers`` Ray actors.

    ``model`` is a bundle directory (None: the default bundle). Connects to ``address`` (or ``RAY_ADDRESS``)
    when given, joins the Ray instance of this process when there is one, else starts a local one (shut
    down at the end). Files whose output exists are skipped; unreadable files are reported in the returned
    report (``raise_for_failures``) and get no output. ``skip_bad_rows`` writes each file's rejects to
    ``<output_dir>/<stem>.rejects.jsonl``.
    """
    from .bundle import ModelBundle, resolve_bundle_path

    ray = require("ray", "ray")
    require("ray.data", "ray")
    if num_workers < 1:
        raise ReviewlensError(f"--workers must be at least 1, not {num_workers}")
    if rows_per_block < 1 or batch_size < 1:
        raise ReviewlensError("batch_size and rows_per_block must be at least 1")
    model_path = resolve_bundle_path(model).resolve()
    ModelBundle.load(model_path)  # a clear error here rather than in every actor
    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise ReviewlensError(f"--output {output_dir} is a file; with --engine ray it must be a directory")
    sources = expand_inputs(inputs)
    outputs = plan_outputs(sources, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(output_dir, outputs.values())

    report = RayAnalysisReport()
    pending = []
    for source, out in outputs.items():
        if out.exists():
            report.files.append(FileResult(str(source), str(out), "skipped"))
        else:
            pending.append(source)
    if report.files:
        logger.info("skipping %d file(s) whose output exists in %s", len(report.files), output_dir)
    if not pending:
        return report

    started_ray = False
    if not ray.is_initialized():
        _init_ray(ray, address)
        started_ray = True
    start = time.perf_counter()
    try:
        ds = ray.data.from_items([{"path": str(p)} for p in pending], override_num_blocks=len(pending))
        ds.context.execution_options.preserve_order = True  # rows come back in file and row order
        ds.context.enable_progress_bars = False
        ds.context.wait_for_min_actors_s = WAIT_FOR_ACTORS_S  # every worker gets work, or a clear timeout
        ds = ds.map_batches(read_files, batch_size=1, batch_format="numpy", num_cpus=READ_CPUS,
                            fn_kwargs={"skip_bad_rows": skip_bad_rows,
                                       "rejects_dir": str(output_dir) if skip_bad_rows else None})
        ds = ds.repartition(target_num_rows_per_block=rows_per_block)  # spreads one file over the actors
        ds = ds.map_batches(BundleAnalyzer, batch_size=None, batch_format="pyarrow",
                            num_cpus=actor_cpus(ray.cluster_resources().get("CPU", 1.0), num_workers,
                                                cpus_per_worker),
                            compute=ray.data.ActorPoolStrategy(size=num_workers),
                            fn_constructor_kwargs={"model": str(model_path), "batch_size": batch_size,
                                                   "highlights": highlights, "top_k": top_k,
                                                   "sentiment_scope": sentiment_scope,
                                                   "threads": max(1, int(cpus_per_worker))})
        report.files += _write_outputs(ds, outputs, {"model": str(model_path)}, report.rows_per_worker)
    finally:
        report.seconds = time.perf_counter() - start
        if started_ray:
            ray.shutdown()
    for result in report.by_status("failed"):
        logger.warning("%s", result.error)
    return report


def _init_ray(ray, address: str | None, attempts: int = 3) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``), else start a local Ray; a local start that times out (Ray waits 30 s
    for its raylet, too little on a busy machine) is tried again."""
    where = address or os.environ.get("RAY_ADDRESS") or "a local Ray instance"
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
            return
        except Exception as exc:  # ray raises ConnectionError, TimeoutError, plain Exception ...
            with contextlib.suppress(Exception):
                ray.shutdown()
            if attempt < attempts and where == "a local Ray instance" and "timed out" in str(exc):
                logger.warning("Ray start-up timed out (attempt %d of %d); trying again", attempt, attempts)
                continue
            raise ReviewlensError(f"cannot start or join {where}: {str(exc).rstrip('.')}. Check `ray status`, or "
                                  "unset RAY_ADDRESS to run on this machine alone") from exc


def actor_cpus(cluster_cpus: float, num_workers: int, cpus_per_worker: float) -> float:
    """The CPUs each actor asks Ray for: ``cpus_per_worker``, less when the actors would leave no CPU free.

    Reading and splitting files into blocks needs one free CPU; actors that hold every CPU of the cluster would
    starve those tasks (a hang).
    """
    free = cluster_cpus - 1.0
    if num_workers * cpus_per_worker <= free:
        return cpus_per_worker
    share = round(free / num_workers, 2)
    if share <= 0:
        raise ReviewlensError(f"the Ray cluster has {cluster_cpus:g} CPU(s): the actors need at least 2 "
                              "(one stays free for reading); start Ray with more CPUs")
    logger.warning("%d worker(s) x %g CPU would leave no CPU for reading on this %g-CPU cluster; each worker "
                   "reserves %g CPU instead", num_workers, cpus_per_worker, cluster_cpus, share)
    return share


def _write_outputs(ds, outputs: dict[Path, Path], metadata: dict[str, str],
                   rows_per_worker: dict[str, int]) -> list[FileResult]:
    """Stream the analysed rows into one output file per input; returns the finished and failed files."""
    import pyarrow.compute as pc

    open_files: dict[str, _OutputFile] = {}
    results: list[FileResult] = []
    try:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            live = table.filter(pc.is_null(table["error"]))
            for worker, count in zip(*pc.value_counts(live["worker"]).flatten()):
                rows_per_worker[worker.as_py()] = rows_per_worker.get(worker.as_py(), 0) + count.as_py()
            for source in pc.unique(table["source"]).to_pylist():
                rows = table.filter(pc.equal(table["source"], source))
                out = outputs[Path(source)]
                error = rows["error"][0].as_py()
                if error is not None:
                    results.append(FileResult(source, str(out), "failed", error=error))
                    continue
                handle = open_files.get(source)
                if handle is None:
                    handle = open_files[source] = _OutputFile(source, out, {**metadata, "source": source})
                handle.expected = rows["rows_in_file"][0].as_py()
                handle.write(rows)
                if handle.complete:
                    handle.commit()
                    del open_files[source]
                    results.append(FileResult(source, str(out), "done", rows=handle.rows))
                    logger.info("wrote %d row(s) to %s", handle.rows, out)
    finally:
        for handle in open_files.values():
            handle.discard()
    if open_files:
        raise ReviewlensError(f"the Ray pipeline ended before these files were complete: {sorted(open_files)}")
    return results


def summarize(report: RayAnalysisReport) -> str:
    """One line for people: files done, skipped and failed, rows and reviews per second."""
    rate = report.rows / report.seconds if report.seconds else 0.0
    return (f"{len(report.by_status('done'))} file(s) analysed ({report.rows:,} reviews, {rate:,.1f} reviews/s, "
            f"{len(report.rows_per_worker)} worker(s)), {len(report.by_status('skipped'))} skipped (output exists), "
            f"{len(report.by_status('failed'))} failed")

