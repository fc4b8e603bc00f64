"""Evaluate a bundle on labeled data: keyword, sentiment and pipeline reports, as JSON, Markdown and PNG."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .calibration import apply_thresholds
from .clause_sentiment import PairSentiment, pair_sentiment
from .data import ReviewDataset
from .metrics import (category_f1, keyword_report, pair_f1, report_markdown, sentiment_confusion,
                      sentiment_report)

logger = logging.getLogger(__name__)


def _headline(report: dict, average: str = "micro") -> dict:
    """A report with the chosen average's precision/recall/f1 lifted to the top."""
    avg = report.get(average, {})
    return {"precision": avg.get("precision", 0.0), "recall": avg.get("recall", 0.0), "f1": avg.get("f1", 0.0),
            **report}


@dataclass
class EvaluationResult:
    """Reports of one evaluation. Top-level precision/recall/f1 of each report are micro averages."""

    keywords: dict
    sentiment: dict
    pipeline: dict
    confusion: np.ndarray
    level_names: list[str]
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"keywords": self.keywords, "sentiment": self.sentiment, "pipeline": self.pipeline,
                "sentiment_confusion": {"levels": self.level_names, "matrix": self.confusion.tolist()}, **self.extra}

    def summary(self) -> dict:
        """The headline numbers stored in a bundle's reviewlens.json."""
        return {
            "keyword_micro_f1": self.keywords["micro"]["f1"], "keyword_macro_f1": self.keywords["macro"]["f1"],
            "keyword_samples_f1": self.keywords.get("samples", {}).get("f1", 0.0),
            "sentiment_macro_f1": self.sentiment["macro"]["f1"], "sentiment_micro_f1": self.sentiment["micro"]["f1"],
            "category_f1": self.pipeline["category"]["f1"], "pipeline_f1": self.pipeline["f1"],
        }

    def to_markdown(self) -> str:
        parts = ["## Evaluation", "", f"Pipeline (keyword, level) pairs: precision {self.pipeline['precision']:.3f}, "
                 f"recall {self.pipeline['recall']:.3f}, **F1 {self.pipeline['f1']:.3f}**; keywords alone F1 "
                 f"{self.pipeline['category']['f1']:.3f}.", "",
                 report_markdown("Keywords", self.keywords), report_markdown("Sentiment (on gold keywords)",
                                                                             self.sentiment)]
        return "\n".join(parts)

    def save_confusion_png(self, path: str | Path, title: str = "Sentiment confusion (gold keywords)") -> Path:
        """Write the sentiment confusion matrix as a PNG."""
        from .plotting import confusion_png

        return confusion_png(self.confusion, self.level_names, path, title)

    def write(self, directory: str | Path) -> dict[str, Path]:
        """Write report.json, report.md and confusion.png into ``directory``."""
        from .data import atomic_write_text

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"json": directory / "report.json", "markdown": directory / "report.md",
                 "confusion": directory / "confusion.png"}
        atomic_write_text(paths["json"], json.dumps(self.to_dict(), ensure_ascii=False, indent=2))
        atomic_write_text(paths["markdown"], self.to_markdown())
        self.save_confusion_png(paths["confusion"])
        return paths


def evaluate_predictions(dataset: ReviewDataset, predicted_labels: list[dict[str, int]],
                         gold_pair_levels: list[int] | None = None) -> dict:
    """Keyword and pipeline reports from predicted label dicts (any model kind)."""
    schema = dataset.schema
    gold = [r.labels or {} for r in dataset.reviews]
    k = schema.num_keywords
    y_true = np.zeros((len(gold), k), dtype=int)
    y_pred = np.zeros((len(gold), k), dtype=int)
    for i, (g, p) in enumerate(zip(gold, predicted_labels)):
        for kw in g:
            y_true[i, schema.keyword_index(kw)] = 1
        for kw in p:
            if kw in schema.keywords:
                y_pred[i, schema.keywords.index(kw)] = 1
    pipeline = pair_f1(gold, predicted_labels)
    pipeline["category"] = category_f1(gold, predicted_labels)
    return {"keywords": _headline(keyword_report(y_true, y_pred, schema.keywords)), "pipeline": pipeline}


