"""Dynamic int8 quantization of an exported model with onnxruntime.

Weights of the matrix multiplies (and of the fused ``Attention`` kernels) become int8, per output
channel by default; activations are quantized on the fly. On CPUs with AVX512-VNNI or AVX-VNNI the
int8 kernels run several times faster than float32 ones.

The word-embedding table is left in float32 unless ``embeddings=True``: it is a lookup, not a matrix
multiply, so quantizing it saves size (3/4 of a 250k-piece table) but no time, and onnxruntime
quantizes it with one scale for the whole table, which costs accuracy on rare pieces. Trimming the
vocabulary (``distill.trim_vocabulary``) shrinks the table without that loss.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import ModelError, require
from .onnx import INPUT_NAMES, ONNX_FILE, quiet_onnxruntime_tools, read_info, write_info

MATMUL_OPS = ("MatMul", "Attention")
EMBEDDING_OPS = ("Gather", "EmbedLayerNormalization")


def ffn_output_matmuls(model) -> list[str]:
    """Names of the MatMuls fed by a GELU: the feed-forward output projections.

    GELU outputs have a long positive tail, so their per-tensor uint8 quantization is coarse; on e5 these
    12 matrix multiplies cause about half of the int8 error (``benchmarks/speed.py`` variant onnx-int8-ffn32).
    """
    producer = {output: node for node in model.graph.node for output in node.output}
    gelus = {"Gelu", "BiasGelu", "FastGelu"}
    return [node.name for node in model.graph.node if node.op_type == "MatMul" and node.input
            and getattr(producer.get(node.input[0]), "op_type", None) in gelus]


def quantize_directory(directory: str | Path, *, per_channel: bool = True, embeddings: bool = False,
                       keep_ffn_output: bool = False) -> dict:
    """Quantize ``directory/model.onnx`` in place (atomically); returns the updated onnx.json dict.

    ``keep_ffn_output`` leaves the feed-forward output projections in float32 (more accurate, slower).
    """
    onnx = require("onnx", "onnx")
    require("onnxruntime", "onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    directory = Path(directory)
    info = read_info(directory)
    if info.get("quantization"):
        raise ModelError(f"{directory}: the model is already quantized ({info['quantization']['weights']})")
    source = directory / ONNX_FILE
    tmp = directory / f".{ONNX_FILE}.int8.tmp"
    ops = list(MATMUL_OPS) + (list(EMBEDDING_OPS) if embeddings else [])
    excluded = ffn_output_matmuls(onnx.load(str(source), load_external_data=False)) if keep_ffn_output else []
    try:
        with quiet_onnxruntime_tools(logging.WARNING):  # also its advice to pre-process: the graph is optimised
            quantize_dynamic(
                str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel, reduce_range=False,
                op_types_to_quantize=ops, nodes_to_exclude=excluded,
                # fused com.microsoft ops have no ONNX shape inference; their outputs are float32
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        _smoke_test(tmp, info)
        os.replace(tmp, source)
    finally:
        if tmp.exists():
            tmp.unlink()
    info["quantization"] = {"method": "dynamic", "weights": "int8", "per_channel": per_channel,
                            "operators": ops, "embeddings": embeddings, "float32_nodes": len(excluded)}
    write_info(directory, info)
    return info


def _smoke_test(path: Path, info: dict) -> None:
    """The quantized graph loads and returns finite logits of the right width."""
    ort = require("onnxruntime", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: np.ones((2, 5), dtype=np.int64) for name in INPUT_NAMES}
    logits = session.run(["logits"], feeds)[0]
    if logits.shape != (2, info["num_labels"]) or not np.isfinite(logits).all():
        raise ModelError(f"{path}: the quantized model returned {logits.shape} / non-finite logits")
