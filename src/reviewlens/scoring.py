"""Scorers: turn texts into keyword and sentiment probabilities, in length-sorted batches.

The analyzer, the highlights and the evaluation only talk to a ``Scorer``; the torch scorer here and
the onnxruntime scorer of ``reviewlens.compress`` differ only in ``_logits``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .tasks import SENTIMENT_TEMPLATE, sentiment_input

logger = logging.getLogger(__name__)

KEYWORD, SENTIMENT = "keyword", "sentiment"


class Scorer(Protocol):
    """What the analyzer needs from a backend."""

    def keyword_probs(self, texts: Sequence[str]) -> np.ndarray: ...

    def sentiment_probs(self, texts: Sequence[str], keywords: Sequence[str]) -> np.ndarray: ...

    def mask_token(self, which: str) -> str: ...


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


CPU_BATCH_OVERHEAD = 32.0
"""A forward call's fixed cost on a CPU, in padded tokens: 7 ms against 0.2 ms a token for multilingual-e5-small
on 2 cores (a batch of 1 x 8 pieces took 8.6 ms, 32 x 32 took 228 ms). A GPU's is far larger."""
GPU_BATCH_OVERHEAD = 1024.0
"""The same on a GPU, where launching a call costs as much as a few thousand tokens' work: batch nearly always."""
ATTENTION_COST = 0.0026
"""Extra cost of a padded token per token of width (self-attention grows with its square), relative to a token."""