def scoring_pairs(dataset: ReviewDataset, keyword_probs: np.ndarray, thresholds: dict[str, float]
                  ) -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[tuple[int, str]]]:
    """The gold (review, keyword) pairs, the predicted ones, and the sorted union whose levels are scored."""
    schema = dataset.schema
    chosen = apply_thresholds(keyword_probs, schema.keywords, thresholds)
    gold_pairs = [(i, kw) for i, r in enumerate(dataset.reviews) for kw in (r.labels or {})]
    pred_pairs = [(i, schema.keywords[k]) for i in range(len(dataset)) for k in np.flatnonzero(chosen[i])]
    return gold_pairs, pred_pairs, sorted(set(gold_pairs) | set(pred_pairs))


def evaluate_scorer(scorer, dataset: ReviewDataset, thresholds: dict[str, float],
                    keyword_probs: np.ndarray | None = None, clause_weight: float = 0.0,
                    sentiment: PairSentiment | None = None) -> EvaluationResult:
    """Run the pipeline on ``dataset`` and compare with its labels.

    A keyword's level pools the whole review with the keyword's clause by ``clause_weight``
    (``clause_sentiment.pool``). ``keyword_probs`` and ``sentiment`` (``clause_sentiment.pair_sentiment`` of
    the pairs of ``scoring_pairs(...)``) reuse passes already made.
    """
    schema = dataset.schema
    texts = dataset.texts
    probs = scorer.keyword_probs(texts) if keyword_probs is None else keyword_probs
    if probs.shape[1] < schema.num_keywords:  # gold keywords the model does not know: never predicted, all misses
        probs = np.pad(probs, ((0, 0), (0, schema.num_keywords - probs.shape[1])))
    gold_pairs, pred_pairs, pairs = scoring_pairs(dataset, probs, thresholds)
    if sentiment is None:
        sentiment = pair_sentiment(scorer, texts, pairs, schema.keywords, read_clause=clause_weight > 0)
    dists = sentiment.pooled(clause_weight)
    level_of = {pair: int(np.argmax(dists[j])) for j, pair in enumerate(pairs)}
    predicted = [dict() for _ in texts]
    for i, kw in pred_pairs:
        predicted[i][kw] = schema.levels[level_of[(i, kw)]]
    result = evaluate_predictions(dataset, predicted)
    y_true = [schema.level_index(dataset.reviews[i].labels[kw]) for i, kw in gold_pairs]
    y_pred = [level_of[p] for p in gold_pairs]
    names = schema.level_names()
    return EvaluationResult(result["keywords"], _headline(sentiment_report(y_true, y_pred, names)), result["pipeline"],
                            sentiment_confusion(y_true, y_pred, len(names)), names)


def evaluate_bundle(model: str | Path | None, data, *, skip_bad_rows: bool = False,
                    analyzer=None, device: str = "auto") -> EvaluationResult:
    """Evaluate a bundle directory (or a loaded analyzer) on a labeled file or ReviewDataset."""
    from .analyzer import ReviewAnalyzer
    from .data import read_reviews
    from .errors import ReviewlensError

    analyzer = analyzer or ReviewAnalyzer.from_pretrained(model, device=device)
    schema = analyzer.schema
    if isinstance(data, ReviewDataset):
        dataset = data
    else:
        dataset = read_reviews(data, schema=schema, skip_bad_rows=skip_bad_rows, require_labels=True,
                               aliases=schema.aliases or None, allow_new_keywords=True)
    new = [k for k in dataset.schema.keywords if k not in schema.keywords]
    gold = {k for review in dataset.reviews for k in (review.labels or {})}
    if new and gold and not gold & set(schema.keywords):
        raise ReviewlensError(
            f"{dataset.source}: none of its {len(gold)} gold keywords ({', '.join(sorted(gold)[:8])}"
            f"{', ...' if len(gold) > 8 else ''}) is a keyword of the model ({', '.join(schema.keywords[:8])}"
            f"{', ...' if len(schema.keywords) > 8 else ''}); the data and the model use different label schemas. "
            "Evaluate on data labeled with the model's keywords, or add aliases to the training config.")
    if new:
        logger.warning("%s: %d gold keyword(s) unknown to the model count as misses: %s", dataset.source, len(new),
                       ", ".join(new))
    if not dataset.labeled:
        raise ReviewlensError(f"{dataset.source}: evaluation needs labels on every review")
    if hasattr(analyzer, "evaluate"):  # a generative bundle evaluates through its own decoding
        return analyzer.evaluate(dataset)
    return evaluate_scorer(analyzer.scorer, dataset, analyzer.bundle.thresholds,
                           clause_weight=analyzer.bundle.clause_weight)
