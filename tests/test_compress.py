"""Compression of the tiny bundle: ONNX export, int8, distillation with a trimmed vocabulary, head pruning;
and gradient × input highlights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from reviewlens.analyzer import ReviewAnalyzer  # noqa: E402
from reviewlens.bundle import ModelBundle  # noqa: E402
from reviewlens.errors import ReviewlensError  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
REVIEWS = EXAMPLES / "fashion_reviews.csv"
TEXTS = ["옷은 예쁘지만 배송은 늦어요", "색이 정말 이뻐요", "품질이 좀 떨어지지만 가격이 싸니까",
         "사이즈가 커요 핏은 예뻐요 그래도 신축성이 좋아서 편하게 입고 있어요 배송도 빨랐어요"]


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A few training texts (one per line) for distillation, trimming and pruning: enough to exercise them."""
    import pandas as pd

    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(pd.read_csv(REVIEWS)["text"].astype(str).tolist()[:16]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def onnx_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle exported to ONNX through the CLI (fp32)."""
    from typer.testing import CliRunner

    from reviewlens.cli import app

    out = tmp_path_factory.mktemp("onnx") / "bundle"
    result = CliRunner().invoke(app, ["compress", "--model", str(tiny_bundle), "--output", str(out), "--onnx"])
    assert result.exit_code == 0, result.output
    return out


def test_onnx_scorer_matches_torch(tiny_bundle, onnx_bundle):
    from reviewlens.compress.onnx import OnnxScorer

    bundle = ModelBundle.load(onnx_bundle)
    assert bundle.backend == "onnx"
    for sub in ("keyword", "sentiment"):
        assert (onnx_bundle / sub / "model.onnx").is_file() and (onnx_bundle / sub / "head.json").is_file()
    torch_scorer = ReviewAnalyzer.from_pretrained(tiny_bundle).scorer
    onnx_scorer = OnnxScorer.from_bundle(bundle, batch_size=3)  # batches of mixed lengths: dynamic axes
    assert isinstance(ReviewAnalyzer.from_pretrained(onnx_bundle).scorer, OnnxScorer)
    texts = TEXTS * 2 + ["좋아요"]
    expected = torch_scorer.keyword_probs(texts)
    assert np.ptp(expected, axis=0).max() > 1e-3, "the tiny model's outputs do not depend on the input"
    np.testing.assert_allclose(onnx_scorer.keyword_probs(texts), expected, atol=1e-4)
    keywords = [bundle.schema.keywords[i % len(bundle.schema.keywords)] for i in range(len(texts))]
    np.testing.assert_allclose(onnx_scorer.sentiment_probs(texts, keywords),
                               torch_scorer.sentiment_probs(texts, keywords), atol=1e-4)
    assert bundle.metrics["compression"]["size_bytes"] > 0


def test_int8_bundle_analyzes_with_highlights_and_records_f1(tiny_bundle, tmp_path):
    from reviewlens.compress import CompressConfig, compress

    out = tmp_path / "int8"
    compress(tiny_bundle, out, CompressConfig(int8=True), eval_data=REVIEWS)
    manifest = json.loads((out / "reviewlens.json").read_text(encoding="utf-8"))
    summary = manifest["metrics"]["compression"]
    assert manifest["backend"] == "onnx" and summary["variant"] == "onnx-int8"
    assert 0.0 <= summary["f1"] <= 1.0 and 0.0 <= summary["source_f1"] <= 1.0
    on_disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert abs(summary["size_bytes"] - on_disk) < 20_000  # measured before the manifest got these metrics
    ops = {node.op_type for node in onnx.load(str(out / "keyword" / "model.onnx")).graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger", "QAttention"}, ops
    assert json.loads((out / "keyword" / "onnx.json").read_text())["quantization"]["weights"] == "int8"

    analyzer = ReviewAnalyzer.from_pretrained(out)
    results = analyzer.analyze(TEXTS, highlights=True)
    found = [k for r in results for k in r.keywords]
    assert found, "the int8 bundle detected no keyword in any review"
    words = [(r.text, h) for r in results for k in r.keywords for h in k.highlights + k.sentiment_highlights]
    assert words, "no highlights at all"
    assert all(text[h.start:h.end] == h.word for text, h in words)


def test_distilled_student_with_trimmed_vocabulary_is_smaller_and_loads(tiny_bundle, corpus, tmp_path):
    from reviewlens.compress import CompressConfig, compress

    out = tmp_path / "student"
    bundle = compress(tiny_bundle, out, CompressConfig(distill=True, student_layers=1, trim_vocab=True, max_steps=4,
                                                       batch_size=4, augment=8), train_data=corpus)
    steps = bundle.metrics["compression"]["steps"]["keyword"]
    assert bundle.config["compress"]["corpus_texts"] == 16 + 8  # the corpus and the texts made from it
    assert steps["distillation"]["examples"] == 16 + 8
    assert bundle.backend == "torch"
    assert steps["params_after"] < steps["params_before"]
    assert steps["vocabulary"]["after"] < steps["vocabulary"]["before"]
    assert steps["distillation"]["steps"] == 4
    config = json.loads((out / "keyword" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["vocab_size"] == steps["vocabulary"]["after"]
    assert bundle.metrics["compression"]["size_bytes"] < bundle.metrics["compression"]["source_size_bytes"]
    # the sentiment head pools the keyword's pieces after a marker piece: its id follows the trimmed vocabulary
    from transformers import AutoTokenizer

    head = json.loads((out / "sentiment" / "head.json").read_text())
    assert head["pooling"] == "mean_keyword"
    assert AutoTokenizer.from_pretrained(out / "sentiment").convert_ids_to_tokens([head["marker_id"]]) == [":"]
    results = ReviewAnalyzer.from_pretrained(out).analyze(TEXTS, highlights=True)
    assert len(results) == len(TEXTS)


def test_student_of_the_sentiment_model_only_keeps_the_keyword_models_layers(tiny_bundle, corpus, tmp_path):
    from reviewlens.compress import CompressConfig, compress

    config = CompressConfig(distill=True, student_layers=1, student_models=("sentiment",), trim_vocab=True,
                            max_steps=2, batch_size=4)
    assert config.variant == "student1-sentiment-trim-fp32"
    bundle = compress(tiny_bundle, tmp_path / "student", config, train_data=corpus)
    steps = bundle.metrics["compression"]["steps"]
    assert "distillation" not in steps["keyword"] and steps["sentiment"]["distillation"]["steps"] == 2
    layers = {which: json.loads((tmp_path / "student" / which / "config.json").read_text())["num_hidden_layers"]
              for which in ("keyword", "sentiment")}
    teacher_layers = json.loads((tiny_bundle / "keyword" / "config.json").read_text())["num_hidden_layers"]
    assert layers == {"keyword": teacher_layers, "sentiment": 1} and teacher_layers > 1
    assert steps["keyword"]["vocabulary"]["after"] < steps["keyword"]["vocabulary"]["before"]  # still trimmed
    with pytest.raises(ReviewlensError, match="student-models"):
        CompressConfig(distill=True, student_models=("keywords",))


def test_pruned_bundle_has_fewer_heads_and_loads(tiny_bundle, corpus, tmp_path):
    from reviewlens.compress import CompressConfig, compress

    out = tmp_path / "pruned"
    bundle = compress(tiny_bundle, out, CompressConfig(prune=0.5, recovery_steps=2), train_data=corpus)
    pruning = bundle.metrics["compression"]["steps"]["sentiment"]["pruning"]
    assert pruning["heads_before"] == [2, 2] and pruning["heads_after"] == [1, 1]
    assert pruning["params_after"] < pruning["params_before"]
    info = json.loads((out / "sentiment" / "onnx.json").read_text())
    assert info["encoder"]["heads_per_layer"] == [1, 1]
    analyzer = ReviewAnalyzer.from_pretrained(out)
    probs = analyzer.keyword_probabilities(TEXTS)
    assert probs.shape == (len(TEXTS), len(bundle.schema.keywords)) and np.isfinite(probs).all()


def test_trim_vocabulary_keeps_tokenisation(tiny_base):
    from transformers import AutoTokenizer

    from reviewlens.compress.distill import trim_vocabulary

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    corpus = TEXTS[:3]
    trimmed = trim_vocabulary(tokenizer, corpus)
    assert trimmed.size < trimmed.original_size
    for text in corpus:
        before = tokenizer(text)["input_ids"]
        after = trimmed.tokenizer(text)["input_ids"]
        assert [trimmed.kept_ids[i] for i in after] == before
    # a word never seen falls back to pieces that exist, or <unk>, never to an out-of-range id
    unseen = trimmed.tokenizer("완전히 새로운 단어들")["input_ids"]
    assert max(unseen) < trimmed.size


def test_compress_needs_training_texts_for_distillation(tiny_bundle, tmp_path):
    from typer.testing import CliRunner

    from reviewlens.cli import app

    result = CliRunner().invoke(app, ["compress", "--model", str(tiny_bundle), "--output", str(tmp_path / "x"),
                                      "--distill"])
    assert result.exit_code == 2
    assert "--train-data" in result.output
    assert not (tmp_path / "x").exists()


def test_gradient_highlights(tiny_bundle, onnx_bundle):
    from reviewlens.attribution import sentiment_word_scores, word_attributions

    analyzer = ReviewAnalyzer.from_pretrained(tiny_bundle)
    results = analyzer.analyze(TEXTS, attribution="gradient")
    words = [(r.text, h) for r in results for k in r.keywords for h in k.highlights + k.sentiment_highlights]
    assert words and all(text[h.start:h.end] == h.word and h.score > 0 for text, h in words)

    scorer = analyzer.scorer
    # a row's scores do not depend on what it is batched with (padding, length sorting)
    alone = word_attributions(scorer, "keyword", TEXTS[3:], TEXTS[3:], [0], [1])[0]
    batched = word_attributions(scorer, "keyword", TEXTS, TEXTS, [0] * 4, [0, 0, 0, 1])[3]
    np.testing.assert_allclose(alone, batched, atol=1e-5)
    assert len(alone) == len(TEXTS[3].split()) and np.abs(alone).sum() > 0
    # sentiment scores cover the review's words only, not the template's
    scores = sentiment_word_scores(scorer, TEXTS, [(1, analyzer.keywords[0], 0, 0.0)])
    assert len(scores[0]) == len(TEXTS[1].split())

    with pytest.raises(ReviewlensError, match="occlusion"):
        ReviewAnalyzer.from_pretrained(onnx_bundle).analyze(TEXTS, attribution="gradient")
    with pytest.raises(ReviewlensError, match="attribution"):
        analyzer.analyze(TEXTS, attribution="saliency")


def test_compressed_copy_of_the_fixture_is_independent(tiny_bundle, tmp_path):
    """Compressing never writes into the source bundle."""
    from reviewlens.compress import CompressConfig, compress

    before = {p: p.stat().st_mtime_ns for p in tiny_bundle.rglob("*")}
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    with pytest.raises(ReviewlensError, match="source bundle"):
        compress(copy, copy, CompressConfig(onnx=True))
    assert {p: p.stat().st_mtime_ns for p in tiny_bundle.rglob("*")} == before


def test_augmented_transfer_texts_are_new_mixes_and_masked_copies():
    from reviewlens.compress.augment import augment_texts, clauses

    assert clauses("옷은 예쁘지만 배송은 늦어요") == ["옷은 예쁘지만", "배송은 늦어요"]
    assert clauses("사이즈가 딱 맞고 색도 예뻐요, 다만 마감이 아쉬워요") == ["사이즈가 딱 맞고 색도 예뻐요,", "다만 마감이 아쉬워요"]
    assert clauses("좋아요") == ["좋아요"]
    made = augment_texts(TEXTS, 10, "<mask>", seed=1)
    assert len(made) == 10 and len(set(made)) == 10 and not set(made) & set(TEXTS)
    masked = [t for t in made if "<mask>" in t]
    mixed = [t for t in made if "<mask>" not in t]
    assert len(masked) == 5 and len(mixed) == 5
    pieces = {c for t in TEXTS for c in clauses(t)}

    def joins(text: str, parts: int) -> bool:  # text == " ".join of `parts` clauses of the corpus
        if parts == 1:
            return text in pieces
        return any(text.startswith(c + " ") and joins(text[len(c) + 1:], parts - 1) for c in pieces)

    assert all(joins(t, 2) or joins(t, 3) for t in mixed)
    assert augment_texts(TEXTS, 10, "<mask>", seed=1) == made  # seeded
    assert augment_texts(TEXTS, 0, "<mask>") == [] and augment_texts([], 5, "<mask>") == []
    assert augment_texts(["좋아요"], 5, "<mask>") == []  # one one-word review: nothing to mix or mask
    assert sorted(augment_texts(["좋아요", "별로"], 5, "<mask>")) == ["별로 좋아요", "좋아요 별로"]  # mixes only


def test_negative_augment_is_refused():
    from reviewlens.compress import CompressConfig

    with pytest.raises(ReviewlensError, match="--augment"):
        CompressConfig(distill=True, augment=-1)
