"""Occlusion highlights: mask one whitespace word at a time and measure the probability drop.

All variants of all reviews in a call go through the scorer together, so the batching and length
sorting of the scorer apply across reviews. One keyword-model pass per variant serves every keyword.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Highlight:
    """A whitespace word, its character offsets in the review and how much masking it lowers the probability."""

    word: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


def whitespace_words(text: str) -> list[tuple[str, int, int]]:
    """The whitespace-separated words of ``text`` with their [start, end) character offsets."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def masked_variants(text: str, words: Sequence[tuple[str, int, int]], mask_token: str) -> list[str]:
    """One copy of ``text`` per word, with that word replaced by ``mask_token``."""
    return [text[:start] + mask_token + text[end:] for _, start, end in words]


def _top(words, drops: np.ndarray, top_k: int) -> list[Highlight]:
    order = np.argsort(-drops, kind="stable")[:top_k]
    return [Highlight(words[i][0], words[i][1], words[i][2], round(float(drops[i]), 6))
            for i in order if drops[i] > 0]


def keyword_highlights(scorer, texts: Sequence[str], base_probs: np.ndarray, targets: Sequence[Sequence[int]],
                       top_k: int = 3) -> list[dict[int, list[Highlight]]]:
    """For each review, each target keyword index -> the words whose masking drops its probability most."""
    mask = scorer.mask_token("keyword")
    words = [whitespace_words(t) for t in texts]
    if hasattr(scorer, "visible_chars"):  # words past the model's max length cannot matter: skip them
        visible = scorer.visible_chars("keyword", texts)
        words = [[w for w in ws if w[2] <= cut] for ws, cut in zip(words, visible)]
    variants, owner = [], []
    for i, text in enumerate(texts):
        if targets[i] and len(words[i]) > 0:
            variants.extend(masked_variants(text, words[i], mask))
            owner.extend([i] * len(words[i]))
    probs = scorer.keyword_probs(variants) if variants else np.zeros((0, base_probs.shape[1]))
    out: list[dict[int, list[Highlight]]] = [{} for _ in texts]
    owner_arr = np.asarray(owner)
    for i in range(len(texts)):
        if not targets[i] or not words[i]:
            continue
        rows = probs[owner_arr == i]
        for k in targets[i]:
            out[i][k] = _top(words[i], base_probs[i, k] - rows[:, k], top_k)
    return out


def sentiment_highlights(scorer, texts: Sequence[str], pairs: Sequence[tuple[int, str, int, float]],
                         top_k: int = 3) -> list[list[Highlight]]:
    """For each (review index, keyword, level index, base probability): the words that drive that level."""
    mask = scorer.mask_token("sentiment")
    words = [whitespace_words(texts[i]) for i, *_ in pairs]  # per pair: the visible part depends on the keyword
    if hasattr(scorer, "sentiment_visible_chars"):
        visible = scorer.sentiment_visible_chars([texts[i] for i, *_ in pairs], [k for _, k, *_ in pairs])
        words = [[w for w in ws if w[2] <= cut] for ws, cut in zip(words, visible)]
    variants, kws, owner = [], [], []
    for p, (i, keyword, _, _) in enumerate(pairs):
        masked = masked_variants(texts[i], words[p], mask)
        variants.extend(masked)
        kws.extend([keyword] * len(masked))
        owner.extend([p] * len(masked))
    probs = scorer.sentiment_probs(variants, kws) if variants else np.zeros((0, 1))
    owner_arr = np.asarray(owner)
    out = []
    for p, (i, _, level, base) in enumerate(pairs):
        if not words[p]:
            out.append([])
            continue
        rows = probs[owner_arr == p]
        out.append(_top(words[p], base - rows[:, level], top_k))
    return out
