"""Build, save and load the classifiers: a base encoder with a keyword (multi-label) or sentiment head.

Three poolings:
- ``cls``: ``AutoModelForSequenceClassification`` as is (the seed's RoBERTa set-up);
- ``mean``: the encoder's hidden states averaged over the attention mask, then a linear head. Bases
  trained as sentence encoders (e5) have no trained pooler, and a fresh pooler taught only the label prior.
- ``mean_keyword`` (sentiment model): the ``mean`` features concatenated with the mean over the keyword's
  own pieces, those after the last ``###키워드:`` marker piece. The whole-input mean of a review with praise
  for one keyword and a complaint about another barely depends on which keyword is asked about; the
  keyword's pieces, having attended to the review through every layer, do.

A model directory holds the encoder (full weights, or a LoRA adapter over a named base), the head and
``head.json``; ``load_classifier`` reads any of them.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer
from transformers.modeling_outputs import SequenceClassifierOutput

from .errors import ModelError, require

MULTI_LABEL = "multi_label_classification"
SINGLE_LABEL = "single_label_classification"
HEAD_FILE = "head.json"


@dataclass
class HeadConfig:
    """What sits on top of the encoder."""

    num_labels: int
    problem_type: str
    pooling: str = "cls"
    dropout: float = 0.1
    labels: list[str] = field(default_factory=list)
    base: str = ""
    lora: bool = False
    marker_id: int | None = None  # mean_keyword: the piece that ends the marker before the keyword


POOLINGS = ("cls", "mean", "mean_keyword")


def resolve_base(name_or_path: str) -> str:
    """A prepared offline base's folder, a local path, or a hub name unchanged."""
    from . import bases

    return bases.resolve_base(name_or_path)


