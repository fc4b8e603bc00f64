"""Per-keyword decision thresholds chosen on validation data.

A single 0.5 cut is what gave the seed 신축성 precision 0.14: a rare keyword's probabilities are
not calibrated like a frequent one's. Each keyword gets the threshold that maximises its F1 on
validation data; keywords with too few validation positives fall back to the global best threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_THRESHOLD = 0.5
CANDIDATES = np.round(np.arange(0.05, 0.951, 0.025), 3)


def _f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _micro_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    return _f1(float(np.sum(pred & truth)), float(np.sum(pred & ~truth)), float(np.sum(~pred & truth)))


def _best_candidate(scores: np.ndarray) -> float:
    """The candidate threshold with the best score; ties go to the one closest to 0.5."""
    ties = CANDIDATES[np.isclose(scores, scores.max())]
    return float(ties[np.argmin(np.abs(ties - DEFAULT_THRESHOLD))])


def best_threshold(probs: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """The threshold with the best F1 (ties go to the threshold closest to 0.5) and that F1."""
    truth = truth.astype(bool)
    scores = np.array([_micro_f1(probs >= t, truth) for t in CANDIDATES])
    return _best_candidate(scores), float(scores.max())


def fit_thresholds(probs: np.ndarray, truth: np.ndarray, keywords: Sequence[str],
                   min_support: int | None = 5, *, at_least_one: bool = False) -> dict[str, float]:
    """Per-keyword thresholds maximising validation F1; a global one where support is below ``min_support``
    (None: the global one for every keyword, the steadier choice when validation is small). With
    ``at_least_one`` the global threshold is the best one for ``apply_thresholds(..., at_least_one=True)``
    decoding (each review keeps its most probable keyword; the threshold decides the others)."""
    probs = np.asarray(probs, dtype=float)
    truth = np.asarray(truth).astype(bool)
    if probs.shape != truth.shape or probs.shape[1] != len(keywords):
        raise ValueError(f"probs {probs.shape} and truth {truth.shape} must both be (n, {len(keywords)})")
    if not truth.any():
        global_t = DEFAULT_THRESHOLD
    elif at_least_one:
        global_t = _best_candidate(np.array([_micro_f1(decode(probs, t, at_least_one=True), truth)
                                             for t in CANDIDATES]))
    else:
        global_t = best_threshold(probs.ravel(), truth.ravel())[0]
    thresholds = {}
    for j, keyword in enumerate(keywords):
        if min_support is not None and truth[:, j].sum() >= min_support:
            thresholds[keyword] = best_threshold(probs[:, j], truth[:, j])[0]
        else:
            thresholds[keyword] = global_t
    return thresholds


def expected_f1_threshold(probs: np.ndarray, *, at_least_one: bool = False) -> float:
    """The shared threshold with the best *expected* micro F1 on unlabeled reviews, taking calibrated
    probabilities as the chance that each keyword is there (the plug-in estimate: expected true positives
    are the summed probabilities of the chosen keywords, expected misses those of the others).

    A threshold fitted on labeled reviews fits their mix; when they were chosen by active learning (doubtful
    reviews, more keywords each) that mix is not the pool's. Calibration, the chance of a keyword given its
    score, carries over to the pool; so the threshold is chosen on the reviews the model will label."""
    probs = np.asarray(probs, dtype=float)
    probs = probs[~np.isnan(probs).any(axis=1)] if probs.ndim == 2 else probs
    if not probs.size:
        return DEFAULT_THRESHOLD
    scores = []
    for t in CANDIDATES:
        chosen = decode(probs, t, at_least_one=at_least_one)
        scores.append(_f1(probs[chosen].sum(), (1.0 - probs[chosen]).sum(), probs[~chosen].sum()))
    return _best_candidate(np.array(scores))


def decode(probs: np.ndarray, cut, *, at_least_one: bool = False) -> np.ndarray:
    """Boolean (n, K): ``probs >= cut`` (a number or a (K,) array); with ``at_least_one`` each scored review
    also keeps its most probable keyword (for data where every review has a keyword, as NIKL's)."""
    probs = np.asarray(probs, dtype=float)
    chosen = probs >= np.asarray(cut, dtype=float)
    if at_least_one and probs.ndim == 2 and probs.size:
        rows = np.flatnonzero(~np.isnan(probs).any(axis=1))
        chosen[rows, np.argmax(probs[rows], axis=1)] = True
    return chosen


def apply_thresholds(probs: np.ndarray, keywords: Sequence[str], thresholds: dict[str, float] | None,
                     at_least_one: bool = False) -> np.ndarray:
    """Boolean (n, K) predictions with each keyword's own threshold (0.5 where none is stored); with
    ``at_least_one`` each review also keeps its most probable keyword (``decode``)."""
    cut = np.array([(thresholds or {}).get(k, DEFAULT_THRESHOLD) for k in keywords], dtype=float)
    return decode(probs, cut[None, :], at_least_one=at_least_one)


@dataclass
class PlattScaling:
    """A monotone map of probabilities, ``sigmoid(a * logit(p) + b)``, fitted by logistic regression of the
    labels on the logit (Platt scaling). Over a (n, K) matrix, one map for all keywords: it puts the model's
    probabilities on a calibrated scale without changing any review's keyword ranking."""

    a: float = 1.0
    b: float = 0.0

    @classmethod
    def fit(cls, probs: np.ndarray, truth: np.ndarray) -> "PlattScaling":
        """Fitted on the non-NaN entries; identity when the labels hold fewer than two of either class."""
        from sklearn.linear_model import LogisticRegression

        probs, truth = np.asarray(probs, dtype=float).ravel(), np.asarray(truth).astype(bool).ravel()
        scored = ~np.isnan(probs)
        labels = truth[scored]
        if min(labels.sum(), (~labels).sum()) < 2:
            return cls()
        model = LogisticRegression().fit(logit(probs[scored])[:, None], labels)
        return cls(float(model.coef_[0, 0]), float(model.intercept_[0]))

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        """The mapped probabilities; the identity map (unfitted, or too few labels) returns them unchanged."""
        if self.a == 1.0 and self.b == 0.0:
            return np.array(probs, dtype=float)
        with np.errstate(invalid="ignore"):
            return 1.0 / (1.0 + np.exp(-(self.a * logit(probs) + self.b)))


def logit(probs: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` with p clipped to [1e-9, 1 - 1e-9]; NaN stays NaN."""
    p = np.clip(np.asarray(probs, dtype=float), 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)
