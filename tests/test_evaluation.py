"""Evaluation of a bundle: gold keywords the model does not know count as misses, not crashes."""

import json

import numpy as np

from reviewlens.data import Review, ReviewDataset
from reviewlens.evaluation import evaluate_bundle, evaluate_scorer
from reviewlens.schema import LabelSchema


class FixedScorer:
    """Returns fixed probabilities: keyword 0 always, level index 2 always."""

    def __init__(self, k: int, levels: int) -> None:
        self.k, self.levels = k, levels

    def keyword_probs(self, texts):
        p = np.zeros((len(texts), self.k))
        p[:, 0] = 0.9
        return p

    def sentiment_probs(self, texts, keywords):
        p = np.full((len(texts), self.levels), 0.1)
        p[:, 2] = 0.8
        return p


def test_evaluate_scorer_hand_computed():
    schema = LabelSchema(["디자인", "배송"], levels=[-1, 0, 1])
    data = ReviewDataset([Review("1", "a", {"디자인": 1}), Review("2", "b", {"디자인": -1, "배송": 1})], schema)
    result = evaluate_scorer(FixedScorer(2, 3), data, {"디자인": 0.5, "배송": 0.5})
    # predicted pairs: (디자인,1) twice; gold: (디자인,1), (디자인,-1), (배송,1) -> tp 1
    assert result.pipeline["precision"] == 0.5 and abs(result.pipeline["recall"] - 1 / 3) < 1e-9
    assert result.pipeline["category"]["precision"] == 1.0 and abs(result.pipeline["category"]["recall"] - 2 / 3) < 1e-9
    # sentiment on gold pairs: predicted level 1 for all three; gold 1, -1, 1 -> 2 of 3
    assert abs(result.sentiment["micro"]["f1"] - 2 / 3) < 1e-9
    assert result.confusion.tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 2]]


def test_unknown_gold_keyword_counts_as_a_miss(tiny_bundle, tmp_path):
    data = tmp_path / "gold.csv"
    data.write_text("id,text,labels\n1,배송이 빨라요,배송 1\n2,신발 굽이 높아요,굽 -1\n", encoding="utf-8")
    result = evaluate_bundle(tiny_bundle, data)
    out = result.to_dict()
    assert "굽" in out["keywords"] and out["keywords"]["굽"]["recall"] == 0.0
    assert out["pipeline"]["support"] == 2
    paths = result.write(tmp_path / "report")
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["pipeline"]["support"] == 2
    assert "| 굽 |" in paths["markdown"].read_text(encoding="utf-8")
