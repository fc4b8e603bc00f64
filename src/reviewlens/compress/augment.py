"""More transfer texts for distillation, made from the corpus itself (as TinyBERT augments its task data).

A student learns the teacher's function only where it sees the teacher's answers. A few thousand reviews
leave most of that function unseen, so the corpus is stretched in two ways that stay in the domain:

* **clause mixes**: two or three clauses of different reviews joined into one review, which gives the
  teacher new combinations of aspects and opinions to label (praise of one keyword, criticism of another);
* **masked copies**: a review with one whitespace word replaced by the mask token, which are exactly the
  inputs that occlusion highlights feed the model, so the student's highlights follow the teacher's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ..highlight import masked_variants, whitespace_words

_CLAUSE_END = re.compile(r"(?:[.!?~,;]+|지만|는데|은데|니까|네요|어요|아요|해요|예요|에요|습니다|구요|ㅎㅎ+|ㅋㅋ+)\s+")


def clauses(text: str) -> list[str]:
    """``text`` cut after sentence punctuation and common Korean clause endings that a space follows."""
    parts, start = [], 0
    for match in _CLAUSE_END.finditer(text):
        parts.append(text[start:match.end()].strip())
        start = match.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def augment_texts(texts: Sequence[str], count: int, mask_token: str, *, seed: int = 42) -> list[str]:
    """``count`` new texts, half clause mixes and half one-word-masked copies, none equal to a corpus text."""
    if count <= 0 or not texts:
        return []
    rng = np.random.default_rng(seed)
    by_review = [c for c in (clauses(t) for t in texts) if c]
    maskable = [(t, words) for t in texts if len(words := whitespace_words(t)) >= 2]
    seen = set(texts)
    out: list[str] = []
    attempts = 0
    while len(out) < count and attempts < 20 * count:
        attempts += 1
        if len(by_review) > 1 and (len(out) % 2 == 0 or not maskable):
            picks = rng.choice(len(by_review), size=min(int(rng.integers(2, 4)), len(by_review)), replace=False)
            text = " ".join(by_review[i][int(rng.integers(len(by_review[i])))] for i in picks)
        elif maskable:
            source, words = maskable[int(rng.integers(len(maskable)))]
            text = masked_variants(source, [words[int(rng.integers(len(words)))]], mask_token)[0]
        else:
            break  # one review of one word: nothing to mix or mask
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out
