"""Smaller and faster bundles: ONNX export, int8 quantization, distillation and pruning.

``compress(model, output, CompressConfig(...))`` reads a torch bundle and writes a new bundle that
``ReviewAnalyzer.from_pretrained`` loads like any other. The steps run in this order, each optional:

1. trim the vocabulary to the pieces of the training corpus (``distill.trim_vocabulary``);
2. distil into a student with fewer layers (``distill.make_student`` + ``distill.distill_model``);
3. prune attention heads and recover with a short distillation from the unpruned model (``prune``);
4. export to ONNX (``onnx.export_classifier``) and quantize the weights to int8 (``quantize``).

The new bundle's reviewlens.json records what was done, its on-disk size, and (given labeled
``eval_data``) its pipeline F1 next to the source bundle's F1 on the same data.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..bundle import ModelBundle, resolve_bundle_path
from ..errors import ModelError, ReviewlensError

logger = logging.getLogger(__name__)

__all__ = ["CompressConfig", "compress", "bundle_size", "evaluate_against"]

MODELS = ("keyword", "sentiment")
"""The two models of a bundle, in the order they are compressed (``scoring.KEYWORD``, ``scoring.SENTIMENT``)."""


@dataclass
class CompressConfig:
    """What to do to a bundle; the defaults export nothing, so set at least one step."""

    onnx: bool = False
    int8: bool = False
    per_channel: bool = True
    quantize_embeddings: bool = False
    keep_ffn_output: bool = False
    distill: bool = False
    student_layers: int = 4
    # which models --distill shrinks; the others keep their layers (and still get --trim-vocab, ONNX, int8).
    # Plain analyze runs the sentiment model once per predicted keyword, and a distilled keyword model loses
    # the most accuracy, so a sentiment-only student keeps the keyword model's accuracy and most of the plain
    # speed (with clause-scoped highlights, the keyword model's occlusion is then most of the highlight cost).
    student_models: tuple[str, ...] = MODELS
    trim_vocab: bool = False
    prune: float = 0.0
    epochs: float = 3.0
    max_steps: int | None = None
    recovery_steps: int = 300
    learning_rate: float = 5e-4  # 4-layer keyword student, dev F1: 0.754 at 2e-4 / 1,500 steps, 0.800 at 5e-4 / 3,000
    recovery_learning_rate: float = 1e-4  # after pruning the model is still close to the teacher
    augment: int = 0
    batch_size: int = 32
    temperature: float = 2.0
    max_texts: int = 20000
    seed: int = 42

    def __post_init__(self) -> None:
        if self.int8 or self.prune:
            self.onnx = True  # int8 runs in onnxruntime; pruned head counts only fit an ONNX graph
        if not (self.onnx or self.distill or self.trim_vocab):
            raise ReviewlensError("nothing to do: choose at least one of --onnx, --int8, --distill, --trim-vocab, "
                                  "--prune")
        unknown = sorted(set(self.student_models) - set(MODELS))
        if unknown or not self.student_models:
            raise ReviewlensError(f"--student-models takes keyword and/or sentiment, not {', '.join(unknown) or 'none'}")
        self.student_models = tuple(m for m in MODELS if m in self.student_models)
        if self.augment < 0:
            raise ReviewlensError(f"--augment must be a count of texts (0 or more), not {self.augment}")
        if self.prune and not 0.0 < self.prune < 1.0:
            raise ReviewlensError(f"--prune must be a ratio between 0 and 1 (e.g. 0.25), not {self.prune}")

    @property
    def needs_texts(self) -> bool:
        return self.distill or self.trim_vocab or self.prune > 0

    @property
    def variant(self) -> str:
        """A short name, e.g. ``student4-trim-onnx-int8``."""
        parts = []
        if self.distill:
            only = "" if self.student_models == MODELS else f"-{self.student_models[0]}"
            parts.append(f"student{self.student_layers}{only}")
        if self.trim_vocab:
            parts.append("trim")
        if self.prune:
            parts.append(f"prune{int(round(self.prune * 100))}")
        if self.onnx:
            parts.append("onnx")
        parts.append("int8" if self.int8 else "fp32")
        if self.int8 and self.quantize_embeddings:
            parts.append("emb")
        if self.int8 and self.keep_ffn_output:
            parts.append("ffn32")
        return "-".join(parts)


def _corpus(train_data, unlabeled, max_texts: int, seed: int) -> list[str]:
    """The distillation / trimming texts: training texts plus unlabeled reviews, deduplicated and capped."""
    from ..data import read_texts

    texts: list[str] = []
    for path in (train_data, unlabeled):
        if path is not None:
            texts += read_texts(path, skip_bad_rows=True)[1]
    texts = list(dict.fromkeys(t for t in texts if t.strip()))
    if len(texts) > max_texts:
        rng = np.random.default_rng(seed)
        texts = [texts[i] for i in sorted(rng.choice(len(texts), max_texts, replace=False))]
    return texts


def _sentiment_inputs(scorer, texts: list[str], bundle: ModelBundle) -> list[str]:
    """Templated (review, keyword) inputs: each review with its predicted keywords, or its most likely one."""
    from ..calibration import apply_thresholds
    from ..tasks import SENTIMENT_TEMPLATE, sentiment_input

    keywords = bundle.schema.keywords
    probs = scorer.keyword_probs(texts)
    chosen = apply_thresholds(probs, keywords, bundle.thresholds)
    chosen[np.arange(len(texts)), probs.argmax(axis=1)] = True
    template = bundle.templates.get("sentiment", SENTIMENT_TEMPLATE)
    return [sentiment_input(texts[i], keywords[k], template) for i in range(len(texts)) for k in np.flatnonzero(chosen[i])]


def _directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def bundle_size(path: str | Path) -> dict:
    """On-disk bytes of a bundle; an adapter-over-base bundle also counts its base model's weights (once)."""
    import json

    from ..modeling import HEAD_FILE, resolve_base

    path = Path(path)
    out = {"bundle_bytes": _directory_bytes(path), "base_bytes": 0}
    bases = set()
    for sub in MODELS:
        head_file = path / sub / HEAD_FILE
        if head_file.is_file():
            head = json.loads(head_file.read_text(encoding="utf-8"))
            if head.get("lora") and head.get("base"):
                bases.add(head["base"])
    for base in sorted(bases):
        folder = Path(resolve_base(base))
        if folder.is_dir():
            out["base_bytes"] += sum(f.stat().st_size for f in folder.iterdir()
                                     if f.suffix in (".safetensors", ".bin") and f.is_file())
    out["total_bytes"] = out["bundle_bytes"] + out["base_bytes"]
    return out


