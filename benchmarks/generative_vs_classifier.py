"""The generative baseline (a causal LM + peft adapter) beside the classifier pipeline, on NIKL ABSA 2022.

Both systems train on the same subsample of ``train.jsonl`` and are scored on the same subsample of
``dev.jsonl`` with the same metrics (``reviewlens.evaluation``): the pipeline's (keyword, level) pair F1,
keyword (category) F1, the sentiment accuracy, the generative model's parse-failure rate (outputs with a
malformed item, an unknown keyword, a level outside the schema, a conflict or no end token), prediction
speed on dev (reviews/s: generation + parsing for the generative model, keyword + sentiment passes for the
classifiers; no highlights) and training time, all measured in this run on this machine.

The schema is that of the whole train file, so both systems know every train category even when the
subsample lacks some; dev reviews with a category that never occurs in train are left out (counted).
The classifier pipeline calibrates its keyword thresholds on a 10% split of its training subsample
(its recipe: configs/fashion-default.yaml without the fashion aliases), so it learns from 90% of it.

    python benchmarks/generative_vs_classifier.py --quick          # 200 train / 100 dev, 1 epoch each
    python benchmarks/generative_vs_classifier.py --train-size 0 --dev-size 0 --epochs 3   # everything

``--train-size 0`` / ``--dev-size 0`` mean the whole file. On a 2-core CPU gemma-3-270m trains at a few
seconds per review and generates at about a review per second, so the full comparison (3,001 train reviews,
3 epochs, 1,403 dev reviews) takes many hours there; on a GPU it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NIKL = ROOT.parent / "shared" / "data" / "nikl-absa-2022"
CLASSIFIER_RECIPE = ROOT / "configs" / "fashion-default.yaml"


def subsample(dataset, size: int, seed: int):
    """``size`` reviews drawn at random (all of them for 0), kept in file order."""
    if size <= 0 or size >= len(dataset):
        return dataset
    return dataset.subset(sorted(random.Random(seed).sample(range(len(dataset)), size)))


def timed(fn, *args, **kwargs):
    """``fn``'s result, wall seconds and CPU seconds of this process (all threads): on a shared machine the CPU
    seconds move far less with the load of other processes than the wall seconds do."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_generative(train, dev, args, workdir: Path) -> dict:
    from reviewlens.analyzer import ReviewAnalyzer
    from reviewlens.generative import GenerativeConfig, train_generative

    config = GenerativeConfig(base=args.base, peft=args.peft, lora_r=args.lora_r, epochs=args.epochs,
                              batch_size=args.batch_size, learning_rate=args.learning_rate,
                              max_new_tokens=args.max_new_tokens, generation_batch_size=args.generation_batch_size,
                              max_length=args.max_length, seed=args.seed, logging_steps=5)
    out = Path(args.generative_bundle) if args.generative_bundle else workdir / "generative"
    if args.generative_bundle and (out / "reviewlens.json").is_file():
        train_seconds = train_cpu = None
        logging.info("reusing the generative bundle %s", out)
    else:
        _, train_seconds, train_cpu = timed(train_generative, train, out, config)
    analyzer, load_seconds, _ = timed(ReviewAnalyzer.from_pretrained, out)  # dispatches to GenerativeAnalyzer
    result, seconds, cpu = timed(analyzer.evaluate, dev)
    gen = result.extra["generation"]["summary"]
    return {"system": f"{args.base} + {args.peft}", "result": result, "train_seconds": train_seconds,
            "train_cpu": train_cpu, "load_seconds": load_seconds, "predict_seconds": seconds, "predict_cpu": cpu, "parse_failure_rate": gen["parse_failure_rate"],
            "problems": gen["problems_by_kind"], "sentiment_pairs": f"{gen['sentiment_pairs']}/{gen['gold_pairs']}",
            "max_new_tokens": analyzer.max_new_tokens, "examples": result.extra["generation"]["examples"][:5],
            "epochs": args.epochs}


