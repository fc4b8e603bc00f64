"""Gradient × input highlights: a cheaper alternative to occlusion, for torch bundles.

Occlusion (``highlight.py``) runs one forward pass per whitespace word of every review. This module
runs one forward and one backward pass per (review, keyword) row instead. A word piece's score is the
first-order estimate of the probability drop when the piece is replaced by the mask token,
``∇ₑp · (e − e_mask)`` with ``e`` the piece's word embedding; a whitespace word's score is the sum of
its pieces' scores. The scores are on the same scale as occlusion's probability drops and come back
as the same ``Highlight`` objects. How often both agree is measured by ``benchmarks/speed.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np

from .errors import ReviewlensError
from .highlight import Highlight, _top, in_scope_mask, whitespace_words
from .modeling import MULTI_LABEL
from .scoring import KEYWORD, SENTIMENT
from .tasks import SENTIMENT_TEMPLATE, sentiment_input


def _input_embeddings(model):
    encoder = getattr(model, "encoder", None)
    if encoder is not None and hasattr(encoder, "get_input_embeddings"):
        return encoder.get_input_embeddings()  # MeanPoolingClassifier
    return model.get_input_embeddings()


@contextmanager
def _frozen(model):
    """Weights need no gradients here; only the embedding output does."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _check_scorer(scorer) -> None:
    if not hasattr(scorer, "models"):
        raise ReviewlensError("gradient attribution needs a torch bundle (it differentiates the model); an ONNX "
                              "bundle has no gradients: use attribution='occlusion' with it")


def word_attributions(scorer, which: str, inputs: Sequence[str], reviews: Sequence[str], offsets: Sequence[int],
                      outputs: Sequence[int]) -> list[np.ndarray]:
    """Per row, the score of each whitespace word of ``reviews[r]``, found at ``offsets[r]`` in ``inputs[r]``.

    ``outputs[r]`` is the class whose probability is explained (a keyword index or a level index).
    Words cut off by truncation score 0.
    """
    import torch

    _check_scorer(scorer)
    model = scorer.models[which]
    tokenizer = scorer.tokenizers[which]
    multi_label = model.head_config.problem_type == MULTI_LABEL if hasattr(model, "head_config") \
        else getattr(model.config, "problem_type", None) == MULTI_LABEL
    words = [whitespace_words(r) for r in reviews]
    results = [np.zeros(len(w), dtype=np.float32) for w in words]
    if not inputs:
        return results
    enc = tokenizer(list(inputs), truncation=True, max_length=scorer.max_lengths[which], return_offsets_mapping=True,
                    return_attention_mask=False)
    ids, spans = enc["input_ids"], enc["offset_mapping"]
    embeddings = _input_embeddings(model)
    mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
    baseline = embeddings.weight[mask_id].detach() if mask_id is not None else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    captured = {}

    def hook(module, args, output):
        output.requires_grad_(True)
        captured["embeddings"] = output
        return output

    order = np.argsort([len(x) for x in ids], kind="stable")
    handle = embeddings.register_forward_hook(hook)
    try:
        with _frozen(model), torch.enable_grad():
            for start in range(0, len(order), scorer.batch_size):
                chunk = order[start:start + scorer.batch_size]
                width = max(len(ids[i]) for i in chunk)
                input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                attention = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    attention[row, : len(ids[i])] = 1
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
                target = torch.tensor([outputs[i] for i in chunk], device=device)
                probs = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)
                chosen = probs.gather(1, target[:, None]).sum()
                emb = captured["embeddings"]
                (grad,) = torch.autograd.grad(chosen, emb)
                delta = emb.detach() - baseline if baseline is not None else emb.detach()
                piece_scores = (grad * delta).sum(-1).cpu().numpy()
                for row, i in enumerate(chunk):
                    _accumulate(results[i], words[i], spans[i], offsets[i], piece_scores[row])
    finally:
        handle.remove()
    return results


def _accumulate(out: np.ndarray, words, spans, offset: int, scores: np.ndarray) -> None:
    """Add each piece's score to the whitespace word holding the piece's last character."""
    if not words:
        return
    starts = np.array([s for _, s, _ in words])
    ends = np.array([e for _, _, e in words])
    for p, (a, b) in enumerate(spans):
        if b <= a:  # special tokens
            continue
        c = b - 1 - offset
        j = int(np.searchsorted(starts, c, side="right")) - 1
        if 0 <= j < len(words) and c < ends[j]:
            out[j] += scores[p]


def _review_offset(template: str, keyword: str) -> int:
    """Where the review starts inside the templated sentiment input."""
    return len(template[: template.index("{review}")].format(keyword=keyword))


def keyword_word_scores(scorer, texts: Sequence[str], targets: Sequence[Sequence[int]]) -> list[dict[int, np.ndarray]]:
    """For each review, each target keyword index -> the gradient × input score of every whitespace word."""
    rows = [(i, int(k)) for i, ks in enumerate(targets) for k in ks if whitespace_words(texts[i])]
    scores = word_attributions(scorer, KEYWORD, [texts[i] for i, _ in rows], [texts[i] for i, _ in rows],
                               [0] * len(rows), [k for _, k in rows])
    out: list[dict[int, np.ndarray]] = [{} for _ in texts]
    for (i, k), s in zip(rows, scores):
        out[i][k] = s
    return out


def sentiment_word_scores(scorer, texts: Sequence[str], pairs: Sequence[tuple[int, str, int, float]]) -> list[np.ndarray]:
    """For each (review index, keyword, level index, _): the score of every whitespace word for that level."""
    template = getattr(scorer, "template", SENTIMENT_TEMPLATE)
    cuts = scorer.sentiment_visible_chars([texts[i] for i, *_ in pairs], [kw for _, kw, *_ in pairs])
    inputs = [sentiment_input(texts[i][:cut], kw, template) for (i, kw, _, _), cut in zip(pairs, cuts)]
    offsets = [_review_offset(template, kw) for _, kw, _, _ in pairs]
    return word_attributions(scorer, SENTIMENT, inputs, [texts[i] for i, _, _, _ in pairs], offsets,
                             [level for _, _, level, _ in pairs])


def keyword_highlights(scorer, texts: Sequence[str], base_probs: np.ndarray, targets: Sequence[Sequence[int]],
                       top_k: int = 3) -> list[dict[int, list[Highlight]]]:
    """``highlight.keyword_highlights`` with gradient × input scores (``base_probs`` is not needed)."""
    scores = keyword_word_scores(scorer, texts, targets)
    return [{k: _top(whitespace_words(texts[i]), s, top_k) for k, s in scores[i].items()} for i in range(len(texts))]


def sentiment_highlights(scorer, texts: Sequence[str], pairs: Sequence[tuple[int, str, int, float]],
                         top_k: int = 3, scopes: Sequence[tuple[int, int] | None] | None = None
                         ) -> list[list[Highlight]]:
    """``highlight.sentiment_highlights`` with gradient × input scores (words outside a pair's scope score -inf)."""
    scores = sentiment_word_scores(scorer, texts, pairs)
    scopes = [None] * len(pairs) if scopes is None else scopes
    out = []
    for (i, _, _, _), s, scope in zip(pairs, scores, scopes, strict=True):
        words = whitespace_words(texts[i])
        out.append(_top(words, np.where(in_scope_mask(words, scope), s, -np.inf), top_k))
    return out
