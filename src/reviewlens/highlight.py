"""Occlusion highlights: mask one whitespace word at a time and measure the probability drop.

All variants of all reviews in a call go through the scorer together, so the batching and length
sorting of the scorer apply across reviews. One keyword-model pass per variant serves every keyword.

Sentiment highlights can be scoped to the clause that holds the keyword's own top highlight
(``clause_around``): a review such as "옷은 예쁘지만 배송은 늦어요" then explains 배송's -1 with 늦어요, not with
예쁘지만, which a sentiment model that reads the whole review also leans on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .errors import ReviewlensError

_WORD = re.compile(r"\S+")
_CLAUSE_END = re.compile(r"([.!?~,;…]|(고|지만|데|서|며|면서|니까|요|다|음|함|듯|ㅎ+|ㅋ+|ㅠ+|ㅜ+|\^+))[.!?~,;…^]*$")
"""A whitespace word that closes a clause: sentence punctuation, or a Korean connective or final ending
(-고, -지만, -는데, -어서, -며, -면서, -니까, -요, -다, -음, -함, -듯) or a trailing laugh/cry/emoticon run."""
SENTIMENT_SCOPES = ("clause", "review")


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


def clauses(text: str) -> list[tuple[int, int]]:
    """The [start, end) character ranges of the clauses of ``text``.

    A clause is a run of whitespace words cut after each word that ``_CLAUSE_END`` matches (punctuation,
    connective and final endings) and at every line break: "옷은 예쁘지만 | 배송은 늦어요".
    """
    out: list[tuple[int, int]] = []
    words = whitespace_words(text)
    for i, (word, start, end) in enumerate(words):
        previous = words[i - 1] if i else None
        if previous is None or _CLAUSE_END.search(previous[0]) or "\n" in text[previous[2]:start]:
            out.append((start, end))
        else:
            out[-1] = (out[-1][0], end)
    return out


def clause_around(text: str, position: int) -> tuple[int, int]:
    """[start, end) character range of the clause (see ``clauses``) that holds the character at ``position``;
    the whole text when no clause does (e.g. ``position`` is a space between two clauses)."""
    return next(((s, e) for s, e in clauses(text) if s <= position < e), (0, len(text)))


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


def in_scope_mask(words: Sequence[tuple[str, int, int]], scope: tuple[int, int] | None) -> list[bool]:
    """For each word, whether it lies inside the character range ``scope`` (every word when it is None)."""
    return [scope is None or (scope[0] <= start and end <= scope[1]) for _, start, end in words]


def in_scope(words: Sequence[tuple[str, int, int]], scope: tuple[int, int] | None) -> list[tuple[str, int, int]]:
    """The words that lie inside the character range ``scope`` (all of them when it is None)."""
    return [w for w, inside in zip(words, in_scope_mask(words, scope)) if inside]


def check_sentiment_scope(scope: str) -> None:
    """Raise a clear error unless ``scope`` is one of ``SENTIMENT_SCOPES``."""
    if scope not in SENTIMENT_SCOPES:
        raise ReviewlensError(f"sentiment_scope (--sentiment-scope) must be {' or '.join(SENTIMENT_SCOPES)}, not {scope!r}")


def sentiment_highlights(scorer, texts: Sequence[str], pairs: Sequence[tuple[int, str, int, float]],
                         top_k: int = 3, scopes: Sequence[tuple[int, int] | None] | None = None
                         ) -> list[list[Highlight]]:
    """For each (review index, keyword, level index, base probability): the words that drive that level.

    ``scopes`` (one per pair, or None) limits the occluded words of a pair to a character range of its review,
    e.g. the clause of the keyword (``clause_around``); the model still reads the whole review.
    """
    mask = scorer.mask_token("sentiment")
    words = [whitespace_words(texts[i]) for i, *_ in pairs]  # per pair: the visible part depends on the keyword
    if hasattr(scorer, "sentiment_visible_chars"):
        visible = scorer.sentiment_visible_chars([texts[i] for i, *_ in pairs], [k for _, k, *_ in pairs])
        words = [[w for w in ws if w[2] <= cut] for ws, cut in zip(words, visible)]
    if scopes is not None:
        words = [in_scope(ws, scope) for ws, scope in zip(words, scopes, strict=True)]
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
