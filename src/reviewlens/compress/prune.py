"""Structured attention-head pruning (Michel et al., 2019), followed by a short recovery fine-tune.

Each head's importance is the first-order estimate of how much the loss changes when the head is
removed: ``|sum(context · ∂loss/∂context)|`` over the head's slice of the attention output, summed over
calibration texts (the loss is taken against the unpruned model's own hard predictions, since its
soft-label loss has zero gradient at the start). The same number of the least important heads is
removed from every layer, so all layers keep one head count and onnxruntime's fused attention kernel
still applies. Removing a head slices the query/key/value rows and the output projection's columns;
the recovery fine-tune then distils the unpruned model into the pruned one (``distill.distill_model``).

A transformers checkpoint cannot express per-layer head counts, so pruned models are saved as ONNX.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from ..errors import ReviewlensError
from ..modeling import MULTI_LABEL
from .onnx import encoder_of

logger = logging.getLogger(__name__)


def _layers(model):
    encoder = encoder_of(model)
    if not hasattr(encoder, "encoder") or not hasattr(encoder.encoder, "layer"):
        raise ReviewlensError(f"head pruning supports BERT-style encoders, not {type(encoder).__name__}")
    return encoder.encoder.layer


def _head_dim(model) -> int:
    config = encoder_of(model).config
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def heads_per_layer(model) -> list[int]:
    """The number of attention heads each layer has now."""
    d = _head_dim(model)
    return [layer.attention.self.query.out_features // d for layer in _layers(model)]


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def head_importance(model, tokenizer, texts: Sequence[str], problem_type: str, *, batch_size: int = 32,
                    max_length: int = 256, max_texts: int = 512) -> np.ndarray:
    """(layers, heads) first-order importance of each head on ``texts``."""
    import torch
    import torch.nn.functional as F

    layers = _layers(model)
    d = _head_dim(model)
    heads = heads_per_layer(model)
    scores = np.zeros((len(layers), max(heads)), dtype=np.float64)
    captured: dict[int, torch.Tensor] = {}

    def capture(index):
        def hook(module, args):
            context = args[0]
            context.retain_grad()
            captured[index] = context
        return hook

    handles = [layer.attention.output.dense.register_forward_pre_hook(capture(i)) for i, layer in enumerate(layers)]
    model.eval()
    texts = list(texts)[:max_texts]
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length,
                            padding=True, return_tensors="pt")
            enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            model.zero_grad(set_to_none=True)
            logits = model(**enc).logits
            with torch.no_grad():
                if problem_type == MULTI_LABEL:
                    hard = (logits > 0).float()
                else:
                    hard = logits.argmax(-1)
            loss = F.binary_cross_entropy_with_logits(logits, hard) if problem_type == MULTI_LABEL \
                else F.cross_entropy(logits, hard)
            loss.backward()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            for i, context in captured.items():
                contrib = (context * context.grad * mask).detach()  # (batch, seq, heads * d)
                per_head = contrib.reshape(*contrib.shape[:2], -1, d).sum(dim=(0, 1, 3)).abs().numpy()
                scores[i, : len(per_head)] += per_head
            captured.clear()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    return scores


def prune_heads(model, remove: dict[int, list[int]]) -> None:
    """Remove the given heads (layer index -> head indices) from the model, in place."""
    import torch

    d = _head_dim(model)
    for index, layer in enumerate(_layers(model)):
        drop = set(remove.get(index, []))
        if not drop:
            continue
        attention = layer.attention
        n = attention.self.query.out_features // d
        keep_heads = [h for h in range(n) if h not in drop]
        if not keep_heads:
            raise ReviewlensError(f"layer {index}: cannot remove all {n} heads")
        keep = torch.tensor([h * d + j for h in keep_heads for j in range(d)], dtype=torch.long)
        for name in ("query", "key", "value"):
            setattr(attention.self, name, _slice_linear(getattr(attention.self, name), keep, dim=0))
        attention.output.dense = _slice_linear(attention.output.dense, keep, dim=1)
        attention.self.num_attention_heads = len(keep_heads)
        attention.self.all_head_size = len(keep_heads) * d


def _slice_linear(linear, index, dim: int):
    """A new Linear keeping ``index`` of its output (dim 0) or input (dim 1) features."""
    import torch

    weight = linear.weight.data.index_select(dim, index).clone()
    bias = None
    if linear.bias is not None:
        bias = linear.bias.data.index_select(0, index).clone() if dim == 0 else linear.bias.data.clone()
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    return new


def prune_by_importance(model, tokenizer, texts: Sequence[str], problem_type: str, ratio: float, *,
                        max_length: int = 256) -> dict:
    """Remove ``ratio`` of the heads of every layer, least important first; returns what was done."""
    if not 0.0 < ratio < 1.0:
        raise ReviewlensError(f"--prune must be a ratio between 0 and 1 (e.g. 0.25), not {ratio}")
    before_params = count_parameters(model)
    heads = heads_per_layer(model)
    per_layer = min(heads)
    n_remove = min(per_layer - 1, int(math.floor(ratio * per_layer + 0.5)))
    if n_remove < 1:
        raise ReviewlensError(f"--prune {ratio} removes no head of layers with {per_layer} heads; use a larger ratio")
    scores = head_importance(model, tokenizer, texts, problem_type, max_length=max_length)
    remove = {i: [int(h) for h in np.argsort(scores[i, :heads[i]], kind="stable")[:n_remove]]
              for i in range(len(heads))}
    prune_heads(model, remove)
    return {"method": "attention_heads", "ratio": ratio, "removed": {str(k): v for k, v in remove.items()},
            "heads_before": heads, "heads_after": heads_per_layer(model),
            "params_before": before_params, "params_after": count_parameters(model)}
