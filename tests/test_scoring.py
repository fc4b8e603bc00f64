"""Batch planning of the scorer: sorted inputs cut where padding would cost more than another forward call."""

from __future__ import annotations

import random

import numpy as np
import pytest

from reviewlens.scoring import BatchedScorer, length_batches


def _check_cover(batches, lengths, max_rows, max_tokens):
    assert batches[0][0] == 0 and batches[-1][1] == len(lengths)
    for (_, end), (start, _) in zip(batches, batches[1:]):
        assert end == start
    for start, end in batches:
        assert end > start
        assert end - start <= max_rows
        assert end - start == 1 or (end - start) * lengths[end - 1] <= max_tokens


def test_a_long_input_does_not_pad_a_batch_of_short_ones():
    lengths = [40] * 31 + [128]
    batches = length_batches(lengths, max_rows=64, max_tokens=16384, overhead=32)
    assert batches == [(0, 31), (31, 32)]
    # without a per-call cost every distinct length would be its own batch; with a huge one, a single batch
    assert length_batches([10, 10, 11, 12], max_rows=64, max_tokens=16384, overhead=0) == [(0, 2), (2, 3), (3, 4)]
    assert length_batches(lengths, max_rows=64, max_tokens=16384, overhead=1e9) == [(0, 32)]


def test_equal_lengths_fill_batches_up_to_the_limits():
    # the fewest calls the limits allow
    for lengths, max_rows, max_tokens, calls in (([20] * 130, 64, 16384, 3), ([100] * 10, 64, 300, 4)):
        batches = length_batches(lengths, max_rows=max_rows, max_tokens=max_tokens)
        _check_cover(batches, lengths, max_rows, max_tokens)
        assert len(batches) == calls
    assert length_batches([], max_rows=8, max_tokens=100) == []
    assert length_batches([500], max_rows=8, max_tokens=100) == [(0, 1)]  # one input always fits


@pytest.mark.parametrize("seed", range(5))
def test_plan_covers_every_input_within_limits_and_beats_fixed_batches(seed):
    rng = random.Random(seed)
    lengths = sorted(rng.randint(5, 128) for _ in range(rng.randint(1, 400)))
    batches = length_batches(lengths, max_rows=64, max_tokens=4096, overhead=32)
    _check_cover(batches, lengths, 64, 4096)

    def cost(plan):
        return sum(32 + (end - start) * (lengths[end - 1] + 0.0026 * lengths[end - 1] ** 2) for start, end in plan)

    fixed, start = [], 0
    while start < len(lengths):  # the old plan: as many as fit, in order
        end = start + 1
        while end < len(lengths) and end - start < 64 and (end - start + 1) * lengths[end] <= 4096:
            end += 1
        fixed.append((start, end))
        start = end
    assert cost(batches) <= cost(fixed) + 1e-9


class _LengthScorer(BatchedScorer):
    """Logits that encode each input's own token count, to check that the order is restored."""

    def __init__(self):
        class Tok:
            pad_token_id = 0

            def __call__(self, texts, **_):
                return {"input_ids": [[1] * len(t.split()) for t in texts]}

        super().__init__({"keyword": Tok()}, {"keyword": 512}, batch_size=4)
        self.calls = []

    def num_outputs(self, which):
        return 1

    def _logits(self, which, batch):
        self.calls.append(batch["input_ids"].shape)
        return batch["attention_mask"].sum(axis=1, keepdims=True).astype(np.float32)


def test_scorer_restores_input_order_across_planned_batches():
    scorer = _LengthScorer()
    texts = ["a " * n for n in (3, 50, 3, 4, 49, 3, 200, 3, 3)]
    logits = scorer.logits("keyword", texts)
    assert logits[:, 0].tolist() == [3, 50, 3, 4, 49, 3, 200, 3, 3]
    assert all(rows <= 4 for rows, _ in scorer.calls)
    assert (1, 200) in scorer.calls  # the long input went alone instead of padding the short ones to 200
