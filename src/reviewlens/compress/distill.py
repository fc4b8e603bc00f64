"""Smaller students: vocabulary trimming, layer dropping and knowledge distillation from the teacher.

* ``trim_vocabulary`` keeps the word pieces that occur when the training corpus is tokenised (plus the
  special tokens and the single-character pieces of the corpus's main scripts, so unseen words fall
  back to characters rather than to ``<unk>``), slices the embedding matrix and writes a tokenizer
  whose vocabulary holds only the kept pieces. For the 250k-piece multilingual vocabulary of e5 the
  embedding table is most of the parameters.
* ``make_student`` keeps ``num_layers`` evenly spaced encoder layers of the teacher (initialising the
  student from the teacher's own weights, as DistilBERT does).
* ``distill_model`` trains a classifier on the teacher's soft labels (sigmoid probabilities for the
  multi-label keyword model, softmax distributions at temperature T for the sentiment model).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ModelError, ReviewlensError
from ..modeling import MULTI_LABEL
from .onnx import encoder_of

logger = logging.getLogger(__name__)

SCRIPT_SHARE = 0.01
"""A script whose characters are at least this share of the corpus keeps all its single-character pieces."""


# -- vocabulary trimming ------------------------------------------------------------------------------------


@dataclass
class TrimmedVocabulary:
    """The result of trimming: the new tokenizer and, for each new id, the old id."""

    tokenizer: object
    kept_ids: list[int]
    original_size: int

    @property
    def size(self) -> int:
        return len(self.kept_ids)


def _script(char: str) -> str:
    """The first word of a character's Unicode name ('HANGUL', 'LATIN', 'CJK', 'DIGIT', ...)."""
    return unicodedata.name(char, "?").split(" ")[0]


def _main_scripts(texts: Iterable[str]) -> set[str]:
    counts = Counter(_script(c) for text in texts for c in text if not c.isspace())
    total = sum(counts.values()) or 1
    return {script for script, n in counts.items() if n / total >= SCRIPT_SHARE}


