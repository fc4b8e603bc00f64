"""Classifier build / save / load round trips, feature standardisation, and the training config."""

import pytest
import torch

from reviewlens.errors import ModelError, ReviewlensError
from reviewlens.modeling import (MULTI_LABEL, SINGLE_LABEL, build_classifier, init_classifier, keyword_mask,
                                 load_classifier, save_classifier)
from reviewlens.tasks import sentiment_input
from reviewlens.training import TrainConfig, _encode


def _logits(model, tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.inference_mode():
        return model.eval()(**enc).logits


@pytest.mark.parametrize("pooling,lora", [("cls", 0), ("mean", 0), ("mean", 4), ("mean_keyword", 4)])
def test_save_load_gives_the_same_logits(tiny_base, tmp_path, pooling, lora):
    torch.manual_seed(0)
    model, tok = build_classifier(str(tiny_base), 3, MULTI_LABEL, pooling=pooling, labels=["a", "b", "c"], lora_r=lora)
    if lora:  # LoRA's B matrices start at zero; move them so the adapter matters
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.5)
    texts = ["배송이 빨라요", "색이 정말 이뻐요 가격도 좋아요"]
    before = _logits(model, tok, texts)
    save_classifier(model, tok, tmp_path)
    if lora:
        assert (tmp_path / "adapter" / "adapter_config.json").exists()
        assert not (tmp_path / "model.safetensors").exists() and not (tmp_path / "tokenizer.json").exists()
    loaded, tok2 = load_classifier(tmp_path)
    assert torch.allclose(before, _logits(loaded, tok2, texts), atol=1e-5)
    assert loaded.head_config.problem_type == MULTI_LABEL and loaded.head_config.labels == ["a", "b", "c"]


