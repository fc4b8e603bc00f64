"""Classifier build / save / load round trips, feature standardisation, and the training config."""

import pytest
import torch

from reviewlens.errors import ModelError, ReviewlensError
from reviewlens.modeling import MULTI_LABEL, SINGLE_LABEL, build_classifier, load_classifier, save_classifier
from reviewlens.training import TrainConfig


def _logits(model, tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.inference_mode():
        return model.eval()(**enc).logits


@pytest.mark.parametrize("pooling,lora", [("cls", 0), ("mean", 0), ("mean", 4)])
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
