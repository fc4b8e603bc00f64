"""ONNX export of a bundle's classifiers, and the onnxruntime scorer that runs them.

A compressed model directory holds ``model.onnx`` (inputs ``input_ids`` and ``attention_mask`` with
dynamic batch and sequence axes, output ``logits``), the tokenizer, ``head.json`` (labels, problem type)
and ``onnx.json`` (max input length, encoder shape, what was done to the graph). ``OnnxScorer`` is a
``BatchedScorer``: tokenising, length sorting and padding are the torch scorer's, so keywords,
sentiment and occlusion highlights work the same on both backends.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import ModelError, require
from ..scoring import KEYWORD, SENTIMENT, BatchedScorer
from ..tasks import SENTIMENT_TEMPLATE

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ONNX_INFO = "onnx.json"
OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask")
EXPORT_TOLERANCE = 1e-3
"""Largest |logit| difference between torch and onnxruntime accepted after export and graph fusion."""

_FUSABLE = ("bert", "roberta", "xlm-roberta", "camembert")
_CHECK_TEXTS = ["옷은 예쁘지만 배송은 늦어요", "색이 정말 이뻐요 가격도 싸고 배송도 빨라서 다음에 또 살게요", "좋아요"]


def encoder_of(model):
    """The transformer encoder inside a classifier (mean pooling wrapper or a ...ForSequenceClassification)."""
    if hasattr(model, "encoder") and hasattr(model, "classifier") and hasattr(model.encoder, "config"):
        return model.encoder  # MeanPoolingClassifier
    return getattr(model, model.base_model_prefix)


def encoder_shape(model) -> dict:
    """Layers, hidden size, heads (after any pruning), FFN width and vocabulary of a classifier's encoder."""
    encoder = encoder_of(model)
    config = encoder.config
    layers = encoder.encoder.layer if hasattr(encoder, "encoder") else []
    heads = [int(layer.attention.self.query.out_features // _head_dim(config)) for layer in layers]
    return {"model_type": config.model_type, "num_layers": len(layers) or config.num_hidden_layers,
            "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
            "heads_per_layer": heads or [config.num_attention_heads] * config.num_hidden_layers,
            "head_dim": _head_dim(config), "vocab_size": encoder.get_input_embeddings().num_embeddings}


def _head_dim(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _logits_only(model):
    """``model`` as a module mapping ``(input_ids, attention_mask)`` to logits, for the exporter."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    return LogitsOnly(model).eval()


def export_classifier(model, tokenizer, directory: str | Path, *, max_length: int | None = None,
                      optimize: bool = True, opset: int = OPSET, extra_info: Mapping | None = None) -> dict:
    """Export a classifier into ``directory``: model.onnx, tokenizer, head.json and onnx.json.

    The encoder is exported with eager attention, whose graph onnxruntime's transformer optimizer
    fuses into ``Attention``/``SkipLayerNormalization``/``BiasGelu`` kernels; the fused graph is kept
    only when it reproduces torch's logits within ``EXPORT_TOLERANCE`` (the unfused one otherwise).
    Returns the onnx.json dict.
    """
    import torch

    from ..modeling import HEAD_FILE, max_input_length

    require("onnx", "onnx")
    ort = require("onnxruntime", "onnx")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    encoder = encoder_of(model)
    previous_attention = encoder.config._attn_implementation
    encoder.set_attn_implementation("eager")
    try:
        wrapper = _logits_only(model)
        sample = tokenizer(_CHECK_TEXTS, padding=True, return_tensors="pt")  # padded, so the mask path is traced
        raw = directory / "model.raw.onnx"
        with torch.no_grad(), _quiet_export():
            torch.onnx.export(
                wrapper, (sample["input_ids"], sample["attention_mask"]), str(raw),
                input_names=list(INPUT_NAMES), output_names=["logits"], opset_version=opset, dynamo=False,
                dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                              "logits": {0: "batch"}})
        check = tokenizer(_CHECK_TEXTS[::-1] + ["배송"], padding=True, return_tensors="np")
        feeds = {name: check[name].astype(np.int64) for name in INPUT_NAMES}
        with torch.inference_mode():
            expected = wrapper(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy()
    finally:
        encoder.set_attn_implementation(previous_attention)

    shape = encoder_shape(model)
    fused: dict[str, int] = {}
    target = directory / ONNX_FILE
    if optimize and shape["model_type"] in _FUSABLE:
        fused = _fuse(raw, target, shape)
        if fused and _max_diff(ort, target, feeds, expected) > EXPORT_TOLERANCE:
            logger.warning("the fused ONNX graph differs from torch; keeping the unfused graph")
            fused = {}
    if not fused:
        os.replace(raw, target)
    else:
        raw.unlink()
    diff = _max_diff(ort, target, feeds, expected)
    if diff > EXPORT_TOLERANCE:
        raise ModelError(f"{target}: onnxruntime logits differ from torch by {diff:.2e} (> {EXPORT_TOLERANCE}); "
                         "this model cannot be exported faithfully, keep the torch bundle")

    tokenizer.save_pretrained(directory)
    head = getattr(model, "head_config")
    (directory / HEAD_FILE).write_text(json.dumps({**asdict(head), "lora": False}, ensure_ascii=False, indent=2),
                                       encoding="utf-8")
    info = {"opset": opset, "inputs": list(INPUT_NAMES), "num_labels": int(head.num_labels),
            "max_length": int(max_length or max_input_length(model, tokenizer)), "encoder": shape,
            "fused_operators": fused, "export_max_abs_diff": float(diff), "quantization": None,
            **dict(extra_info or {})}
    write_info(directory, info)
    return info


def _fuse(source: Path, target: Path, shape: dict) -> dict[str, int]:
    """Run onnxruntime's BERT fusions; returns the fused operator counts (empty when nothing fused)."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError:  # pragma: no cover - depends on the onnxruntime build
        return {}
    heads = set(shape["heads_per_layer"])
    num_heads = heads.pop() if len(heads) == 1 else 0
    hidden = num_heads * shape["head_dim"] if num_heads else 0
    try:
        with quiet_onnxruntime_tools():
            optimized = optimize_model(str(source), model_type="bert", num_heads=num_heads, hidden_size=hidden)
            stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
            if not stats:
                return {}
            optimized.save_model_to_file(str(target))
    except Exception as exc:  # noqa: BLE001 - a fusion failure only costs speed
        logger.warning("onnxruntime graph fusion failed (%s); keeping the unfused graph", exc)
        return {}
    return stats


def _max_diff(ort, path: Path, feeds: dict, expected: np.ndarray) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], feeds)[0]
    return float(np.abs(got - expected).max())


@contextmanager
def _quiet_export():
    """Silence the exporter's tracer warnings (data-dependent branches that are constant for encoders)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextmanager
def quiet_onnxruntime_tools(level: int = logging.INFO):
    """onnxruntime's optimizer and quantizer log every step at INFO, some on the root logger; hide that."""
    previous = logging.root.manager.disable
    logging.disable(max(previous, level))
    try:
        yield
    finally:
        logging.disable(previous)


def read_info(directory: str | Path) -> dict:
    """The onnx.json of an exported model directory."""
    path = Path(directory) / ONNX_INFO
    if not path.is_file():
        raise ModelError(f"{directory}: no {ONNX_INFO}; this is not an ONNX model directory written by "
                         "`reviewlens compress --onnx`")
    return json.loads(path.read_text(encoding="utf-8"))


def write_info(directory: str | Path, info: Mapping) -> None:
    """Write onnx.json atomically."""
    from ..data import atomic_write_text

    atomic_write_text(Path(directory) / ONNX_INFO, json.dumps(dict(info), ensure_ascii=False, indent=2))


def session_options(threads: int | None = None):
    """onnxruntime session options: all graph optimisations, ``threads`` intra-op threads (None: ORT's default)."""
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


class OnnxScorer(BatchedScorer):
    """Runs the two exported classifiers with onnxruntime."""

    def __init__(self, sessions: Mapping[str, object], tokenizers: Mapping[str, object],
                 max_lengths: Mapping[str, int], num_labels: Mapping[str, int], *, batch_size: int = 64,
                 template: str = SENTIMENT_TEMPLATE) -> None:
        super().__init__(dict(tokenizers), dict(max_lengths), batch_size=batch_size, template=template)
        self.sessions = dict(sessions)
        self.num_labels = dict(num_labels)

    @classmethod
    def from_directories(cls, directories: Mapping[str, str | Path], *, batch_size: int = 64,
                         template: str = SENTIMENT_TEMPLATE, threads: int | None = None) -> "OnnxScorer":
        """Load ``{"keyword": dir, "sentiment": dir}`` written by ``export_classifier``."""
        from transformers import AutoTokenizer

        ort = require("onnxruntime", "onnx")
        sessions, tokenizers, max_lengths, num_labels = {}, {}, {}, {}
        for which in (KEYWORD, SENTIMENT):
            directory = Path(directories[which])
            info = read_info(directory)
            model_file = directory / ONNX_FILE
            if not model_file.is_file():
                raise ModelError(f"{directory}: {ONNX_FILE} is missing; re-run `reviewlens compress --onnx`")
            try:
                sessions[which] = ort.InferenceSession(str(model_file), session_options(threads),
                                                       providers=["CPUExecutionProvider"])
                tokenizers[which] = AutoTokenizer.from_pretrained(directory)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
                raise ModelError(f"{directory}: cannot load the ONNX model or its tokenizer: {exc}") from exc
            max_lengths[which] = int(info["max_length"])
            num_labels[which] = int(info["num_labels"])
        return cls(sessions, tokenizers, max_lengths, num_labels, batch_size=batch_size, template=template)

    @classmethod
    def from_bundle(cls, bundle, batch_size: int = 64, threads: int | None = None) -> "OnnxScorer":
        """The scorer of a compressed bundle (``backend: "onnx"``)."""
        if bundle.path is None:
            raise ModelError("load the bundle from a directory before scoring with it")
        return cls.from_directories({KEYWORD: bundle.path / KEYWORD, SENTIMENT: bundle.path / SENTIMENT},
                                    batch_size=batch_size, template=bundle.templates.get("sentiment", SENTIMENT_TEMPLATE),
                                    threads=threads)

    def num_outputs(self, which: str) -> int:
        return self.num_labels[which]

    def _logits(self, which: str, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.sessions[which].run(["logits"], {name: batch[name] for name in INPUT_NAMES})[0]