def test_fit_normalizer_standardises_features(tiny_base):
    model, tok = build_classifier(str(tiny_base), 2, SINGLE_LABEL, pooling="mean")
    enc = tok(["배송이 빨라요", "색이 예뻐요", "가격이 싸요", "품질이 좋아요"], padding=True, return_tensors="pt")
    model.fit_normalizer([{"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}])
    model.eval()
    with torch.no_grad():
        feats = (model.pool(enc["input_ids"], enc["attention_mask"]) - model.feature_mean) / model.feature_scale
    assert torch.allclose(feats.mean(0), torch.zeros(feats.shape[1]), atol=1e-4)
    assert torch.allclose(feats.std(0), torch.ones(feats.shape[1]), atol=1e-3)


def test_unknown_pooling_and_missing_base_are_clear(tmp_path):
    with pytest.raises(ModelError, match="pooling"):
        build_classifier(str(tmp_path), 2, MULTI_LABEL, pooling="max")
    with pytest.raises(ModelError, match="cannot load base model"):
        build_classifier(str(tmp_path / "nothing-here"), 2, MULTI_LABEL)
    with pytest.raises(ModelError, match="head.json"):
        load_classifier(tmp_path)


def test_train_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: x\nkeyword_epochs: 7\naliases:\n  착화감: 착용감\n", encoding="utf-8")
    cfg = TrainConfig.from_yaml(path, keyword_epochs=3, seed=None)
    assert cfg.base == "x" and cfg.keyword_epochs == 3 and cfg.seed == 42 and cfg.aliases == {"착화감": "착용감"}
    path.write_text("keyword_epoch: 7\n", encoding="utf-8")
    with pytest.raises(ReviewlensError, match="unknown training setting"):
        TrainConfig.from_yaml(path)


def test_keyword_mask_marks_the_pieces_after_the_last_marker():
    ids = torch.tensor([[1, 7, 9, 7, 5, 6, 2, 0], [1, 5, 6, 2, 0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0]])
    out = keyword_mask(ids, mask, marker_id=7)
    assert out.tolist() == [[0, 0, 0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0]]  # no marker: the whole input


def test_mean_keyword_pooling_depends_on_the_keyword_not_only_the_review(tiny_base):
    torch.manual_seed(0)
    model, tok = build_classifier(str(tiny_base), 3, SINGLE_LABEL, pooling="mean_keyword")
    marker = model.head_config.marker_id
    assert tok.convert_ids_to_tokens([marker]) == [":"]
    review = "품질이 좀 떨어지지만 가격이 싸니까"
    enc = tok([sentiment_input(review, "품질"), sentiment_input(review, "가격")], padding=True, return_tensors="pt",
              return_token_type_ids=False)
    with torch.no_grad():
        pooled = model.eval().pool(enc["input_ids"], enc["attention_mask"])
    hidden = model.encoder.config.hidden_size
    assert pooled.shape == (2, 2 * hidden)
    whole, keyword = pooled[:, :hidden], pooled[:, hidden:]
    # the keyword half is the mean over the keyword's pieces alone, so it moves much more with the keyword
    assert (keyword[0] - keyword[1]).norm() > 3 * (whole[0] - whole[1]).norm()


def test_long_sentiment_inputs_lose_the_review_end_not_the_keyword(tiny_base):
    _, tok = build_classifier(str(tiny_base), 3, SINGLE_LABEL, pooling="mean")
    long_review = " ".join(["색이 정말 이뻐요"] * 60)
    text = sentiment_input(long_review, "마감처리")
    full = tok(text)["input_ids"]
    ids = _encode(tok, [text], [1], max_length=32, keep_keyword=True)[0]["input_ids"]
    tail = len(tok("\n###키워드: 마감처리", add_special_tokens=False)["input_ids"]) + 1  # and [SEP]
    assert len(full) > 100 and len(ids) == 32
    assert ids[-tail:] == full[-tail:] and ids[:32 - tail] == full[:32 - tail]
    short = _encode(tok, [sentiment_input("색이 예뻐요", "색상")], [1], max_length=32, keep_keyword=True)[0]
    assert short["input_ids"] == tok(sentiment_input("색이 예뻐요", "색상"))["input_ids"]


def test_load_report_of_the_unused_pooler_only_is_dropped():
    """transformers' load report is noise when it lists just the pooler that mean pooling leaves out."""
    import logging

    from reviewlens.modeling import _UnusedPoolerReport

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, __file__, 1, message, None, None)

    head = "BertModel LOAD REPORT from: /cache/e5\nKey | Status | | \n----+----\n"
    pooler = "pooler.dense.weight | UNEXPECTED |  | \npooler.dense.bias   | UNEXPECTED |  | \n"
    report = _UnusedPoolerReport()
    assert not report.filter(record(head + pooler + "\nNotes:\n- UNEXPECTED: can be ignored"))
    assert report.filter(record(head + pooler + "encoder.layer.0.attention.self.query.weight | MISSING |  | \n"))
    assert report.filter(record(head + "pooler.dense.weight | MISMATCH |  | \n"))
    assert report.filter(record("some other warning"))


@pytest.mark.parametrize("pooling,lora", [("cls", 0), ("mean", 0), ("mean_keyword", 4)])
def test_init_classifier_warm_starts_a_fresh_model_with_the_saved_weights(tiny_base, tmp_path, pooling, lora):
    torch.manual_seed(0)
    saved, tok = build_classifier(str(tiny_base), 3, MULTI_LABEL, pooling=pooling, labels=["a", "b", "c"],
                                  lora_r=lora)
    for name, p in saved.named_parameters():  # move every trainable tensor away from its initial value
        if p.requires_grad:
            p.data.normal_(0, 0.5)
    if hasattr(saved, "feature_mean"):
        saved.feature_mean.fill_(0.3)
    texts = ["배송이 빨라요", "색이 정말 이뻐요 가격도 좋아요"]
    expected = _logits(saved, tok, texts)
    save_classifier(saved, tok, tmp_path)
    torch.manual_seed(1)
    fresh, tok2 = build_classifier(str(tiny_base), 3, MULTI_LABEL, pooling=pooling, labels=["a", "b", "c"],
                                   lora_r=lora)
    assert not torch.allclose(expected, _logits(fresh, tok2, texts), atol=1e-3)
    init_classifier(fresh, tmp_path)
    assert torch.allclose(expected, _logits(fresh, tok2, texts), atol=1e-5)
    if lora:  # still an adapter model: only the adapters and the head train
        trainable = [n for n, p in fresh.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n or not n.startswith("encoder.") for n in trainable)


def test_init_classifier_refuses_another_head(tiny_base, tmp_path):
    saved, tok = build_classifier(str(tiny_base), 3, MULTI_LABEL, pooling="mean", labels=["a", "b", "c"])
    save_classifier(saved, tok, tmp_path)
    other, _ = build_classifier(str(tiny_base), 3, MULTI_LABEL, pooling="mean", labels=["a", "b", "x"])
    with pytest.raises(ModelError, match="labels"):
        init_classifier(other, tmp_path)
