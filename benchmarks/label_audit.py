"""Label-audit benchmark: inject label noise into NIKL train and measure how much of it the audit ranks first.

5% of the reviews get one error each, of three kinds in equal shares: a keyword switched on (an absent
keyword added, drawn by keyword frequency, with a level drawn by level frequency), a keyword switched off
(one labeled keyword removed) or a sentiment level changed (to another level, uniformly). The audit
(``reviewlens.audit``: out-of-fold probabilities, confident-learning flags, reviews ranked most suspect
first) is then scored on the top 10% of the ranking: precision and recall of the noisy reviews.

The out-of-fold model is ``reviewlens.baselines.FastReviewModel`` (TF-IDF character n-grams + SGD
logistic regressions), NOT the transformer k-fold training of ``reviewlens audit`` (too slow for a
shared CPU). Its L2 penalty is chosen per run from ``ALPHAS`` by the out-of-fold log loss of the given
(noisy) labels, as a user would choose it on their own data: the injected errors are never looked at.
The same audit on the *original* labels lists the top suspected original labels to read.

    python benchmarks/label_audit.py            # 3 noise seeds, 5 folds, all 3,001 reviews
    python benchmarks/label_audit.py --quick    # 1 noise seed
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from reviewlens.audit import (Predictions, find_label_issues, given_keywords, out_of_fold_predictions,  # noqa: E402
                              rank_reviews)
from reviewlens.baselines import FastModelConfig, FastReviewModel, TfidfFeatures  # noqa: E402
from reviewlens.data import ReviewDataset, read_reviews  # noqa: E402

NIKL = ROOT.parent / "shared" / "data" / "nikl-absa-2022"
KINDS = ("keyword_on", "keyword_off", "sentiment")


def inject_noise(dataset: ReviewDataset, rate: float, seed: int) -> tuple[ReviewDataset, dict[int, tuple]]:
    """A copy of ``dataset`` with one error in ``rate`` of its reviews; {row: (kind, keyword, old, new)}."""
    rng = np.random.default_rng(seed)
    noisy = ReviewDataset(copy.deepcopy(dataset.reviews), dataset.schema, dataset.source)
    schema = dataset.schema
    keyword_counts = Counter(k for r in dataset.reviews for k in r.labels)
    level_counts = Counter(v for r in dataset.reviews for v in r.labels.values())
    levels = sorted(level_counts)
    level_p = np.array([level_counts[v] for v in levels], dtype=float)
    level_p /= level_p.sum()
    rows = rng.choice(len(dataset), round(rate * len(dataset)), replace=False)
    kinds = [KINDS[i % 3] for i in range(len(rows))]
    rng.shuffle(kinds)
    truth = {}
    for row, kind in zip(rows, kinds):
        labels = noisy.reviews[row].labels
        if kind == "keyword_on":
            absent = [k for k in schema.keywords if k not in labels and keyword_counts[k]]
            p = np.array([keyword_counts[k] for k in absent], dtype=float)
            keyword = absent[rng.choice(len(absent), p=p / p.sum())]
            level = int(levels[rng.choice(len(levels), p=level_p)])
            labels[keyword] = level
            truth[int(row)] = (kind, keyword, None, level)
        elif kind == "keyword_off":
            keyword = list(labels)[rng.integers(len(labels))]
            truth[int(row)] = (kind, keyword, labels.pop(keyword), None)
        else:
            keyword = list(labels)[rng.integers(len(labels))]
            old = labels[keyword]
            new = int(rng.choice([v for v in schema.levels if v != old]))
            labels[keyword] = new
            truth[int(row)] = (kind, keyword, old, new)
    return noisy, truth


ALPHAS = (1e-5, 3e-5, 1e-4)
"""L2 penalties tried for the out-of-fold model (FastModelConfig's default is 1e-5)."""


def log_loss(dataset: ReviewDataset, predictions: Predictions) -> float:
    """Mean per review of the out-of-fold log loss of its given labels: every keyword (present or absent,
    binary) plus the level of every labeled keyword."""
    given = given_keywords(dataset)
    p = np.clip(np.nan_to_num(predictions.keyword_probs, nan=0.5), 1e-6, 1 - 1e-6)
    total = -np.sum(np.where(given, np.log(p), np.log(1 - p)))
    levels = [dataset.schema.level_index(dataset.reviews[i].labels[k]) for i, k in predictions.pairs]
    level_p = predictions.sentiment_probs[np.arange(len(levels)), levels]
    total -= np.sum(np.log(np.clip(np.nan_to_num(level_p, nan=1.0), 1e-6, 1.0)))
    return float(total / len(dataset))


def fast_out_of_fold(dataset: ReviewDataset, features: TfidfFeatures, folds: int, seed: int,
                     alpha: float) -> Predictions:
    config = FastModelConfig(threshold_folds=0, alpha=alpha, seed=seed)  # no thresholds: confident learning
    return out_of_fold_predictions(dataset, folds=folds, seed=seed,
                                   fit=lambda part, fold: FastReviewModel(part.schema, config, features=features)
                                   .fit(part))


def best_out_of_fold(dataset: ReviewDataset, features: TfidfFeatures, folds: int,
                     seed: int) -> tuple[Predictions, float]:
    """Out-of-fold predictions of the ``ALPHAS`` model with the lowest ``log_loss`` on ``dataset``'s labels."""
    runs = [(fast_out_of_fold(dataset, features, folds, seed, alpha), alpha) for alpha in ALPHAS]
    return min(runs, key=lambda run: log_loss(dataset, run[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=NIKL / "train.jsonl")
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--top", type=float, default=0.10, help="share of the ranking that is read")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3, help="noise injections")
    parser.add_argument("--show", type=int, default=20, help="suspected original labels to list")
    parser.add_argument("--quick", action="store_true", help="1 noise seed")
    args = parser.parse_args()
    if args.quick:
        args.seeds = 1
    if not args.data.exists():
        sys.exit(f"{args.data} is not here (the NIKL data lives in ../shared/data)")

    start = time.time()
    clean = read_reviews(args.data)
    clean = ReviewDataset([r for r in clean.reviews if r.labels], clean.schema, clean.source)
    features = TfidfFeatures(clean.texts)
    n_top = round(args.top * len(clean))
    rows = []
    for seed in range(args.seeds):
        noisy, truth = inject_noise(clean, args.noise, seed)
        predictions, alpha = best_out_of_fold(noisy, features, args.folds, seed)
        issues = find_label_issues(noisy, predictions)
        order = rank_reviews(noisy, predictions)
        top = set(order[:n_top].tolist())
        flagged = {i.row for i in issues}
        noisy_rows = set(truth)
        hit = top & noisy_rows
        per_kind = {kind: (sum(1 for r in hit if truth[r][0] == kind), sum(1 for t in truth.values() if t[0] == kind))
                    for kind in KINDS}
        rows.append({"seed": seed, "alpha": f"{alpha:g}", "noisy": len(noisy_rows), "flagged": len(flagged),
                     "flag_precision": len(flagged & noisy_rows) / max(len(flagged), 1),
                     "flag_recall": len(flagged & noisy_rows) / len(noisy_rows),
                     "top_precision": len(hit) / n_top, "top_recall": len(hit) / len(noisy_rows), **{
                         f"recall_{k}": a / max(b, 1) for k, (a, b) in per_kind.items()}})
        print(f"  seed {seed}: top-{args.top:.0%} recall {rows[-1]['top_recall']:.3f} "
              f"({time.time() - start:.0f} s)", file=sys.stderr, flush=True)

    print(f"\nLabel audit on {args.data.parent.name}/{args.data.name} ({len(clean)} labeled reviews): {args.noise:.0%} of reviews given one "
          f"error (keyword on / off / sentiment level, equal shares), {args.folds}-fold out-of-fold "
          f"probabilities, {args.seeds} noise seed(s){' (quick mode)' if args.quick else ''}.")
    print("Model: FastReviewModel (TF-IDF char 1-3-grams + SGD logistic regressions), not a transformer; its L2 "
          f"penalty (alpha) is the one of {', '.join(f'{a:g}' for a in ALPHAS)} with the lowest out-of-fold log loss "
          "of the noisy labels. "
          f"Top {args.top:.0%} = the {n_top} most suspect reviews.\n")
    columns = ["seed", "alpha", "noisy", "flagged", "flag_precision", "flag_recall", "top_precision", "top_recall",
               "recall_keyword_on", "recall_keyword_off", "recall_sentiment"]
    print("| " + " | ".join(columns) + " |")
    print("|" + " ---: |" * len(columns))
    for row in rows + [{"seed": "mean", "alpha": "", **{c: float(np.mean([r[c] for r in rows])) for c in columns[2:]}}]:
        print("| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |")
    mean_recall = float(np.mean([r["top_recall"] for r in rows]))
    print(f"\nTarget: recall >= 0.8 of the injected errors in the top {args.top:.0%}: "
          f"{'met' if mean_recall >= 0.8 else 'NOT met'} ({mean_recall:.3f}; the best possible precision is "
          f"{min(1.0, args.noise / args.top):.2f}).")

    predictions, _ = best_out_of_fold(clean, features, args.folds, 0)
    issues = find_label_issues(clean, predictions)
    kinds = Counter(i.kind for i in issues)
    print(f"\nOriginal labels: {len(issues)} suspected issue(s) ({', '.join(f'{v} {k}' for k, v in kinds.items())}) "
          f"on {len({i.row for i in issues})} reviews. Top {args.show}, most suspect first:\n")
    print("| # | id | text | given | suggested | self-confidence |")
    print("| ---: | --- | --- | --- | --- | ---: |")
    for rank, issue in enumerate(issues[: args.show], start=1):
        text = clean.reviews[issue.row].text.replace("|", "/")
        text = text if len(text) <= 60 else text[:57] + "..."
        print(f"| {rank} | {issue.id} | {text} | {issue.given} | {issue.suggested} | {issue.self_confidence:.3f} |")
    print(f"\n{time.time() - start:.0f} s wall")


if __name__ == "__main__":
    main()
