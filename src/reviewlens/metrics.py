"""Classification reports (per label, micro, macro, samples) and the NIKL pair F1."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix


def _report(y_true, y_pred, names: Sequence[str], labels=None) -> dict:
    raw = classification_report(y_true, y_pred, labels=labels, target_names=list(names), output_dict=True,
                                zero_division=0)
    out = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out[key.replace(" avg", "")] = {
                "precision": float(value["precision"]), "recall": float(value["recall"]),
                "f1": float(value["f1-score"]), "support": int(value["support"]),
            }
        else:  # "accuracy" as a plain float
            out[key] = float(value)
    return out


def keyword_report(y_true: np.ndarray, y_pred: np.ndarray, keywords: Sequence[str]) -> dict:
    """Multi-label report: per keyword, then micro, macro, weighted and samples averages."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    return _report(y_true, y_pred, keywords, labels=list(range(len(keywords))))


def sentiment_report(y_true: Sequence[int], y_pred: Sequence[int], level_names: Sequence[str]) -> dict:
    """Single-label report over the levels (indices into ``level_names``), with micro and macro averages."""
    labels = list(range(len(level_names)))
    if len(y_true) == 0:  # nothing to score (no gold keyword was found): an all-zero report, not a crash
        zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        return {**{name: dict(zero) for name in level_names}, "micro": dict(zero), "macro": dict(zero),
                "weighted": dict(zero)}
    report = _report(list(y_true), list(y_pred), level_names, labels=labels)
    # sklearn names the micro average "accuracy" for single-label data; give it the same shape as the others.
    if "micro" not in report:
        acc = report.pop("accuracy", float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else 0.0)
        report["micro"] = {"precision": acc, "recall": acc, "f1": acc, "support": len(y_true)}
    return report


def sentiment_confusion(y_true: Sequence[int], y_pred: Sequence[int], num_levels: int) -> np.ndarray:
    """Confusion matrix, rows = gold level index, columns = predicted."""
    return confusion_matrix(list(y_true), list(y_pred), labels=list(range(num_levels)))


def pair_f1(gold: Iterable[Mapping[str, int]], predicted: Iterable[Mapping[str, int]]) -> dict:
    """Micro precision/recall/F1 over (keyword, level) pairs per review: the NIKL "entire pipeline" metric."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, predicted, strict=True):
        g_pairs, p_pairs = set(g.items()), set(p.items())
        tp += len(g_pairs & p_pairs)
        n_gold += len(g_pairs)
        n_pred += len(p_pairs)
    return _prf(tp, n_pred, n_gold)


def category_f1(gold: Iterable[Mapping[str, int]], predicted: Iterable[Mapping[str, int]]) -> dict:
    """Micro precision/recall/F1 over keywords alone: the NIKL "category extraction" metric."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, predicted, strict=True):
        tp += len(set(g) & set(p))
        n_gold += len(g)
        n_pred += len(p)
    return _prf(tp, n_pred, n_gold)


def _prf(tp: int, n_pred: int, n_gold: int) -> dict:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": n_gold, "predicted": n_pred,
            "true_positives": tp}


def report_markdown(title: str, report: Mapping[str, object]) -> str:
    """A Markdown table of a report produced by this module."""
    lines = [f"### {title}", "", "| label | precision | recall | f1 | support |", "| --- | --- | --- | --- | --- |"]
    for name, row in report.items():
        if isinstance(row, Mapping) and "f1" in row:
            lines.append(f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | "
                         f"{row.get('support', '')} |")
    return "\n".join(lines) + "\n"
