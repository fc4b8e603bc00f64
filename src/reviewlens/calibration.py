"""Per-keyword decision thresholds chosen on validation data.

A single 0.5 cut is what gave the seed 신축성 precision 0.14: a rare keyword's probabilities are
not calibrated like a frequent one's. Each keyword gets the threshold that maximises its F1 on
validation data; keywords with too few validation positives fall back to the global best threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.5
CANDIDATES = np.round(np.arange(0.05, 0.951, 0.025), 3)


def _f1_at(probs: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    pred = probs >= threshold
    tp = float(np.sum(pred & truth))
    fp = float(np.sum(pred & ~truth))
    fn = float(np.sum(~pred & truth))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def best_threshold(probs: np.ndarray, truth: np.ndarray, candidates: np.ndarray = CANDIDATES) -> tuple[float, float]:
    """The threshold with the best F1 (ties go to the threshold closest to 0.5) and that F1."""
    truth = truth.astype(bool)
    scores = np.array([_f1_at(probs, truth, t) for t in candidates])
    best = scores.max()
    ties = candidates[np.isclose(scores, best)]
    chosen = float(ties[np.argmin(np.abs(ties - DEFAULT_THRESHOLD))])
    return chosen, float(best)


def fit_thresholds(probs: np.ndarray, truth: np.ndarray, keywords: Sequence[str],
                   min_support: int | None = 5) -> dict[str, float]:
    """Per-keyword thresholds maximising validation F1; a global one where support is below ``min_support``
    (None: the global one for every keyword, the steadier choice when validation is small)."""
    probs = np.asarray(probs, dtype=float)
    truth = np.asarray(truth).astype(bool)
    if probs.shape != truth.shape or probs.shape[1] != len(keywords):
        raise ValueError(f"probs {probs.shape} and truth {truth.shape} must both be (n, {len(keywords)})")
    global_t = best_threshold(probs.ravel(), truth.ravel())[0] if truth.any() else DEFAULT_THRESHOLD
    thresholds = {}
    for j, keyword in enumerate(keywords):
        if min_support is not None and truth[:, j].sum() >= min_support:
            thresholds[keyword] = best_threshold(probs[:, j], truth[:, j])[0]
        else:
            thresholds[keyword] = global_t
    return thresholds


def apply_thresholds(probs: np.ndarray, keywords: Sequence[str], thresholds: dict[str, float] | None) -> np.ndarray:
    """Boolean (n, K) predictions with each keyword's own threshold (0.5 where none is stored)."""
    cut = np.array([(thresholds or {}).get(k, DEFAULT_THRESHOLD) for k in keywords], dtype=float)
    return np.asarray(probs) >= cut[None, :]
