"""Would the sentiment model judge a keyword better from its clause? A measurement for a pipeline not yet built.

For every keyword the default bundle predicts on the fashion dev set, the level is taken from three inputs: the
whole review (what ``analyze`` does), the clause around the keyword model's top occlusion word alone
(``highlight.clause_around``), and the average of the two distributions. Prints pipeline F1 for each.

    python benchmarks/clause_sentiment.py            # about 5 minutes on 2 cores (keyword occlusion of 438 reviews)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from reviewlens.analyzer import ReviewAnalyzer  # noqa: E402
from reviewlens.data import read_reviews  # noqa: E402
from reviewlens.evaluation import evaluate_predictions  # noqa: E402
from reviewlens.highlight import clause_around, keyword_highlights  # noqa: E402

DEV = ROOT.parent / "shared" / "data" / "aihub-absa-fashion" / "dev.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--data", type=Path, default=DEV)
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data} is not here (the AI Hub fashion data lives in ../shared/data)")
    analyzer = ReviewAnalyzer.from_pretrained(args.model)
    schema = analyzer.bundle.schema
    dev = read_reviews(args.data, schema, aliases=schema.aliases)
    texts = dev.texts
    probs = analyzer.keyword_probabilities(texts)
    chosen = analyzer.predict_keywords(probs)
    targets = [list(np.flatnonzero(chosen[j])) for j in range(len(texts))]
    highlights = keyword_highlights(analyzer.scorer, texts, probs, targets, 1)
    pairs = []  # (review, keyword, clause text)
    for j, text in enumerate(texts):
        for k in targets[j]:
            top = highlights[j].get(k)
            start, end = clause_around(text, top[0].start) if top else (0, len(text))
            pairs.append((j, schema.keywords[k], text[start:end]))
    keywords = [kw for _, kw, _ in pairs]
    review = analyzer.scorer.sentiment_probs([texts[j] for j, _, _ in pairs], keywords)
    clause = analyzer.scorer.sentiment_probs([c for _, _, c in pairs], keywords)
    print(f"{args.data.name}: {len(texts)} reviews, {len(pairs)} predicted (review, keyword) pairs")
    print("| sentiment input | pipeline F1 | category F1 |\n|---|---:|---:|")
    for name, dists in (("whole review", review), ("keyword's clause", clause), ("average of both", (review + clause) / 2)):
        predicted = [dict() for _ in texts]
        for (j, keyword, _), dist in zip(pairs, dists):
            predicted[j][keyword] = schema.levels[int(np.argmax(dist))]
        pipeline = evaluate_predictions(dev, predicted)["pipeline"]
        print(f"| {name} | {pipeline['f1']:.4f} | {pipeline['category']['f1']:.4f} |")


if __name__ == "__main__":
    main()
