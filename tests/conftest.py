"""Tiny models built on the fly: a WordPiece tokenizer trained on Korean reviews and a 2-layer BERT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NIKL = SHARED_DATA / "nikl-absa-2022"
FASHION = SHARED_DATA / "aihub-absa-fashion"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

CORPUS = [
    "옷은 예쁘지만 배송은 늦어요", "색이 정말 이뻐요", "품질이 좀 떨어지지만 가격이 싸니까",
    "배송이 빨라요 디자인도 좋아요", "사이즈가 커요 핏은 예뻐요", "신축성이 좋아서 편해요",
    "마감처리가 별로예요 실밥이 나와요", "가격 대비 소재가 좋아요", "길이가 짧아요", "착용감이 편하고 만족해요",
]


def build_tiny_base(directory: Path, texts: list[str], vocab_size: int = 400, seed: int = 0) -> Path:
    """A 2-layer BERT with a WordPiece tokenizer trained on ``texts``, saved as a local base model."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
    BertModel(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny local base model whose tokenizer knows the example and NIKL vocabulary."""
    from reviewlens.data import read_reviews
    from reviewlens.tasks import sentiment_input

    texts = list(CORPUS)
    if (EXAMPLES / "fashion_reviews.csv").exists():
        examples = read_reviews(EXAMPLES / "fashion_reviews.csv")
        texts += examples.texts
        # the sentiment template's own pieces (###입력:, ###키워드:) and every example keyword: without them,
        # where ../shared/data is absent, the template is all [UNK] and 'mean_keyword' pooling cannot find the keyword
        texts += [sentiment_input(r.text, keyword) for r in examples.reviews for keyword in r.labels or {}]
    if (NIKL / "train.jsonl").exists():
        import json

        with open(NIKL / "train.jsonl", encoding="utf-8") as fh:
            texts += [json.loads(line)["sentence_form"] for _, line in zip(range(600), fh)]
    return build_tiny_base(tmp_path_factory.mktemp("tiny-base"), texts)


@pytest.fixture
def nikl_slice(tmp_path) -> Path:
    """The first 200 real rows of NIKL train.jsonl, copied into tmp_path (skipped where the data is absent)."""
    if not (NIKL / "train.jsonl").exists():
        pytest.skip(f"{NIKL} is not here")
    dest = tmp_path / "nikl-train-200.jsonl"
    with open(NIKL / "train.jsonl", encoding="utf-8") as src:
        dest.write_text("".join(line for _, line in zip(range(200), src)), encoding="utf-8")
    return dest


@pytest.fixture(scope="session")
def tiny_bundle(tiny_base, tmp_path_factory) -> Path:
    """A bundle trained for a few seconds on the shipped example reviews (shared by the suite; do not modify)."""
    from reviewlens.data import read_reviews
    from reviewlens.training import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-bundle") / "bundle"
    data = read_reviews(EXAMPLES / "fashion_reviews.csv")
    config = TrainConfig(base=str(tiny_base), pooling="mean", sentiment_pooling="mean_keyword", keyword_epochs=6,
                         sentiment_epochs=3,
                         learning_rate=2e-3, batch_size=16, early_stopping_patience=0, seed=0)
    train(data, out, config)
    return out