def run_classifier(train, dev, args, workdir: Path) -> dict:
    from reviewlens.analyzer import ReviewAnalyzer
    from reviewlens.evaluation import evaluate_bundle
    from reviewlens.training import TrainConfig, train as train_bundle

    train_seconds = train_cpu = None
    if args.classifier_bundle:
        out = Path(args.classifier_bundle)
        name = f"bundle {out.name}"
    else:
        config = TrainConfig.from_yaml(CLASSIFIER_RECIPE, base=args.classifier_base, aliases={},
                                       keyword_epochs=args.classifier_epochs, sentiment_epochs=args.classifier_epochs,
                                       seed=args.seed, early_stopping_patience=0)
        out = workdir / "classifier"
        _, train_seconds, train_cpu = timed(train_bundle, train, out, config)
        name = f"{args.classifier_base} + LoRA classifiers"
    analyzer, load_seconds, _ = timed(ReviewAnalyzer.from_pretrained, out)
    dev.schema = analyzer.schema
    result, seconds, cpu = timed(evaluate_bundle, None, dev, analyzer=analyzer)
    gold_pairs = sum(len(r.labels or {}) for r in dev.reviews)
    return {"system": name, "result": result, "train_seconds": train_seconds, "train_cpu": train_cpu,
            "load_seconds": load_seconds, "predict_seconds": seconds, "predict_cpu": cpu, "parse_failure_rate": None, "problems": {},
            "sentiment_pairs": f"{gold_pairs}/{gold_pairs}", "epochs": args.classifier_epochs}


