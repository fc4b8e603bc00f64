"""Accuracy of reviewlens bundles on real data, beside a TF-IDF + logistic regression baseline.

    python benchmarks/accuracy.py --fashion-bundle models/default [--nikl-bundle models/nikl] [--highlights]

For each dataset (train -> dev) it prints keyword P/R/F1 (micro, macro), sentiment macro-F1 with the
negative and neutral recall, the pipeline F1 over (keyword, polarity) pairs, each beside a baseline
trained in the same run (TF-IDF character n-grams + one-vs-rest logistic regression for keywords, a
logistic regression over TF-IDF + keyword one-hot for polarity, thresholds tuned on a 10% split of
train) and the published numbers. With ``--highlights`` it also scores highlight quality against the
gold aspect spans of the fashion dev set (the share of correctly predicted (review, keyword) pairs whose
top highlighted word lies inside a gold span of that keyword), beside a random-word baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PUBLISHED = {
    "nikl": "organisers' xlm-roberta-base baseline (full official dev): category F1 0.537, pipeline F1 0.499",
    "fashion": "no published score for this split; TF-IDF + LR measured by the project: category F1 0.77, "
               "pipeline F1 0.62",
}


def load(name: str):
    from reviewlens.data import read_reviews

    if name == "fashion":
        aliases = yaml.safe_load((ROOT / "configs" / "fashion-default.yaml").read_text(encoding="utf-8"))["aliases"]
        folder = DATA / "aihub-absa-fashion"
    else:
        aliases, folder = None, DATA / "nikl-absa-2022"
    train = read_reviews(folder / "train.jsonl", aliases=aliases)
    dev = read_reviews(folder / "dev.jsonl", schema=train.schema, allow_new_keywords=True, aliases=aliases)
    dev.schema = train.schema = dev.schema
    return train, dev


class TfidfBaseline:
    """TF-IDF character n-grams + logistic regression for keywords and for polarity."""

    def fit(self, train, seed: int = 0) -> "TfidfBaseline":
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        from reviewlens.calibration import fit_thresholds
        from reviewlens.data import train_validation_split

        self.schema = train.schema
        self._hstack = hstack
        fit_part, val_part = train_validation_split(train, 0.1, seed)
        self.vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), min_df=2, sublinear_tf=True)
        self.vec.fit(train.texts)
        y = self._multi_hot(fit_part)
        keep = y.sum(0) > 0
        self.keep = keep
        self.kw = OneVsRestClassifier(LogisticRegression(C=10, max_iter=2000), n_jobs=1)
        self.kw.fit(self.vec.transform(fit_part.texts), y[:, keep])
        probs = self._kw_probs(val_part.texts)
        self.thresholds = fit_thresholds(probs, self._multi_hot(val_part), self.schema.keywords)
        pairs = [(r.text, kw, lv) for r in fit_part for kw, lv in r.labels.items()]
        self.st = LogisticRegression(C=10, max_iter=2000, class_weight="balanced")
        self.st.fit(self._pair_features([p[0] for p in pairs], [p[1] for p in pairs]), [p[2] for p in pairs])
        return self

    def _multi_hot(self, data) -> np.ndarray:
        y = np.zeros((len(data), self.schema.num_keywords), dtype=int)
        for i, r in enumerate(data):
            for kw in r.labels:
                y[i, self.schema.keyword_index(kw)] = 1
        return y

    def _kw_probs(self, texts) -> np.ndarray:
        out = np.zeros((len(texts), self.schema.num_keywords))
        out[:, self.keep] = self.kw.predict_proba(self.vec.transform(texts))
        return out

    def _pair_features(self, texts, keywords):
        from scipy.sparse import csr_matrix

        onehot = np.zeros((len(texts), self.schema.num_keywords))
        for i, kw in enumerate(keywords):
            onehot[i, self.schema.keyword_index(kw)] = 1.0
        return self._hstack([self.vec.transform(texts), csr_matrix(onehot)]).tocsr()

    def predict(self, texts) -> list[dict[str, int]]:
        from reviewlens.calibration import apply_thresholds

        chosen = apply_thresholds(self._kw_probs(texts), self.schema.keywords, self.thresholds)
        pairs = [(i, self.schema.keywords[k]) for i in range(len(texts)) for k in np.flatnonzero(chosen[i])]
        out = [dict() for _ in texts]
        if pairs:
            levels = self.st.predict(self._pair_features([texts[i] for i, _ in pairs], [k for _, k in pairs]))
            for (i, kw), lv in zip(pairs, levels):
                out[i][kw] = int(lv)
        return out

    def sentiment_on_gold(self, dev) -> tuple[list[int], list[int]]:
        pairs = [(r.text, kw, lv) for r in dev for kw, lv in r.labels.items()]
        pred = self.st.predict(self._pair_features([p[0] for p in pairs], [p[1] for p in pairs]))
        return [p[2] for p in pairs], [int(x) for x in pred]


def summarize(keywords: dict, sentiment: dict, pipeline: dict) -> dict:
    return {
        "kw_micro_P": keywords["micro"]["precision"], "kw_micro_R": keywords["micro"]["recall"],
        "kw_micro_F1": keywords["micro"]["f1"], "kw_macro_F1": keywords["macro"]["f1"],
        "sent_macro_F1": sentiment["macro"]["f1"], "neg_recall": sentiment.get("-1", {}).get("recall", 0.0),
        "neu_recall": sentiment.get("0", {}).get("recall", 0.0), "category_F1": pipeline["category"]["f1"],
        "pipeline_F1": pipeline["f1"],
    }


def baseline_row(train, dev) -> dict:
    from reviewlens.evaluation import evaluate_predictions
    from reviewlens.metrics import sentiment_report

    base = TfidfBaseline().fit(train)
    result = evaluate_predictions(dev, base.predict(dev.texts))
    gold, pred = base.sentiment_on_gold(dev)
    levels = dev.schema.levels
    sent = sentiment_report([levels.index(g) for g in gold], [levels.index(p) for p in pred], dev.schema.level_names())
    return summarize(result["keywords"], sent, result["pipeline"])


def highlight_quality(analyzer, dev, attribution: str = "occlusion", sentiment_scope: str = "clause") -> dict:
    """Share of correctly predicted pairs whose top highlighted word overlaps a gold span of that keyword.

    Beside it, two chance levels: a random word of the review, and a random word of the keyword's clause (the
    candidates of clause-scoped sentiment highlights: the clause the level was read from when the bundle has a
    clause weight, else the clause that holds the keyword's top highlight).
    """
    reviews = [r for r in dev if r.spans]
    start = time.perf_counter()
    results = analyzer.analyze([r.text for r in reviews], top_k=1, attribution=attribution,
                               sentiment_scope=sentiment_scope)
    seconds = time.perf_counter() - start
    hits = {"keyword": 0, "sentiment": 0}
    random_hits, clause_hits, pairs = 0.0, 0.0, 0
    from reviewlens.clause_sentiment import keyword_clauses
    from reviewlens.highlight import clause_around, in_scope, whitespace_words

    level_clauses = {}  # with a clause weight, sentiment highlights lie in the clause the level was read from
    if sentiment_scope == "clause" and getattr(analyzer.bundle, "clause_weight", 0) > 0:
        keys = [(j, k.keyword) for j, result in enumerate(results) for k in result.keywords]
        found = keyword_clauses(analyzer.scorer, [r.text for r in reviews],
                                [(j, analyzer.keywords.index(kw)) for j, kw in keys])
        level_clauses = dict(zip(keys, found))
    for j, (review, result) in enumerate(zip(reviews, results)):
        for k in result.keywords:
            if k.keyword not in review.labels:
                continue
            spans = [(s["start"], s["end"]) for s in review.spans if s["keyword"] == k.keyword and s["start"] is not None]
            if not spans:
                continue
            pairs += 1
            inside = lambda h: any(h.start < e and s < h.end for s, e in spans)
            hits["keyword"] += bool(k.highlights) and inside(k.highlights[0])
            hits["sentiment"] += bool(k.sentiment_highlights) and inside(k.sentiment_highlights[0])
            words = whitespace_words(review.text)
            random_hits += np.mean([any(ws < e and s < we for s, e in spans) for _, ws, we in words])
            if level_clauses:
                words = in_scope(words, level_clauses[(j, k.keyword)])
            elif k.highlights:
                words = in_scope(words, clause_around(review.text, k.highlights[0].start))
            clause_hits += np.mean([any(ws < e and s < we for s, e in spans) for _, ws, we in words])
    return {"attribution": attribution, "sentiment_scope": sentiment_scope, "pairs": pairs,
            "keyword_top1_in_span": hits["keyword"] / max(pairs, 1),
            "sentiment_top1_in_span": hits["sentiment"] / max(pairs, 1),
            "random_word_in_span": random_hits / max(pairs, 1),
            "random_clause_word_in_span": clause_hits / max(pairs, 1), "analyze_seconds": seconds}


def table(rows: dict[str, dict]) -> str:
    cols = list(next(iter(rows.values())).keys())
    lines = ["| system | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fashion-bundle", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--nikl-bundle", type=Path, default=ROOT / "models" / "nikl")
    parser.add_argument("--datasets", nargs="+", default=["fashion", "nikl"])
    parser.add_argument("--highlights", action="store_true", help="Score highlights against fashion gold spans.")
    parser.add_argument("--attributions", nargs="+", default=["occlusion", "gradient"],
                        help="Highlight methods to score with --highlights.")
    parser.add_argument("--sentiment-scopes", nargs="+", default=["clause"], choices=["clause", "review"],
                        help="Sentiment-highlight scopes to score with --highlights (review: any word of the review).")
    parser.add_argument("--json", type=Path, help="Also write all numbers to this JSON file.")
    args = parser.parse_args()

    from reviewlens.analyzer import ReviewAnalyzer
    from reviewlens.evaluation import evaluate_bundle

    out: dict = {}
    for name in args.datasets:
        train, dev = load(name)
        rows = {}
        start = time.perf_counter()
        rows["tfidf+LR"] = baseline_row(train, dev)
        print(f"[{name}] baseline in {time.perf_counter() - start:.0f}s", file=sys.stderr)
        bundle = args.fashion_bundle if name == "fashion" else args.nikl_bundle
        analyzer = None
        if (bundle / "reviewlens.json").exists():
            start = time.perf_counter()
            analyzer = ReviewAnalyzer.from_pretrained(bundle)
            res = evaluate_bundle(None, dev, analyzer=analyzer)
            rows[f"reviewlens ({bundle.name})"] = summarize(res.keywords, res.sentiment, res.pipeline)
            print(f"[{name}] bundle eval in {time.perf_counter() - start:.0f}s", file=sys.stderr)
        else:
            print(f"[{name}] no bundle at {bundle}: baseline only", file=sys.stderr)
        print(f"\n## {name}: train {len(train)} -> dev {len(dev)} reviews, {train.schema.num_keywords} keywords")
        print(table(rows))
        print(f"published: {PUBLISHED[name]}")
        out[name] = {"rows": rows}
        if args.highlights and name == "fashion" and analyzer is not None:
            out[name]["highlights"] = {}
            for attribution in args.attributions:
                for scope in args.sentiment_scopes:
                    hq = highlight_quality(analyzer, dev, attribution, scope)
                    print(f"\nhighlight quality ({attribution}, sentiment scope {scope}) on {hq['pairs']} correctly "
                          f"predicted (review, keyword) pairs: keyword model top-1 in gold span "
                          f"{hq['keyword_top1_in_span']:.3f}, sentiment model {hq['sentiment_top1_in_span']:.3f}, "
                          f"random word {hq['random_word_in_span']:.3f}, random word of the keyword's clause "
                          f"{hq['random_clause_word_in_span']:.3f} (analyze with highlights: "
                          f"{hq['analyze_seconds']:.0f}s)")
                    out[name]["highlights"][f"{attribution}/{scope}"] = hq
    if args.json:
        args.json.write_text(json.dumps(out, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
