"""Label-audit benchmark: inject label noise into NIKL train and measure how much of it the audit ranks first.

5% of the reviews get one error each, of three kinds in equal shares: a keyword switched on (an absent
keyword added, drawn by keyword frequency, with a level drawn by level frequency), a keyword switched off
(one labeled keyword removed) or a sentiment level changed (to another level, uniformly). The audit
(``reviewlens.audit``: out-of-fold probabilities, confident-learning flags, reviews ranked most suspect
first) is then scored on the top 10% of the ranking: precision and recall of the noisy reviews.

The out-of-fold models are those of ``reviewlens audit --linear`` (``reviewlens.audit.linear_out_of_fold``):
logistic regressions on TF-IDF character n-grams and on frozen multilingual-e5-small sentence embeddings,
10 folds, each Platt-calibrated to the given labels, combined by a geometric mean and calibrated again; NOT
the transformer k-fold training of ``reviewlens audit`` (too slow for a shared CPU). Each model's keyword and level penalties are
chosen per run by the out-of-fold log loss of the given (noisy) labels, as a user would choose them on their
own data: the injected errors are never looked at.
The same audit on the *original* labels lists the top suspected original labels to read.

    python benchmarks/label_audit.py                      # 3 noise seeds, 10 folds, all 3,001 reviews
    python benchmarks/label_audit.py --quick              # 1 noise seed
    python benchmarks/label_audit.py --embeddings none    # TF-IDF model alone
    python benchmarks/label_audit.py --first-seed 3       # other noise draws (seeds 3, 4, 5)
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

from reviewlens.audit import find_label_issues, linear_out_of_fold, rank_reviews  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=NIKL / "train.jsonl")
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--top", type=float, default=0.10, help="share of the ranking that is read")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--embeddings", default="multilingual-e5-small",
                        help="offline base whose sentence embeddings feed the second linear model; 'none': TF-IDF only")
    parser.add_argument("--embedding-cache", default=str(ROOT / "runs" / "embeddings"),
                        help="folder of the sentence-embedding cache (one .npz per base; reruns skip the "
                             "encoder); 'none': embed every run")
    parser.add_argument("--seeds", type=int, default=3, help="noise injections")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first noise injection")
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
    embed = None  # one EmbeddingFeatures for all runs: the noisy copies share the clean texts
    if args.embeddings != "none":
        from reviewlens.baselines import EmbeddingFeatures, cached_embedder
        from reviewlens.bases import offline_embedder

        encoder = offline_embedder(args.embeddings)
        if args.embedding_cache != "none":
            encoder = cached_embedder(encoder, Path(args.embedding_cache) / f"{args.embeddings}.npz")
        embed = EmbeddingFeatures(clean.texts, encoder)
    n_top = round(args.top * len(clean))
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        noisy, truth = inject_noise(clean, args.noise, seed)
        predictions = linear_out_of_fold(noisy, folds=args.folds, seed=seed, embed=embed)
        issues = find_label_issues(noisy, predictions)
        order = rank_reviews(noisy, predictions)
        top = set(order[:n_top].tolist())
        flagged = {i.row for i in issues}
        noisy_rows = set(truth)
        hit = top & noisy_rows
        per_kind = {kind: (sum(1 for r in hit if truth[r][0] == kind), sum(1 for t in truth.values() if t[0] == kind))
                    for kind in KINDS}
        rows.append({"seed": seed, "noisy": len(noisy_rows), "flagged": len(flagged),
                     "flag_precision": len(flagged & noisy_rows) / max(len(flagged), 1),
                     "flag_recall": len(flagged & noisy_rows) / len(noisy_rows),
                     "top_precision": len(hit) / n_top, "top_recall": len(hit) / len(noisy_rows), **{
                         f"recall_{k}": a / max(b, 1) for k, (a, b) in per_kind.items()}})
        print(f"  seed {seed}: top-{args.top:.0%} recall {rows[-1]['top_recall']:.3f} "
              f"({time.time() - start:.0f} s)", file=sys.stderr, flush=True)

    print(f"\nLabel audit on {args.data.parent.name}/{args.data.name} ({len(clean)} labeled reviews): {args.noise:.0%} of reviews given one "
          f"error (keyword on / off / sentiment level, equal shares), {args.folds}-fold out-of-fold "
          f"probabilities, {args.seeds} noise seed(s){' (quick mode)' if args.quick else ''}.")
    print(f"Model: reviewlens.audit.linear_out_of_fold, not a transformer: {predictions.method}; each penalty "
          "chosen by the out-of-fold log loss of the noisy labels. "
          f"Top {args.top:.0%} = the {n_top} most suspect reviews.\n")
    columns = ["seed", "noisy", "flagged", "flag_precision", "flag_recall", "top_precision", "top_recall",
               "recall_keyword_on", "recall_keyword_off", "recall_sentiment"]
    print("| " + " | ".join(columns) + " |")
    print("|" + " ---: |" * len(columns))
    for row in rows + [{"seed": "mean", **{c: float(np.mean([r[c] for r in rows])) for c in columns[1:]}}]:
        print("| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |")
    mean_recall = float(np.mean([r["top_recall"] for r in rows]))
    print(f"\nTarget: recall >= 0.8 of the injected errors in the top {args.top:.0%}: "
          f"{'met' if mean_recall >= 0.8 else 'NOT met'} ({mean_recall:.3f}; the best possible precision is "
          f"{min(1.0, args.noise / args.top):.2f}).")

    predictions = linear_out_of_fold(clean, folds=args.folds, seed=0, embed=embed)
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