def table(rows: list[dict], n_train: int, n_dev: int) -> str:
    head = ("| system | pipeline P | pipeline R | pipeline F1 | keyword F1 | sentiment acc | parse failures | "
            "sentiment pairs | train s (CPU s) | train CPU s/review/epoch | predict s (CPU s) | reviews/s | "
            "predict CPU s/review |")
    lines = [head, "| " + " | ".join(["---"] * 13) + " |"]
    for row in rows:
        r = row["result"]
        parse = "-" if row["parse_failure_rate"] is None else f"{row['parse_failure_rate']:.3f}"
        train = per_review = "-"
        if row["train_seconds"] is not None:
            train = f"{row['train_seconds']:.0f} ({row['train_cpu']:.0f})"
            per_review = f"{row['train_cpu'] / (n_train * row['epochs']):.2f}"
        lines.append(
            f"| {row['system']} | {r.pipeline['precision']:.3f} | {r.pipeline['recall']:.3f} | {r.pipeline['f1']:.3f} "
            f"| {r.pipeline['category']['f1']:.3f} | {r.sentiment['micro']['f1']:.3f} | {parse} | "
            f"{row['sentiment_pairs']} | {train} | {per_review} | {row['predict_seconds']:.1f} "
            f"({row['predict_cpu']:.1f}) | {n_dev / row['predict_seconds']:.2f} | {row['predict_cpu'] / n_dev:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=NIKL, help="Folder with train.jsonl and dev.jsonl.")
    parser.add_argument("--quick", action="store_true", help="200 train / 100 dev reviews, 1 epoch each.")
    parser.add_argument("--train-size", type=int, default=None, help="Training reviews (0: all; default 200).")
    parser.add_argument("--dev-size", type=int, default=None, help="Dev reviews (0: all; default 100).")
    parser.add_argument("--epochs", type=float, default=None, help="Generative epochs (default 1).")
    parser.add_argument("--classifier-epochs", type=float, default=None, help="Classifier epochs (default 1).")
    parser.add_argument("--base", default="gemma-3-270m", help="Causal-LM base of the generative model.")
    parser.add_argument("--peft", default="lora", choices=["lora", "ia3", "prefix", "prompt"])
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=None, help="Default: the peft method's default.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="Default: the longest training completion plus 8 tokens.")
    parser.add_argument("--generation-batch-size", type=int, default=16)
    parser.add_argument("--classifier-base", default="multilingual-e5-small")
    parser.add_argument("--classifier-bundle", type=Path, default=None, help="Reuse a trained classifier bundle.")
    parser.add_argument("--generative-bundle", type=Path, default=None,
                        help="Write the generative bundle here (reused when it exists) instead of a temp folder.")
    parser.add_argument("--skip-classifier", action="store_true")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the numbers here.")
    args = parser.parse_args(argv)
    args.train_size = 200 if args.train_size is None else args.train_size
    args.dev_size = 100 if args.dev_size is None else args.dev_size
    args.epochs = args.epochs if args.epochs is not None else 1.0
    args.classifier_epochs = args.classifier_epochs if args.classifier_epochs is not None else 1.0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    import torch

    from reviewlens.data import read_reviews

    if args.threads:
        torch.set_num_threads(args.threads)
    full_train = read_reviews(args.data_dir / "train.jsonl")
    with tempfile.TemporaryDirectory(prefix="bench-generative-") as tmp:
        workdir = Path(tmp)
        full_dev = read_reviews(args.data_dir / "dev.jsonl", schema=full_train.schema, skip_bad_rows=True,
                                rejects_path=workdir / "dev.rejects.jsonl")
        dropped = sum(1 for _ in open(workdir / "dev.rejects.jsonl", encoding="utf-8")) \
            if (workdir / "dev.rejects.jsonl").exists() else 0
        train = subsample(full_train, args.train_size, args.seed)
        dev = subsample(full_dev, args.dev_size, args.seed)
        rows, phases = [], []
        start = time.perf_counter()
        generative = run_generative(train, dev, args, workdir)
        rows.append(generative)
        phases.append(("generative", generative))
        if not args.skip_classifier:
            classifier = run_classifier(train, dev, args, workdir)
            rows.insert(0, classifier)
            phases.append(("classifier", classifier))
        total = time.perf_counter() - start

    sampled = len(train) < len(full_train) or len(dev) < len(full_dev)
    print(f"## Generative baseline vs classifier pipeline: NIKL ABSA 2022, train -> dev"
          f"{' (subsample)' if sampled else ''}\n")
    print(f"Train: {len(train)} of {len(full_train)} reviews ({sum(len(r.labels) for r in train)} labels); dev: "
          f"{len(dev)} of {len(full_dev)} reviews ({dropped} dev reviews with a category unseen in train left out); "
          f"{len(full_train.schema.keywords)} keywords, levels {full_train.schema.levels}; seed {args.seed}; "
          f"torch threads {torch.get_num_threads()}.")
    print(f"Generative: {args.base}, {args.peft} (r={args.lora_r}), {args.epochs:g} epoch(s), batch {args.batch_size}, "
          f"greedy, max_new_tokens {generative['max_new_tokens']}. Classifier: "
          f"{args.classifier_bundle or args.classifier_base}, {args.classifier_epochs:g} epoch(s) per model.\n")
    print(table(rows, len(train), len(dev)))
    print("\nSentiment acc: micro accuracy of the level on gold (review, keyword) pairs; the generative model is "
          "scored on the pairs it also produced (\"sentiment pairs\"), the classifier on all. Train CPU s/review/epoch: "
          "CPU seconds per training review and epoch (the classifier's: both of its models).")
    print("\n| phase | train s | load s | predict s |\n| --- | --- | --- | --- |")
    for name, row in phases:
        train_s = "-" if row["train_seconds"] is None else f"{row['train_seconds']:.1f}"
        print(f"| {name} | {train_s} | {row['load_seconds']:.1f} | {row['predict_seconds']:.1f} |")
    print("\nWall seconds depend on what else runs on the machine; CPU seconds (this process, all threads) much less.")
    print(f"\nTotal wall time {total / 60:.1f} min. Generative parse problems by kind: "
          f"{json.dumps(generative['problems'], ensure_ascii=False)}")
    for example in generative["examples"]:
        print(f"  {example['id']}: {example['output']!r} -> {[p['kind'] for p in example['problems']]}")
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items()}, "train_reviews": len(train), "dev_reviews": len(dev),
            "rows": [{**{k: v for k, v in row.items() if k != "result"}, "summary": row["result"].summary()}
                     for row in rows]}, ensure_ascii=False, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