def _remap_post_processor(node, new_id) -> None:
    """Rewrite the special-token ids inside a tokenizers post-processor (in place)."""
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "TemplateProcessing":
        for special in node.get("special_tokens", {}).values():
            special["ids"] = [new_id(i) for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            token, old = node[key]
            node[key] = [token, new_id(old)]
    elif kind == "Sequence":
        for child in node.get("processors", []):
            _remap_post_processor(child, new_id)


def trim_vocabulary(tokenizer, texts: Sequence[str]) -> TrimmedVocabulary:
    """A tokenizer keeping only the pieces seen in ``texts`` (and specials and main-script characters).

    Supports fast tokenizers with a Unigram (SentencePiece, e.g. XLM-R / e5) or WordPiece (BERT) model.
    Every text of the corpus tokenises to the same pieces as before, with the ids remapped.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("vocabulary trimming needs a fast (tokenizers) tokenizer")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    kind = model.get("type")
    if kind == "Unigram":
        pieces = [piece for piece, _ in model["vocab"]]
    elif kind == "WordPiece":
        pieces = [None] * len(model["vocab"])
        for piece, i in model["vocab"].items():
            pieces[i] = piece
    else:
        raise ModelError(f"vocabulary trimming supports Unigram and WordPiece tokenizers, not {kind}; "
                         "compress without --trim-vocab")
    texts = list(texts)
    if not texts:
        raise ReviewlensError("vocabulary trimming needs the training texts (pass --train-data)")

    keep = {t["id"] for t in spec.get("added_tokens", [])}
    keep.update(i for i in tokenizer.all_special_ids if i is not None)
    for start in range(0, len(texts), 1000):
        for ids in tokenizer(texts[start:start + 1000], add_special_tokens=True)["input_ids"]:
            keep.update(ids)
    scripts = _main_scripts(texts)
    for i, piece in enumerate(pieces):
        if piece is None:
            continue
        bare = piece.lstrip("\u2581") if kind == "Unigram" else piece.removeprefix("##")
        if len(bare) == 1 and _script(bare) in scripts:
            keep.add(i)
    kept = sorted(i for i in keep if i < len(pieces))
    index = {old: new for new, old in enumerate(kept)}

    def new_id(old: int) -> int:
        return index[old]

    if kind == "Unigram":
        model["vocab"] = [model["vocab"][i] for i in kept]
        model["unk_id"] = new_id(model["unk_id"]) if model.get("unk_id") is not None else None
    else:
        model["vocab"] = {pieces[i]: new_id(i) for i in kept}
    for token in spec.get("added_tokens", []):
        token["id"] = new_id(token["id"])
    _remap_post_processor(spec.get("post_processor"), new_id)

    specials = {name: getattr(tokenizer, name) for name in
                ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
                if getattr(tokenizer, name, None) is not None}
    trimmed = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                      model_max_length=tokenizer.model_max_length, **specials)
    trimmed.padding_side = tokenizer.padding_side
    _check_trim(tokenizer, trimmed, texts[:200], index)
    return TrimmedVocabulary(trimmed, kept, len(pieces))


def _check_trim(old, new, texts: list[str], index: dict[int, int]) -> None:
    """The trimmed tokenizer must reproduce the old ids (remapped) on corpus texts, masks included."""
    mask = old.mask_token or old.unk_token
    samples = list(texts) + ([f"{texts[0]} {mask} {texts[-1]}"] if texts and mask else [])
    for text in samples:
        before = [index.get(i, -1) for i in old(text)["input_ids"]]
        after = new(text)["input_ids"]
        if before != after:
            raise ModelError(f"vocabulary trimming changed the tokenisation of {text[:60]!r}: {before} -> {after}")


def apply_trimmed_vocabulary(model, trimmed: TrimmedVocabulary) -> None:
    """Slice the classifier's word-embedding matrix to the kept ids and fix the special ids in its config."""
    import torch

    encoder = encoder_of(model)
    old = encoder.get_input_embeddings()
    kept = torch.tensor(trimmed.kept_ids, dtype=torch.long)
    config = encoder.config
    index = {old_id: new for new, old_id in enumerate(trimmed.kept_ids)}
    pad = index.get(config.pad_token_id) if config.pad_token_id is not None else None
    new = torch.nn.Embedding(len(trimmed.kept_ids), old.embedding_dim, padding_idx=pad)
    new.weight.data.copy_(old.weight.data[kept])
    encoder.set_input_embeddings(new)
    config.vocab_size = len(trimmed.kept_ids)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(config, name, None)
        if value is not None:
            setattr(config, name, index.get(value))
    if model.config is not config and hasattr(model.config, "vocab_size"):  # ...ForSequenceClassification
        model.config.vocab_size = config.vocab_size
    head = getattr(model, "head_config", None)
    if head is not None and getattr(head, "marker_id", None) is not None:  # mean_keyword pooling
        if head.marker_id not in index:
            raise ModelError(f"vocabulary trimming dropped the keyword marker piece {head.marker_id}")
        head.marker_id = index[head.marker_id]


# -- students -----------------------------------------------------------------------------------------------


def student_layer_indices(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers, always including the first and the last."""
    if not 1 <= student_layers <= teacher_layers:
        raise ReviewlensError(f"--student-layers must be between 1 and the teacher's {teacher_layers} layers, "
                              f"not {student_layers}")
    if student_layers == 1:
        return [teacher_layers - 1]
    return sorted({int(round(x)) for x in np.linspace(0, teacher_layers - 1, student_layers)})


def make_student(teacher, num_layers: int):
    """A copy of ``teacher`` keeping ``num_layers`` evenly spaced encoder layers."""
    import torch

    student = copy.deepcopy(teacher)
    encoder = encoder_of(student)
    layers = encoder.encoder.layer
    keep = student_layer_indices(len(layers), num_layers)
    encoder.encoder.layer = torch.nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(encoder.encoder.layer):  # layer_idx is read by caches; keep it consistent
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    encoder.config.num_hidden_layers = len(keep)
    if student.config is not encoder.config:
        student.config.num_hidden_layers = len(keep)
    return student


def refit_normalizer(model, tokenizer, texts: Sequence[str], max_length: int, *, max_texts: int = 512,
                     batch_size: int = 32) -> bool:
    """Re-measure a mean-pooling head's feature standardisation on the student's own features.

    Dropping layers changes the scale of the pooled features; re-standardising them gives the copied
    head inputs of the scale it was trained on, a better start for distillation. False if the model has
    no such normaliser.
    """
    if not hasattr(model, "fit_normalizer"):
        return False
    texts = list(texts)[:max_texts]
    batches = [tokenizer(texts[i:i + batch_size], truncation=True, max_length=max_length, padding=True,
                         return_tensors="pt") for i in range(0, len(texts), batch_size)]
    model.fit_normalizer([{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]} for b in batches])
    return True


# -- distillation -------------------------------------------------------------------------------------------


@dataclass
class DistillSettings:
    """How long and how hard to train a student on the teacher's soft labels."""

    epochs: float = 3.0
    max_steps: int | None = None
    learning_rate: float = 1e-4
    batch_size: int = 32
    temperature: float = 2.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 256
    seed: int = 42


def distillation_loss(student_logits, teacher_logits, problem_type: str, temperature: float):
    """Soft-label loss: BCE on sigmoid targets (multi-label) or KL on softmax targets (single-label), times T²."""
    import torch
    import torch.nn.functional as F

    t = temperature
    if problem_type == MULTI_LABEL:
        targets = torch.sigmoid(teacher_logits / t)
        loss = F.binary_cross_entropy_with_logits(student_logits / t, targets)
    else:
        loss = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.softmax(teacher_logits / t, dim=-1),
                        reduction="batchmean")
    return loss * t * t


def _length_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of similar length (little padding), in a shuffled order."""
    order = np.argsort(np.asarray(lengths) + rng.random(len(lengths)), kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def distill_model(student, tokenizer, texts: Sequence[str], teacher_logits: np.ndarray, problem_type: str,
                  settings: DistillSettings, *, desc: str = "distill") -> dict:
    """Train ``student`` (in place) to match ``teacher_logits`` on ``texts``; returns a training summary."""
    import torch
    from tqdm import tqdm

    if len(texts) != len(teacher_logits):
        raise ValueError(f"{len(texts)} texts but {len(teacher_logits)} teacher rows")
    if not len(texts):
        raise ReviewlensError("distillation needs texts (pass --train-data and/or --unlabeled)")
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    encoded = tokenizer(list(texts), truncation=True, max_length=settings.max_length)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches_per_epoch = math.ceil(len(texts) / settings.batch_size)
    total = int(math.ceil(settings.epochs * batches_per_epoch))
    if settings.max_steps is not None:
        total = min(total, int(settings.max_steps))
    total = max(total, 1)
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.learning_rate)
    warmup = max(1, int(settings.warmup_ratio * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup))))
    targets_all = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32))
    student.train()
    step, losses = 0, []
    progress = tqdm(total=total, desc=desc, unit="step", leave=False)
    try:
        while step < total:
            for batch in _length_batches(lengths, settings.batch_size, rng):
                if step >= total:
                    break
                width = max(lengths[i] for i in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, :lengths[i]] = torch.tensor(encoded[i])
                    attention[row, :lengths[i]] = 1
                logits = student(input_ids=input_ids, attention_mask=attention).logits
                loss = distillation_loss(logits, targets_all[batch], problem_type, settings.temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                step += 1
                progress.update(1)
                if step % 20 == 0:
                    progress.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    finally:
        progress.close()
        student.eval()
    return {"steps": step, "examples": len(texts), "first_loss": round(float(np.mean(losses[:10])), 5),
            "last_loss": round(float(np.mean(losses[-10:])), 5)}