def evaluate_against(analyzer, eval_data) -> dict:
    """The headline metrics of ``analyzer`` on labeled ``eval_data``."""
    from ..evaluation import evaluate_bundle

    return evaluate_bundle(None, eval_data, analyzer=analyzer).summary()


def compress(model: str | Path | None, output: str | Path, config: CompressConfig, *, train_data=None,
             unlabeled=None, eval_data=None, reference: dict | None = None,
             threads: int | None = None) -> ModelBundle:
    """Write a compressed copy of the torch bundle ``model`` to ``output``; returns the new bundle.

    With labeled ``eval_data`` both the new and the source bundle are evaluated on it; pass the source's
    ``evaluate_against`` metrics on the same data as ``reference`` to skip its evaluation.
    """
    import torch

    from ..analyzer import ReviewAnalyzer
    from ..modeling import load_classifier, max_input_length, save_classifier
    from ..scoring import KEYWORD, SENTIMENT, TorchScorer
    from ..tasks import SENTIMENT_TEMPLATE
    from .augment import augment_texts
    from .distill import (DistillSettings, apply_trimmed_vocabulary, distill_model, make_student, refit_normalizer,
                          trim_vocabulary)
    from .onnx import export_classifier
    from .prune import count_parameters, prune_by_importance
    from .quantize import quantize_directory

    source = ModelBundle.load(resolve_bundle_path(model))
    if source.kind != "classifier":
        raise ModelError(f"{source.path}: only classifier bundles can be compressed (this one is {source.kind!r})")
    if source.backend != "torch":
        raise ModelError(f"{source.path}: this bundle is already compressed ({source.backend}); compress the torch "
                         "bundle it was made from")
    output = Path(output)
    if output.resolve() == Path(source.path).resolve():
        raise ReviewlensError(f"--output {output} is the source bundle; write the compressed bundle elsewhere")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    started = time.perf_counter()

    texts = _corpus(train_data, unlabeled, config.max_texts, config.seed) if config.needs_texts else []
    if config.needs_texts and not texts:
        raise ReviewlensError("--distill, --trim-vocab and --prune learn from reviews: pass --train-data FILE "
                              "(the texts the bundle was trained on) and optionally --unlabeled FILE")
    template = source.templates.get("sentiment", SENTIMENT_TEMPLATE)
    loaded = {which: load_classifier(source.path / which) for which in (KEYWORD, SENTIMENT)}
    teacher = TorchScorer(*loaded[KEYWORD], *loaded[SENTIMENT], template=template)
    if texts and config.augment:
        texts += augment_texts(texts, config.augment, teacher.mask_token(KEYWORD), seed=config.seed)
    inputs = {}
    if texts:
        inputs = {KEYWORD: texts, SENTIMENT: _sentiment_inputs(teacher, texts, source)}
    settings = DistillSettings(epochs=config.epochs, max_steps=config.max_steps, learning_rate=config.learning_rate,
                               batch_size=config.batch_size, temperature=config.temperature, seed=config.seed)

    steps: dict[str, dict] = {}
    final: dict[str, tuple] = {}
    for which in (KEYWORD, SENTIMENT):
        model_, tokenizer = loaded[which]
        problem_type = model_.head_config.problem_type
        record: dict = {"params_before": count_parameters(model_)}
        settings.max_length = max_input_length(model_, tokenizer)
        distill_this = config.distill and which in config.student_models
        teacher_logits = teacher.logits(which, inputs[which]) if inputs and (distill_this or config.prune) else None
        if config.needs_texts:
            model_ = copy.deepcopy(model_)  # the teacher stays intact for soft labels and the F1 comparison
        if config.trim_vocab:
            trimmed = trim_vocabulary(tokenizer, inputs[which])
            apply_trimmed_vocabulary(model_, trimmed)
            tokenizer = trimmed.tokenizer
            record["vocabulary"] = {"before": trimmed.original_size, "after": trimmed.size}
        if distill_this:
            model_ = make_student(model_, config.student_layers)
            record["student_layers"] = config.student_layers
            record["normalizer_refit"] = refit_normalizer(model_, tokenizer, inputs[which], settings.max_length)
            record["distillation"] = distill_model(model_, tokenizer, inputs[which], teacher_logits, problem_type,
                                                   settings, desc=f"distill {which}")
        if config.prune:
            record["pruning"] = prune_by_importance(model_, tokenizer, inputs[which], problem_type, config.prune,
                                                    max_length=settings.max_length)
            recovery = DistillSettings(**{**asdict(settings), "epochs": 1e9, "max_steps": config.recovery_steps,
                                          "learning_rate": config.recovery_learning_rate})
            record["recovery"] = distill_model(model_, tokenizer, inputs[which], teacher_logits, problem_type,
                                               recovery, desc=f"recover {which}")
        record["params_after"] = count_parameters(model_)
        steps[which] = record
        final[which] = (model_, tokenizer)

    def writer(which: str):
        model_, tokenizer = final[which]

        def write(directory: Path) -> None:
            if config.onnx:
                export_classifier(model_, tokenizer, directory, extra_info={"steps": steps[which]})
                if config.int8:
                    quantize_directory(directory, per_channel=config.per_channel,
                                       embeddings=config.quantize_embeddings, keep_ffn_output=config.keep_ffn_output)
            else:
                save_classifier(model_, tokenizer, directory)
        return write

    run_config = {**asdict(config), "source": str(source.path), "train_data": str(train_data) if train_data else None,
                  "unlabeled": str(unlabeled) if unlabeled else None, "corpus_texts": len(texts)}
    bundle = ModelBundle(schema=source.schema, thresholds=dict(source.thresholds), clause_weight=source.clause_weight,
                         templates=dict(source.templates),
                         base_model=source.base_model, kind="classifier", backend="onnx" if config.onnx else "torch",
                         metrics={"source": source.metrics}, data_hash=source.data_hash,
                         config={**source.config, "compress": run_config})
    bundle.save(output, {KEYWORD: writer(KEYWORD), SENTIMENT: writer(SENTIMENT)})

    size, source_size = bundle_size(output), bundle_size(source.path)
    summary = {"variant": config.variant, "steps": steps, "size_bytes": size["total_bytes"], "size": size,
               "source_size_bytes": source_size["total_bytes"],
               "size_ratio": round(size["total_bytes"] / max(1, source_size["total_bytes"]), 4),
               "seconds": round(time.perf_counter() - started, 1), "f1": None}
    if eval_data is not None:
        compressed = ReviewAnalyzer.from_pretrained(output)
        got = evaluate_against(compressed, eval_data)
        reference = reference or evaluate_against(ReviewAnalyzer(source, teacher), eval_data)
        summary.update({"eval_data": Path(eval_data).name, "f1": got["pipeline_f1"], "eval": got,
                        "source_f1": reference["pipeline_f1"],
                        "f1_loss_points": round(100 * (reference["pipeline_f1"] - got["pipeline_f1"]), 3)})
    else:
        logger.warning("no --eval-data: the compressed bundle's F1 was not measured")
    bundle.metrics["compression"] = summary
    bundle.write_manifest()
    return bundle
