"""A keyword's sentiment from the whole review and from the keyword's own clause.

A sentiment model that reads all of "옷은 예쁘지만 배송은 늦어요" for the keyword 배송 also hears 예쁘지만. Read
alone, the clause where the keyword model finds 배송 most likely ("배송은 늦어요", see ``keyword_clauses``) has
no such pull, but loses the context that a short clause needs. The level comes from both, by log-linear pooling::

    p(level) ∝ p_review(level) ** (1 - w) * p_clause(level) ** w

with the clause weight ``w`` chosen on validation data (``fit_clause_weight``) and stored in the bundle
(``ModelBundle.clause_weight``; 0, the default of older bundles, reads the whole review only). On the fashion dev
set the default bundle's pipeline F1 is 0.727 from the whole review, 0.737 from the clause alone and 0.752
pooled with w = 0.5, the weight its validation split chose (``benchmarks/clause_sentiment.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .highlight import clauses

CLAUSE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""The clause weights ``fit_clause_weight`` tries."""

Range = tuple[int, int]


def keyword_clauses(scorer, texts: Sequence[str], pairs: Sequence[tuple[int, int]]) -> list[Range | None]:
    """For each (review index, keyword index) pair: the [start, end) range of the review's clause (``clauses``)
    that the keyword model gives that keyword the highest probability, or None when the review is one clause
    (or the keyword index is not one of the model's outputs).

    One keyword-model pass per distinct clause text of the reviews that have a pair (a review listed once per
    keyword, as selection does, is scored once); clauses are short, so this costs a few times one pass over the
    reviews, far less than occlusion.
    """
    reviews = sorted({i for i, _ in pairs})
    of_review = {i: clauses(texts[i]) for i in reviews}
    of_review = {i: r for i, r in of_review.items() if len(r) > 1}
    flat = [(i, s, e) for i, ranges in of_review.items() for s, e in ranges]
    if not flat:
        return [None] * len(pairs)
    clause_texts = [texts[i][s:e] for i, s, e in flat]
    distinct = {text: row for row, text in enumerate(dict.fromkeys(clause_texts))}
    probs = scorer.keyword_probs(list(distinct))[[distinct[text] for text in clause_texts]]
    rows: dict[int, list[int]] = {}
    for row, (i, _, _) in enumerate(flat):
        rows.setdefault(i, []).append(row)
    out: list[Range | None] = []
    for i, k in pairs:
        if i not in of_review or k >= probs.shape[1]:
            out.append(None)
            continue
        best = rows[i][int(np.argmax(probs[rows[i], k]))]
        out.append((flat[best][1], flat[best][2]))
    return out


def pool(review: np.ndarray, clause: np.ndarray, weight: float) -> np.ndarray:
    """Log-linear pooling of two (m, L) level distributions: ∝ review ** (1 - weight) * clause ** weight."""
    if weight == 0 or len(review) == 0:
        return review
    eps = 1e-12
    logits = (1 - weight) * np.log(review + eps) + weight * np.log(clause + eps)
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


@dataclass
class PairSentiment:
    """Level distributions of (review index, keyword) pairs read from the whole review and from the keyword's
    clause, and that clause's [start, end) range (None: the review is one clause, or it was not read)."""

    review: np.ndarray
    clause: np.ndarray
    clauses: list[Range | None]

    def pooled(self, weight: float) -> np.ndarray:
        """The levels as the bundle reports them: ``pool(review, clause, weight)``."""
        return pool(self.review, self.clause, weight)


def pair_sentiment(scorer, texts: Sequence[str], pairs: Sequence[tuple[int, str]], keywords: Sequence[str],
                   read_clause: bool = True) -> PairSentiment:
    """The sentiment model's readings of each (review index, keyword) pair: the whole review and, with
    ``read_clause``, the keyword's clause (``keyword_clauses``; the whole review's reading where the review is
    one clause). Without it the clause reading is the review's and no clause is found (no extra passes)."""
    if not pairs:
        return PairSentiment(np.zeros((0, 0)), np.zeros((0, 0)), [])
    review = scorer.sentiment_probs([texts[i] for i, _ in pairs], [kw for _, kw in pairs])
    if not read_clause:
        return PairSentiment(review, review, [None] * len(pairs))
    index = {kw: k for k, kw in enumerate(keywords)}
    ranges = keyword_clauses(scorer, texts, [(i, index.get(kw, len(keywords))) for i, kw in pairs])
    clause = review.copy()
    todo = [p for p, r in enumerate(ranges) if r is not None]
    if todo:
        clause[todo] = scorer.sentiment_probs([texts[pairs[p][0]][ranges[p][0]:ranges[p][1]] for p in todo],
                                              [pairs[p][1] for p in todo])
    return PairSentiment(review, clause, ranges)


def fit_clause_weight(score: Callable[[float], float], weights: Sequence[float] = CLAUSE_WEIGHTS
                      ) -> tuple[float, dict[float, float]]:
    """The weight in ``weights`` that ``score`` (higher is better, e.g. the validation pipeline F1 with levels
    pooled by that weight) rates best, ties to the smaller weight; and every weight's score."""
    scores = {float(w): float(score(float(w))) for w in weights}
    best = max(scores.values())
    return min(w for w, s in scores.items() if s >= best - 1e-12), scores