def length_batches(lengths: Sequence[int], *, max_rows: int, max_tokens: int, overhead: float = CPU_BATCH_OVERHEAD,
                   attention: float = ATTENTION_COST) -> list[tuple[int, int]]:
    """Split ascending ``lengths`` into [start, end) batches of least modelled cost, by dynamic programming.

    A batch of r inputs padded to width w costs ``overhead + r * (w + attention * w**2)``. Cutting where the sorted
    lengths jump keeps padding low (one 128-piece review in a batch of 40-piece ones triples its cost); the
    per-call overhead keeps batches from being needlessly small. Batches hold at most ``max_rows`` inputs and
    ``max_tokens`` padded tokens (one input at least).
    """
    n = len(lengths)
    if n == 0:
        return []
    width = np.asarray(lengths, dtype=np.float64)
    per_row = width + attention * width ** 2
    cost = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        rows = max(1, min(max_rows, int(max_tokens // max(width[end - 1], 1.0))))
        starts = np.arange(max(0, end - rows), end)
        candidates = cost[starts] + overhead + (end - starts) * per_row[end - 1]
        best = int(np.argmin(candidates))
        cost[end], cut[end] = candidates[best], starts[best]
    batches, end = [], n
    while end > 0:
        batches.append((int(cut[end]), end))
        end = int(cut[end])
    return batches[::-1]


class BatchedScorer:
    """Tokenises, sorts by length, pads per batch and restores the input order; subclasses run the model."""

    def __init__(self, tokenizers: dict[str, object], max_lengths: dict[str, int], *, batch_size: int = 64,
                 template: str = SENTIMENT_TEMPLATE, max_tokens_per_batch: int = 16384,
                 batch_overhead: float = CPU_BATCH_OVERHEAD) -> None:
        self.tokenizers = tokenizers
        self.max_lengths = max_lengths
        self.batch_size = batch_size
        self.template = template
        self.max_tokens_per_batch = max_tokens_per_batch
        self.batch_overhead = batch_overhead
        self.truncated = 0
        self._template_tokens: dict[str, int] = {}  # keyword -> pieces the sentiment template takes around a review

    def _logits(self, which: str, batch: dict[str, np.ndarray]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def mask_token(self, which: str) -> str:
        tok = self.tokenizers[which]
        return tok.mask_token or tok.unk_token or ""

    def logits(self, which: str, texts: Sequence[str]) -> np.ndarray:
        """Raw logits for ``texts`` in input order."""
        tokenizer = self.tokenizers[which]
        if not texts:
            return np.zeros((0, self.num_outputs(which)), dtype=np.float32)
        max_length = self.max_lengths[which]
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length, return_attention_mask=False)
        ids = encoded["input_ids"]
        n_truncated = sum(len(x) >= max_length for x in ids)
        if n_truncated:
            self.truncated += n_truncated
            logger.debug("%d input(s) truncated to the model's max length of %d tokens", n_truncated, max_length)
        order = np.argsort([len(x) for x in ids], kind="stable")
        out: list[np.ndarray | None] = [None] * len(ids)
        batches = length_batches([len(ids[i]) for i in order], max_rows=self.batch_size,
                                 max_tokens=self.max_tokens_per_batch, overhead=self.batch_overhead)
        for start, end in batches:
            chunk = order[start:end]
            width = max(len(ids[i]) for i in chunk)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            input_ids = np.full((len(chunk), width), pad, dtype=np.int64)
            attention = np.zeros((len(chunk), width), dtype=np.int64)
            for row, i in enumerate(chunk):
                input_ids[row, : len(ids[i])] = ids[i]
                attention[row, : len(ids[i])] = 1
            logits = self._logits(which, {"input_ids": input_ids, "attention_mask": attention})
            for row, i in enumerate(chunk):
                out[i] = logits[row]
        return np.stack(out).astype(np.float32)

    def num_outputs(self, which: str) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def keyword_probs(self, texts: Sequence[str]) -> np.ndarray:
        """(n, K) sigmoid probabilities of every keyword."""
        return sigmoid(self.logits(KEYWORD, texts))

    def sentiment_probs(self, texts: Sequence[str], keywords: Sequence[str]) -> np.ndarray:
        """(n, L) softmax distributions over the levels, one row per (text, keyword) pair.

        A review too long for the model is cut (at a token boundary) before it goes into the template, so
        the keyword at the template's end is never the part that truncation drops.
        """
        keywords = list(keywords)
        cuts = self.sentiment_visible_chars(texts, keywords)
        inputs = [sentiment_input(t[:c], k, self.template) for t, k, c in zip(texts, keywords, cuts, strict=True)]
        return softmax(self.logits(SENTIMENT, inputs))

    def visible_chars(self, which: str, texts: Sequence[str], reserve: int = 0) -> list[int]:
        """How many leading characters of each text fit the ``which`` model's input, ``reserve`` tokens kept free.

        Words past that point cannot change the model's output, so highlights do not occlude them.
        """
        tokenizer = self.tokenizers[which]
        budget = self.max_lengths[which] - tokenizer.num_special_tokens_to_add() - reserve
        out = [len(t) for t in texts]
        # a piece covers at least one character or a word boundary: short texts fit without tokenising
        long = [i for i, t in enumerate(texts) if len(t) + t.count(" ") + 1 > budget]
        if not long:
            return out
        if budget <= 0:
            return [0] * len(texts)
        if not getattr(tokenizer, "is_fast", False):  # no offsets: a conservative character budget
            for i in long:
                out[i] = min(out[i], budget)
            return out
        encoded = tokenizer([texts[i] for i in long], add_special_tokens=False, return_offsets_mapping=True)
        for i, offsets in zip(long, encoded["offset_mapping"]):
            if len(offsets) > budget:
                out[i] = int(offsets[budget - 1][1])
        return out

    def sentiment_visible_chars(self, texts: Sequence[str], keywords: Sequence[str]) -> list[int]:
        """``visible_chars`` for reviews inside the sentiment template, which leaves room for the keyword."""
        tokenizer = self.tokenizers[SENTIMENT]
        cache = self._template_tokens
        out = [len(t) for t in texts]
        by_keyword: dict[str, list[int]] = {}
        for i, keyword in enumerate(keywords):
            by_keyword.setdefault(keyword, []).append(i)
        for keyword, rows in by_keyword.items():
            if keyword not in cache:  # the template's own pieces, plus a margin for merges at the seams
                cache[keyword] = len(tokenizer(sentiment_input("", keyword, self.template),
                                               add_special_tokens=False)["input_ids"]) + 2
            for i, cut in zip(rows, self.visible_chars(SENTIMENT, [texts[i] for i in rows], cache[keyword])):
                out[i] = cut
        return out


class TorchScorer(BatchedScorer):
    """Runs the two PyTorch classifiers."""

    def __init__(self, keyword_model, keyword_tokenizer, sentiment_model, sentiment_tokenizer, *,
                 device: str = "cpu", batch_size: int = 64, template: str = SENTIMENT_TEMPLATE) -> None:
        from .modeling import max_input_length

        self.models = {KEYWORD: keyword_model.to(device).eval(), SENTIMENT: sentiment_model.to(device).eval()}
        self.device = device
        super().__init__(
            {KEYWORD: keyword_tokenizer, SENTIMENT: sentiment_tokenizer},
            {KEYWORD: max_input_length(keyword_model, keyword_tokenizer),
             SENTIMENT: max_input_length(sentiment_model, sentiment_tokenizer)},
            batch_size=batch_size, template=template,
            batch_overhead=GPU_BATCH_OVERHEAD if str(device).startswith("cuda") else CPU_BATCH_OVERHEAD)

    def num_outputs(self, which: str) -> int:
        model = self.models[which]
        return getattr(model, "head_config", None).num_labels if hasattr(model, "head_config") \
            else model.config.num_labels

    def _logits(self, which: str, batch: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
            return self.models[which](**tensors).logits.float().cpu().numpy()