class MeanPoolingClassifier(nn.Module):
    """Encoder, masked mean pooling, feature standardisation, dropout and a linear head.

    Mean-pooled sentence-encoder features vary little between reviews (e5 cosines are 0.85-0.95), so a
    linear head trained with Adam on the raw features moves far too slowly and learns only the label
    prior. The features are standardised with a mean and scale measured on training texts
    (``fit_normalizer``) and stored with the head.
    """

    def __init__(self, encoder: nn.Module, head: HeadConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.head_config = head
        self.config = encoder.config
        if head.pooling == "mean_keyword" and head.marker_id is None:
            raise ModelError("pooling 'mean_keyword' needs the marker piece id (head.json 'marker_id')")
        features = encoder.config.hidden_size * (2 if head.pooling == "mean_keyword" else 1)
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_scale", torch.ones(features))
        self.dropout = nn.Dropout(head.dropout)
        self.classifier = nn.Linear(features, head.num_labels)

    def pool(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Masked mean of the last hidden states (and, for ``mean_keyword``, of the keyword's pieces)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        pooled = _masked_mean(hidden, attention_mask)
        if self.head_config.pooling != "mean_keyword":
            return pooled
        return torch.cat([pooled, _masked_mean(hidden, keyword_mask(input_ids, attention_mask,
                                                                    self.head_config.marker_id))], dim=-1)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **_):
        pooled = self.pool(input_ids, attention_mask, token_type_ids)
        features = (pooled - self.feature_mean) / self.feature_scale
        logits = self.classifier(self.dropout(features))
        loss = default_loss(logits, labels, self.head_config.problem_type) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def fit_normalizer(self, batches) -> None:
        """Set the feature mean and scale from batches of ``{"input_ids", "attention_mask"}`` tensors."""
        was_training = self.training
        self.eval()
        pooled = torch.cat([self.pool(b["input_ids"], b.get("attention_mask")) for b in batches])
        self.feature_mean.copy_(pooled.mean(0))
        self.feature_scale.copy_(pooled.std(0).clamp(min=1e-4) if len(pooled) > 1 else torch.ones_like(pooled[0]))
        self.train(was_training)

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's tensors (everything but the encoder)."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("encoder.")}


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def keyword_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, marker_id: int) -> torch.Tensor:
    """1 on the pieces after the last ``marker_id`` of each row (the keyword and the end token), else 0.

    A row without the marker keeps its whole attention mask. Plain tensor ops, so ONNX export traces it.
    """
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(input_ids)
    last = torch.where(input_ids == marker_id, positions, torch.full_like(positions, -1)).amax(dim=1, keepdim=True)
    return attention_mask * (positions > last).to(attention_mask.dtype)


def keyword_marker_pieces(tokenizer, template: str | None = None) -> list[int]:
    """The ids of the sentiment template's text between the review and ``{keyword}`` (``###키워드:``);
    the last one is the marker after which ``mean_keyword`` pools."""
    from .tasks import SENTIMENT_TEMPLATE

    template = template or SENTIMENT_TEMPLATE
    head, sep, _ = template.partition("{keyword}")
    if not sep:
        raise ModelError(f"the sentiment template {template!r} has no {{keyword}} field")
    ids = tokenizer(head.split("{review}")[-1].rstrip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ModelError(f"the sentiment template {template!r} has no text before {{keyword}} to mark it")
    return list(ids)


def keyword_marker_id(tokenizer, template: str | None = None) -> int:
    """The id of the last piece of ``keyword_marker_pieces``."""
    return int(keyword_marker_pieces(tokenizer, template)[-1])


def last_index(ids: list[int], piece: int) -> int | None:
    """Position of the last ``piece`` in ``ids`` (None when absent): where the keyword part of an input starts."""
    return max((i for i, t in enumerate(ids) if t == piece), default=None)


def check_keyword_marker(tokenizer, marker_id: int, keywords: list[str], template: str | None = None) -> None:
    """Fail early when a keyword's pieces cannot be found after the marker in a tokenized sentiment input."""
    from .tasks import SENTIMENT_TEMPLATE, sentiment_input

    for keyword in keywords:
        ids = tokenizer(sentiment_input("좋아요", keyword, template or SENTIMENT_TEMPLATE))["input_ids"]
        at = last_index(ids, marker_id)
        tail = ids[at + 1:] if at is not None else []
        if not tokenizer.decode(tail, skip_special_tokens=True).strip():
            raise ModelError(f"pooling 'mean_keyword': keyword {keyword!r} has no pieces after the marker piece "
                             f"{marker_id} in its tokenized sentiment input; use pooling 'mean'")


def default_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    """BCE with logits for multi-label heads, cross-entropy for single-label heads."""
    if problem_type == MULTI_LABEL:
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    return nn.functional.cross_entropy(logits, labels.long())


def _apply_lora(encoder: nn.Module, r: int, alpha: int | None, dropout: float) -> nn.Module:
    peft = require("peft", "peft")
    targets = [n for n in ("query", "key", "value", "dense") if any(n in m for m, _ in encoder.named_modules())]
    config = peft.LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=dropout, target_modules=targets,
                             bias="none")
    return peft.get_peft_model(encoder, config)


_REPORT_ROW = re.compile(r"^(\S+)\s*\|\s*(MISSING|UNEXPECTED|MISMATCH)", re.MULTILINE)


class _UnusedPoolerReport(logging.Filter):
    """Drops transformers' load report when all it lists is the checkpoint's pooler, left out on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = _REPORT_ROW.findall(message)
        return not rows or not all(key.startswith("pooler.") and status == "UNEXPECTED" for key, status in rows)


@contextmanager
def _quiet_unused_pooler():
    logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _UnusedPoolerReport()
    logger.addFilter(report_filter)
    try:
        yield
    finally:
        logger.removeFilter(report_filter)


def load_encoder(path: str | Path) -> nn.Module:
    """The bare encoder (no pooler: mean pooling does not use it, so the checkpoint's pooler is not reported)."""
    config = AutoConfig.from_pretrained(path)
    if config.model_type in ("bert", "roberta", "xlm-roberta", "camembert"):
        with _quiet_unused_pooler():
            return AutoModel.from_pretrained(path, add_pooling_layer=False)
    return AutoModel.from_pretrained(path)


def build_classifier(base: str, num_labels: int, problem_type: str, *, pooling: str = "cls",
                     labels: list[str] | None = None, dropout: float = 0.1, lora_r: int = 0,
                     lora_alpha: int | None = None, freeze_embeddings: bool = False):
    """A fresh classifier and its tokenizer on ``base`` (hub name, local path or offline base name)."""
    if pooling not in POOLINGS:
        raise ModelError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    path = resolve_base(base)
    labels = list(labels or [str(i) for i in range(num_labels)])
    id2label = dict(enumerate(labels))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if pooling == "cls":
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, problem_type=problem_type, id2label=id2label,
                label2id={v: k for k, v in id2label.items()})
            encoder = getattr(model, model.base_model_prefix)
        else:
            encoder = load_encoder(path)
    except OSError as exc:
        raise ModelError(f"cannot load base model {base!r}: {exc}. A hub name needs internet; offline, pass a "
                         "local path or run `reviewlens base prepare multilingual-e5-small`.") from exc
    if freeze_embeddings:
        encoder.get_input_embeddings().weight.requires_grad_(False)
    head = HeadConfig(num_labels, problem_type, pooling, dropout, labels, base, lora=lora_r > 0,
                      marker_id=keyword_marker_id(tokenizer) if pooling == "mean_keyword" else None)
    if pooling == "cls":
        if lora_r:
            raise ModelError("LoRA is supported with pooling 'mean' (the adapter-over-base bundle layout)")
        model.head_config = head
        return model, tokenizer
    if lora_r:
        encoder = _apply_lora(encoder, lora_r, lora_alpha, dropout)
    encoder.config.problem_type = problem_type
    return MeanPoolingClassifier(encoder, head), tokenizer


def save_classifier(model: nn.Module, tokenizer, directory: str | Path) -> None:
    """Write a classifier and its tokenizer into ``directory`` (which must exist)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    head: HeadConfig = getattr(model, "head_config")
    if not head.lora:  # an adapter-over-base model reads the base's tokenizer (17 MB for e5) from the base
        tokenizer.save_pretrained(directory)
    if isinstance(model, MeanPoolingClassifier):
        if head.lora:
            model.encoder.save_pretrained(directory / "adapter")
        else:
            model.encoder.save_pretrained(directory)
        save_file(model.head_state_dict(), str(directory / "head.safetensors"))
    else:
        model.save_pretrained(directory)
    (directory / HEAD_FILE).write_text(json.dumps(asdict(head), ensure_ascii=False, indent=2), encoding="utf-8")


def load_classifier(directory: str | Path, device: str | torch.device = "cpu"):
    """Load a classifier written by ``save_classifier``; returns (model in eval mode, tokenizer)."""
    directory = Path(directory)
    head = _saved_head(directory)
    tokenizer = AutoTokenizer.from_pretrained(resolve_base(head.base) if head.lora else directory)
    if head.pooling == "cls":
        model = AutoModelForSequenceClassification.from_pretrained(directory)
    else:
        if head.lora:
            peft = require("peft", "peft")
            base = load_encoder(resolve_base(head.base))
            encoder = peft.PeftModel.from_pretrained(base, directory / "adapter").merge_and_unload()
            head.lora = False  # merged: from here on it is a full model, saved as full weights
        else:
            encoder = load_encoder(directory)
        model = MeanPoolingClassifier(encoder, head)
        _load_head_state(model, directory, optional={"feature_mean", "feature_scale"})
    model.head_config = head
    return model.to(device).eval(), tokenizer


def init_classifier(model: nn.Module, directory: str | Path) -> None:
    """Copy the weights of a classifier saved by ``save_classifier`` into a freshly built, trainable ``model``
    of the same shape (warm start). LoRA adapters stay adapters, so training goes on where it stopped; the head
    keeps the feature statistics it was trained with."""
    directory = Path(directory)
    saved = _saved_head(directory)
    head: HeadConfig = model.head_config
    for name in ("problem_type", "pooling", "labels", "lora"):
        if getattr(saved, name) != getattr(head, name):
            raise ModelError(f"{directory}: cannot warm-start from it: its {name} is {getattr(saved, name)!r}, "
                             f"this training's is {getattr(head, name)!r}")
    if head.pooling == "cls":
        model.load_state_dict(AutoModelForSequenceClassification.from_pretrained(directory).state_dict())
        return
    if head.lora:
        from safetensors.torch import load_file

        peft = require("peft", "peft")
        adapter = load_file(str(directory / "adapter" / "adapter_model.safetensors"))
        result = peft.set_peft_model_state_dict(model.encoder, adapter)
        if result.unexpected_keys:
            raise ModelError(f"{directory}/adapter does not fit this model: unexpected {result.unexpected_keys[:5]}")
    else:
        model.encoder.load_state_dict(load_encoder(directory).state_dict())
    _load_head_state(model, directory)


def _saved_head(directory: Path) -> HeadConfig:
    """The ``HeadConfig`` that ``save_classifier`` wrote into ``directory``."""
    head_file = directory / HEAD_FILE
    if not head_file.exists():
        raise ModelError(f"{directory}: not a reviewlens classifier directory ({HEAD_FILE} is missing)")
    return HeadConfig(**json.loads(head_file.read_text(encoding="utf-8")))


def _load_head_state(model: "MeanPoolingClassifier", directory: Path, optional: set[str] = frozenset()) -> None:
    """Load ``directory/head.safetensors`` into ``model``'s head; only the ``optional`` tensors may be absent."""
    from safetensors.torch import load_file

    state = load_file(str(directory / "head.safetensors"))
    missing = set(model.head_state_dict()) - set(state) - set(optional)
    if missing:
        raise ModelError(f"{directory}/head.safetensors lacks {sorted(missing)}")
    model.load_state_dict(state, strict=False)


def max_input_length(model: nn.Module, tokenizer, cap: int = 512) -> int:
    """The longest input the model takes: position embeddings (less RoBERTa's offset) and the tokenizer's limit."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", cap) or cap
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2
    tok_limit = getattr(tokenizer, "model_max_length", limit) or limit
    return int(min(limit, tok_limit if tok_limit < 1e6 else limit, cap))
