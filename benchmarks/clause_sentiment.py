"""How much should a keyword's level listen to its own clause? Pipeline F1 for each clause weight.

For every keyword the bundle predicts, the sentiment model reads the whole review and the keyword's clause
(``clause_sentiment.keyword_clauses``: the clause where the keyword model finds the keyword most likely), and the
two distributions are pooled log-linearly with each weight of ``clause_sentiment.CLAUSE_WEIGHTS`` (0: the whole
review only; 1: the clause only). The bundle's own weight was chosen on its validation split (``reviewlens
calibrate`` / training); this prints what each weight would give on ``--data``, for the record, not to choose,
and what reading the clause costs ``analyze`` (time as a ratio to the whole review only, measured in one run).

    python benchmarks/clause_sentiment.py            # fashion dev, about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from reviewlens.analyzer import ReviewAnalyzer  # noqa: E402
from reviewlens.clause_sentiment import CLAUSE_WEIGHTS, pair_sentiment  # noqa: E402
from reviewlens.data import read_reviews  # noqa: E402
from reviewlens.evaluation import evaluate_scorer, scoring_pairs  # noqa: E402

DEV = ROOT.parent / "shared" / "data" / "aihub-absa-fashion" / "dev.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--data", type=Path, default=DEV)
    parser.add_argument("--timed", type=int, default=200, help="reviews to time analyze on")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data} is not here (the AI Hub fashion data lives in ../shared/data)")
    analyzer = ReviewAnalyzer.from_pretrained(args.model)
    schema, scorer, thresholds = analyzer.schema, analyzer.scorer, analyzer.bundle.thresholds
    dev = read_reviews(args.data, schema, aliases=schema.aliases)
    probs = scorer.keyword_probs(dev.texts)
    pairs = scoring_pairs(dev, probs, thresholds)[2]
    sentiment = pair_sentiment(scorer, dev.texts, pairs, schema.keywords)
    print(f"{args.data.name}: {len(dev)} reviews; the bundle's clause weight: {analyzer.bundle.clause_weight} "
          f"(chosen on validation: {analyzer.bundle.metrics.get('clause_weight_pipeline_f1', 'not recorded')})")
    print("| clause weight | pipeline F1 | sentiment macro-F1 | sentiment micro-F1 |\n|---:|---:|---:|---:|")
    for weight in CLAUSE_WEIGHTS:
        result = evaluate_scorer(scorer, dev, thresholds, probs, weight, sentiment).summary()
        print(f"| {weight} | {result['pipeline_f1']:.4f} | {result['sentiment_macro_f1']:.4f} | "
              f"{result['sentiment_micro_f1']:.4f} |")
    # what the clause reading costs: analyze without highlights, the bundle's weight against the whole review only
    texts = dev.texts[:args.timed]
    weight = analyzer.bundle.clause_weight
    seconds = {}
    for name, w in (("whole review", 0.0), (f"clause weight {weight}", weight)):
        analyzer.bundle.clause_weight = w
        analyzer.analyze(texts[:4], highlights=False)  # warm-up
        began = time.perf_counter()
        analyzer.analyze(texts, highlights=False)
        seconds[name] = time.perf_counter() - began
    analyzer.bundle.clause_weight = weight
    base = seconds["whole review"]
    print(f"\nanalyze(highlights=False) on {len(texts)} reviews, {torch.get_num_threads()} threads:")
    for name, s in seconds.items():
        print(f"  {name}: {len(texts) / s:.1f} reviews/s ({s / base:.2f}x the time of the whole review only)")


if __name__ == "__main__":
    main()
