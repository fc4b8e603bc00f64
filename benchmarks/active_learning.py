"""Active-learning simulation on NIKL: which selection strategy reaches random sampling's F1 with fewer labels?

The pool is NIKL ``train.jsonl`` with its labels hidden until a strategy chooses a review; every round
trains a model on the labels revealed so far and scores the pipeline (keyword + level pairs, the NIKL
"entire pipeline" micro F1) on ``dev.jsonl``. Strategies go through ``reviewlens.selection.select``
exactly as ``reviewlens select`` does (de-duplication included).

The model is ``reviewlens.baselines.LinearEnsemble`` (``--model ensemble``: the quick audit's linear models,
on TF-IDF character n-grams and on frozen multilingual-e5-small sentence embeddings, geometric mean,
Platt-recalibrated, every review keeping its most probable keyword, one keyword threshold chosen by expected
F1 on the pool; embeddings for the outlier strategy = e5) or ``FastReviewModel`` (``--model fast``: TF-IDF
alone; embeddings = TruncatedSVD of TF-IDF), NOT the transformer bundle: a transformer per round x strategy x
seed does not fit in an hour on a shared 2-core CPU. The rare-text SentencePiece model learns from the
pool's texts (the `select` default when no --first-data is given).

    python benchmarks/active_learning.py                  # 3 seeds, budgets 100..1500 by 100 (target: < 60 min)
    python benchmarks/active_learning.py --quick          # 1 seed, budgets 100..1500 by 200
    python benchmarks/active_learning.py --first-seed 3   # other seeds (3, 4, 5)
    python benchmarks/active_learning.py --model fast     # TF-IDF model alone
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from reviewlens.baselines import (EnsembleConfig, FastModelConfig, FastReviewModel, LinearEnsemble,  # noqa: E402
                                  TfidfFeatures)
from reviewlens.data import read_reviews  # noqa: E402
from reviewlens.evaluation import evaluate_predictions  # noqa: E402
from reviewlens.selection import SEED_MIX, SelectionContext, make_strategy, select  # noqa: E402

NIKL = ROOT.parent / "shared" / "data" / "nikl-absa-2022"
STRATEGIES = {"random": "random", "keyword-boundary": "keyword-boundary", "keyword-entropy": "keyword-entropy",
              "label-entropy": "label-entropy", "information-density": "information-density",
              "sentiment-margin": "sentiment-margin",
              "rare-text": "rare-text", "outliers": "outliers", "mix": SEED_MIX}


def simulate(pool, dev, spec: str, budgets: list[int], initial: int, seed: int, train,
             text_cache: dict) -> list[tuple[int, float, float]]:
    """(labels, pipeline F1, category F1) after each round of one strategy and seed; ``train(seed, dataset)``
    gives a model fitted on ``dataset``."""
    rng = np.random.default_rng(seed)
    labeled = [int(i) for i in rng.choice(len(pool), initial, replace=False)]
    curve = []
    model = train(seed, pool.subset(labeled))
    for budget in budgets:
        if budget > len(labeled):  # a round: the current model picks the next reviews, then retrains
            context = SelectionContext.from_dataset(pool, model, text_cache=text_cache)
            strategy = make_strategy(spec, seed=seed)  # random: one permutation of the pool per run
            chosen = select(context, strategy, budget - len(labeled), exclude_ids=[pool.ids[i] for i in labeled],
                            seed=seed + budget)
            labeled += chosen.indices
            model = train(seed, pool.subset(labeled))
        result = evaluate_predictions(dev, model.predict(dev.texts))
        curve.append((len(labeled), result["pipeline"]["f1"], result["pipeline"]["category"]["f1"]))
    return curve


def labels_to_reach(budgets: list[int], f1s: np.ndarray, target: float) -> float | None:
    """The label count at which a mean learning curve first reaches ``target`` (linear between budgets)."""
    for k, (b, f) in enumerate(zip(budgets, f1s)):
        if f >= target:
            if k == 0:
                return float(b)
            b0, f0 = budgets[k - 1], f1s[k - 1]
            return float(b0 + (b - b0) * (target - f0) / (f - f0))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=Path, default=NIKL / "train.jsonl")
    parser.add_argument("--dev", type=Path, default=NIKL / "dev.jsonl")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--model", choices=["ensemble", "fast"], default="ensemble",
                        help="LinearEnsemble (TF-IDF + e5 embeddings) or FastReviewModel (TF-IDF)")
    parser.add_argument("--embeddings", default="multilingual-e5-small", help="offline base of --model ensemble")
    parser.add_argument("--embedding-cache", default=str(ROOT / "runs" / "embeddings"),
                        help="folder of the sentence-embedding cache (one .npz per base; reruns skip the "
                             "encoder); 'none': embed every run")
    parser.add_argument("--initial", type=int, default=100)
    parser.add_argument("--step", type=int, default=100)
    parser.add_argument("--budget", type=int, default=1500)
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated names of STRATEGIES")
    parser.add_argument("--quick", action="store_true", help="1 seed, step 200")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "active_learning")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.step = 1, 200
    if not args.pool.exists():
        sys.exit(f"{args.pool} is not here (the NIKL data lives in ../shared/data)")

    start = time.time()
    pool = read_reviews(args.pool)
    dev = read_reviews(args.dev, schema=pool.schema, allow_new_keywords=True)
    pool.schema = dev.schema  # keywords only dev has count as misses
    features = TfidfFeatures(pool.texts + dev.texts, FastModelConfig())
    if args.model == "ensemble":
        from reviewlens.baselines import EmbeddingFeatures, cached_embedder
        from reviewlens.bases import offline_embedder

        encoder = offline_embedder(args.embeddings)
        if args.embedding_cache != "none":
            encoder = cached_embedder(encoder, Path(args.embedding_cache) / f"{args.embeddings}.npz")
        embeddings = EmbeddingFeatures(pool.texts + dev.texts, encoder)

        def train(seed: int, labeled):  # the keyword threshold: by expected F1 on the whole pool
            return LinearEnsemble(pool.schema, features, embeddings, EnsembleConfig(seed=seed)).fit(
                labeled, population=pool.texts)
        model_name = (f"LinearEnsemble (TF-IDF char 1-3-grams + {args.embeddings} embeddings, geometric mean, "
                      "Platt-calibrated, threshold by expected F1 on the pool)")
    else:
        def train(seed: int, labeled):  # seed 0, as measured before
            return FastReviewModel(pool.schema, FastModelConfig(), features=features).fit(labeled)
        model_name = "FastReviewModel (TF-IDF char 1-3-grams + SGD logistic regressions)"
    text_cache: dict = {}
    budgets = list(range(args.initial, args.budget + 1, args.step))
    if budgets[-1] != args.budget:
        budgets.append(args.budget)
    names = [s.strip() for s in args.strategies.split(",")]
    curves: dict[str, np.ndarray] = {}
    for name in names:
        runs = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            t0 = time.time()
            runs.append(simulate(pool, dev, STRATEGIES[name], budgets, args.initial, seed, train, text_cache))
            print(f"  {name:17s} seed {seed}: F1 {runs[-1][-1][1]:.3f} at {budgets[-1]} labels "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        curves[name] = np.array([[f1 for _, f1, _ in run] for run in runs])  # (seeds, budgets)

    print(f"\nActive learning on NIKL ({len(pool)} pool reviews, {len(dev)} dev): pipeline micro F1 on dev, "
          f"mean over {args.seeds} seed(s){' (quick mode)' if args.quick else ''}.")
    print(f"Model: {model_name}, not a transformer; seeds {args.first_seed}..{args.first_seed + args.seeds - 1}.\n")
    print("| labels | " + " | ".join(names) + " |")
    print("| ---: |" + " ---: |" * len(names))
    for k, budget in enumerate(budgets):
        cells = []
        for name in names:
            values = curves[name][:, k]
            cells.append(f"{values.mean():.3f}" + (f" ± {values.std():.3f}" if len(values) > 1 else ""))
        print(f"| {budget} | " + " | ".join(cells) + " |")
    if "random" in curves:
        target = curves["random"][:, -1].mean()
        print(f"\nLabels each strategy needs to reach random's F1 at {budgets[-1]} labels ({target:.3f}); "
              f"target: <= 900 for the best:\n")
        print("| strategy | labels to reach | ratio to random |")
        print("| --- | ---: | ---: |")
        for name in names:
            need = labels_to_reach(budgets, curves[name].mean(axis=0), target)
            shown = f"{need:.0f}" if need is not None else f"not reached by {budgets[-1]}"
            ratio = f"{need / budgets[-1]:.2f}" if need is not None else "-"
            print(f"| {name} | {shown} | {ratio} |")
        others = [name for name in names if name != "random"]
        marks = [b for b in budgets if b >= 3 * args.initial][::2] or budgets[-1:]
        if budgets[-1] not in marks:
            marks.append(budgets[-1])
        print("\nThe same at other budgets: labels each strategy needs to reach random's F1 at N labels "
              "(\"-\": not within the budget):\n")
        print("| N | random F1 | " + " | ".join(others) + " |")
        print("| ---: | ---: |" + " ---: |" * len(others))
        for budget in marks:
            reference = curves["random"][:, budgets.index(budget)].mean()
            cells = []
            for name in others:
                need = labels_to_reach(budgets, curves[name].mean(axis=0), reference)
                cells.append(f"{need:.0f}" if need is not None else "-")
            print(f"| {budget} | {reference:.3f} | " + " | ".join(cells) + " |")

    from reviewlens.plotting import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        mean = curves[name].mean(axis=0)
        ax.plot(budgets, mean, marker="o", markersize=3, label=name)
        if args.seeds > 1:
            std = curves[name].std(axis=0)
            ax.fill_between(budgets, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("labeled reviews")
    ax.set_ylabel("pipeline F1 (dev)")
    ax.set_title(f"NIKL active learning ({args.model} model)")
    ax.grid(alpha=0.3)
    ax.legend()
    path = save_figure(fig, args.out / "learning_curve.png")
    plt.close(fig)
    print(f"\nlearning curve: {path}; {time.time() - start:.0f} s wall")


if __name__ == "__main__":
    main()
