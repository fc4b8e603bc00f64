"""Label audit: confident-learning flags, out-of-fold predictions, tagging rules and the report."""

from __future__ import annotations

import numpy as np
import pytest

from reviewlens.audit import (AuditReport, _none_probability, Predictions, audit, bundle_predictions, check_rules,
                              find_label_issues, geometric_mean, given_keywords, keyword_priors, kfold_indices,
                              keyword_log_loss, labeled_pairs, level_log_loss, linear_out_of_fold, load_rules, log_loss,
                              out_of_fold_predictions,
                              presence_evidence, rank_reviews, review_self_confidence)
from reviewlens.data import Review, ReviewDataset, read_reviews
from reviewlens.errors import ReviewlensError
from reviewlens.schema import LabelSchema

from conftest import EXAMPLES

SCHEMA = LabelSchema(["A", "B"], [-1, 0, 1])


def _dataset(labels: list[dict]) -> ReviewDataset:
    return ReviewDataset([Review(f"r{i}", f"리뷰 {i}", dict(l)) for i, l in enumerate(labels)], SCHEMA, "toy")


def _toy():
    """8 reviews; the model disagrees with three labels and is unsure of one review (r6)."""
    labels = [{"A": 1, "B": 1}, {"A": 1, "B": -1}, {"A": 1}, {"A": 1}, {}, {}, {}, {}]
    dataset = _dataset(labels)
    probs_a = [0.9, 0.8, 0.7, 0.05, 0.1, 0.2, 0.6, 0.95]
    probs_b = [0.9, 0.85, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    sure_positive = [0.05, 0.05, 0.9]
    dists = {(0, "A"): sure_positive, (0, "B"): sure_positive, (1, "A"): sure_positive,
             (1, "B"): [0.7, 0.1, 0.2], (2, "A"): sure_positive, (3, "A"): [0.95, 0.03, 0.02]}
    pairs = labeled_pairs(dataset)
    predictions = Predictions(np.array([probs_a, probs_b]).T, pairs, np.array([dists[p] for p in pairs]), "toy model")
    return dataset, predictions


def test_confident_learning_flags_with_per_class_thresholds():
    dataset, predictions = _toy()
    issues = find_label_issues(dataset, predictions, min_support=1)
    found = [(i.row, i.kind, i.keyword, i.suggested) for i in issues]
    # ranked by self-confidence: r3's positive label has p=0.02; then r3's A (p=0.05) and r7's missing A (0.05);
    # then r7, labeled with no keyword: p(none) = 0.05 * 0.9 rescaled so that the mean p(none) of the 8 reviews
    # is the share labeled with none (4/8). r6 (p(A) = 0.6) is not flagged.
    assert found == [(3, "sentiment", "A", "A -1"), (3, "keyword_extra", "A", "remove A"),
                     (7, "keyword_missing", "A", "add A"), (7, "no_keywords", "A", "add A")]
    calibrated = _none_probability(predictions.keyword_probs, 0.5)
    assert calibrated.mean() == pytest.approx(0.5)
    assert np.argsort(calibrated).tolist() == np.argsort(
        np.prod(1 - predictions.keyword_probs, axis=1)).tolist()  # one odds factor: the order is kept
    assert issues[3].self_confidence == pytest.approx(calibrated[7]) and calibrated[7] > 0.05 * 0.9
    del issues[3]
    # each class's threshold is its mean self-confidence: of "A labeled" the mean p(A) of the reviews labeled A,
    # of "A not labeled" the mean 1 - p(A) of the others
    assert issues[1].threshold == pytest.approx(np.mean([0.9, 0.8, 0.7, 0.05]))
    assert issues[2].threshold == pytest.approx(np.mean([0.9, 0.8, 0.4, 0.05]))
    assert issues[0].threshold == pytest.approx(np.mean([0.9, 0.9, 0.9, 0.9, 0.02]))  # level 1 over its 5 pairs


def test_ranking_puts_the_least_confident_reviews_first():
    dataset, predictions = _toy()
    order = rank_reviews(dataset, predictions)
    # r6 (A at 0.6, not labeled) is not flagged: 0.6 is below the mean 0.6125 of the labeled A reviews,
    # but it is the least confident of the rest. r1 comes before it: of the keywords labeled beside another
    # (r0's and r1's) its A (0.8) is the least probable, and that type is ranked on its own (``label_type``)
    assert list(order[:4]) == [3, 7, 1, 6]
    issues = find_label_issues(dataset, predictions, min_support=1)
    assert [i.rank_score for i in issues] == sorted(i.rank_score for i in issues)  # the report's order
    assert issues[0].rank_score == pytest.approx(1 / 8)  # r3's level: the least probable of the 8 reviews' levels
    assert not any(i.row == 6 for i in find_label_issues(dataset, predictions, min_support=1))


def test_ranking_compares_labels_with_labels_of_their_own_type():
    """A keyword the model is unsure of everywhere (p(A) 0.01-0.10 on all ten A labels) must not fill the top
    of the list ahead of the one sentiment label that stands out among its peers (0.2 where the others
    have 0.9): by raw self-confidence r12 would come 11th; ranked within its type it ties r0 and comes 2nd."""
    labels = [{"A": 1}] * 10 + [{"B": 1}] * 10
    dataset = _dataset(labels)
    probs = np.array([[0.01 * (i + 1), 0.01] for i in range(10)] + [[0.01, 0.95]] * 10)
    pairs = labeled_pairs(dataset)
    dists = np.array([[0.05, 0.05, 0.9]] * len(pairs))
    dists[pairs.index((12, "B"))] = [0.7, 0.1, 0.2]
    predictions = Predictions(probs, pairs, dists, "toy model")
    raw = np.argsort(review_self_confidence(dataset, predictions), kind="stable")
    assert raw.tolist().index(12) == 10
    order = rank_reviews(dataset, predictions)
    assert order[:3].tolist() == [0, 12, 1]


def test_a_doubted_keyword_beside_another_is_ranked_among_its_like():
    """Ten reviews labeled A alone, on all of which the model is unsure of A (0.02-0.20: an ambiguous keyword),
    and r10 labeled A and B, sure of B (0.95) and unsure of A (0.10). Among all A labels r10's would come 5th;
    among the labels that sit beside another keyword it is the one doubted, and comes first."""
    labels = [{"A": 1}] * 10 + [{"A": 1, "B": 1}] + [{"B": 1}] * 9
    dataset = _dataset(labels)
    probs = np.array([[0.02 * (i + 1), 0.01] for i in range(10)] + [[0.10, 0.95]] + [[0.3, 0.95]] * 9)
    pairs = labeled_pairs(dataset)
    predictions = Predictions(probs, pairs, np.array([[0.05, 0.05, 0.9]] * len(pairs)), "toy model")
    assert np.argsort(review_self_confidence(dataset, predictions), kind="stable").tolist().index(10) == 5
    assert rank_reviews(dataset, predictions)[:2].tolist() == [0, 10]
    issues = find_label_issues(dataset, predictions, min_support=1)
    extra = [i for i in issues if i.row == 10 and i.kind == "keyword_extra"]
    assert extra and extra[0].rank_score == pytest.approx(1 / 20)  # the lowest of its type: 1 of the 20 reviews


def test_keywords_with_too_few_labels_are_not_judged_by_the_model():
    dataset, predictions = _toy()  # A is labeled on 4 reviews, B on 2
    kinds = {i.kind for i in find_label_issues(dataset, predictions, min_support=3)}
    assert kinds == {"sentiment", "no_keywords", "keyword_extra", "keyword_missing"}
    assert {i.kind for i in find_label_issues(dataset, predictions, min_support=5)} == {"sentiment", "no_keywords"}
    assert "fewer than 10 reviews are not judged by the model" in audit(dataset, predictions).notes[0]


def test_unscored_keywords_and_levels_are_not_flagged():
    dataset, predictions = _toy()
    predictions.keyword_probs[:, 0] = np.nan  # a model that does not know keyword A
    predictions.sentiment_probs[:] = np.nan
    assert find_label_issues(dataset, predictions, min_support=1) == []


def _rules_dataset() -> ReviewDataset:
    rows = [("쫀쫀하고 좋은데 보풀이 많이생기네요", {"신축성": 1}), ("허리 밴드가 짱짱해요", {"신축성": 1}),
            ("구겨져서 배송왔어요", {"배송": -1}), ("구김이 잘 가요", {"품질": -1}), ("바느질이 엉망", {"마감": -1}),
            ("실 밥이 나와요", {"품질": -1}), ("세탁 후 목이 늘어나요", {"신축성": -1}), ("잘 늘어나서 편해요", {"신축성": 1}),
            ("소재가 좋아요", {"소재": 1})]
    schema = LabelSchema(["품질", "신축성", "소재", "마감", "배송"], [-2, -1, 0, 1, 2])
    return ReviewDataset([Review(str(i), t, l) for i, (t, l) in enumerate(rows)], schema, "rules-toy")


def test_fashion_rules_encode_the_seed_guideline():
    rules = load_rules("fashion")
    assert {r.id for r in rules.rules} >= {"tight-knit-is-quality", "stitching-is-finishing", "wrinkles-are-material"}
    issues, notes = check_rules(_rules_dataset(), rules)
    found = sorted((int(i.id), i.rule, i.suggested) for i in issues)
    assert found == [
        (0, "tight-knit-is-quality", "add 품질"),
        (0, "tight-knit-is-quality", "신축성 -> 품질"),
        (3, "wrinkles-are-material", "add 소재 or 마감처리"),
        (5, "stitching-is-finishing", "add 마감처리"),  # "실 밥": spaces do not hide the word
        (6, "stretching-with-wear-is-quality", "add 품질"),
    ]
    assert notes == []  # 마감 counts as 마감처리 through the rule set's aliases
    assert "'쫀쫀'" in next(i.detail for i in issues if i.id == "0")


def test_rules_that_cannot_apply_are_noted(nikl_slice):
    issues, notes = check_rules(read_reviews(nikl_slice), load_rules("fashion"))
    assert issues == [] and len(notes) == len(load_rules("fashion").rules)
    assert all("skipped" in note for note in notes)


def test_bad_rules_files_say_what_to_fix(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - id: x\n    words: [a]\n    expect: [b]\n", encoding="utf-8")
    with pytest.raises(ReviewlensError, match=r"rule 1: unknown field\(s\) \['expect'\]"):
        load_rules(path)
    path.write_text("rules:\n  - id: x\n    words: []\n    expect_any: [b]\n", encoding="utf-8")
    with pytest.raises(ReviewlensError, match="at least one trigger word"):
        load_rules(path)
    path.write_text("- just a list\n", encoding="utf-8")
    with pytest.raises(ReviewlensError, match="a 'rules' list"):
        load_rules(path)
    with pytest.raises(ReviewlensError, match="packaged rule sets: fashion"):
        load_rules(tmp_path / "missing.yaml")


class _Memorizer:
    """A model that knows only the reviews it was trained on: probability 1 for their labels, else 0."""

    def __init__(self, part: ReviewDataset) -> None:
        self.keywords, self.levels = list(part.schema.keywords), list(part.schema.levels)
        self.seen = {r.text for r in part.reviews}

    def keyword_probs(self, texts):
        return np.array([[1.0 if t in self.seen else 0.0] * len(self.keywords) for t in texts])

    def sentiment_probs(self, texts, keywords):
        return np.array([[1.0 if t in self.seen else 0.0] * len(self.levels) for t in texts])


def test_out_of_fold_predictions_never_score_a_review_with_its_own_model(nikl_slice):
    dataset = read_reviews(nikl_slice)
    predictions = out_of_fold_predictions(dataset, folds=4, fit=lambda part, fold: _Memorizer(part))
    assert predictions.keyword_probs.shape == (len(dataset), dataset.schema.num_keywords)
    assert np.all(predictions.keyword_probs == 0.0) and np.all(predictions.sentiment_probs == 0.0)
    assert len(predictions.pairs) == sum(len(r.labels) for r in dataset)
    held_out = np.concatenate([test for _, test in kfold_indices(len(dataset), 4)])
    assert sorted(held_out.tolist()) == list(range(len(dataset)))


def test_flipped_sentiment_labels_are_found_on_real_data(nikl_slice):
    """Truth from real data: positive labels turned negative are flagged (fast TF-IDF model, 5 folds)."""
    from reviewlens.baselines import FastModelConfig, FastReviewModel

    dataset = read_reviews(nikl_slice)
    rng = np.random.default_rng(0)
    positive = [(i, k) for i, r in enumerate(dataset.reviews) for k, v in r.labels.items() if v == 1]
    flipped = [positive[j] for j in rng.choice(len(positive), 10, replace=False)]
    for i, keyword in flipped:
        dataset.reviews[i].labels[keyword] = -1
    config = FastModelConfig(threshold_folds=0)
    predictions = out_of_fold_predictions(dataset, folds=5,
                                          fit=lambda part, fold: FastReviewModel(part.schema, config).fit(part))
    sentiment = [(i.row, i.keyword) for i in find_label_issues(dataset, predictions) if i.kind == "sentiment"]
    recall = len(set(sentiment) & set(flipped)) / len(flipped)
    assert recall >= 0.7, f"only {recall:.0%} of the flipped labels were flagged"
    untouched = [(i, k) for i, k in positive if (i, k) not in set(flipped)]
    false_alarms = len(set(sentiment) & set(untouched)) / len(untouched)
    assert false_alarms < 0.1, f"{false_alarms:.0%} of the untouched positive labels were flagged"


def test_out_of_fold_training_with_tiny_transformers(tiny_base):
    from reviewlens.training import TrainConfig

    dataset = read_reviews(EXAMPLES / "fashion_reviews.csv")
    config = TrainConfig(base=str(tiny_base), pooling="mean", keyword_epochs=1, sentiment_epochs=1, batch_size=16,
                         learning_rate=2e-3, early_stopping_patience=0, seed=0)
    predictions = out_of_fold_predictions(dataset, config, folds=2, seed=0)
    assert np.isfinite(predictions.keyword_probs).all() and np.isfinite(predictions.sentiment_probs).all()
    assert ((predictions.keyword_probs >= 0) & (predictions.keyword_probs <= 1)).all()
    assert np.allclose(predictions.sentiment_probs.sum(axis=1), 1.0, atol=1e-4)
    assert "2 folds" in predictions.method and str(tiny_base) in predictions.method


def test_fast_mode_report_and_cli(tiny_bundle, tmp_path):
    from typer.testing import CliRunner

    from reviewlens.cli import app

    dataset = read_reviews(EXAMPLES / "fashion_reviews.csv")
    predictions = bundle_predictions(dataset, tiny_bundle)
    assert predictions.keyword_probs.shape == (len(dataset), dataset.schema.num_keywords)
    assert "fast mode" in predictions.method
    report = audit(dataset, predictions, load_rules("fashion"))
    summary = {row["label"]: row for row in report.summary()}
    assert summary["배송"]["support"] == sum("배송" in r.labels for r in dataset)
    assert all(row["suspected_wrong"] <= row["support"] for row in report.summary())
    markdown = report.to_markdown()
    assert "| label | support | suspected wrong" in markdown and "fast mode" in markdown

    result = CliRunner().invoke(app, ["audit", "--data", str(EXAMPLES / "fashion_reviews.csv"), "--model",
                                      str(tiny_bundle), "--rules", "fashion", "--output", str(tmp_path / "a.csv")])
    assert result.exit_code == 0, result.output
    import pandas as pd

    table = pd.read_csv(tmp_path / "a.csv")
    assert list(table.columns)[:4] == ["rank", "id", "kind", "keyword"] and len(table) == len(report.issues)
    model_rows = table[table["kind"] != "rule"]
    assert len(model_rows) and model_rows["rank_score"].between(0, 1).all()  # each model issue has its rank
    assert model_rows["rank_score"].is_monotonic_increasing  # and the report is ordered by it
    result = CliRunner().invoke(app, ["audit", "--data", str(EXAMPLES / "fashion_reviews.csv"), "--rules-only",
                                      "--rules", "fashion", "--output", str(tmp_path / "a.md")])
    assert result.exit_code == 0 and "| label | support" in (tmp_path / "a.md").read_text(encoding="utf-8")
    result = CliRunner().invoke(app, ["audit", "--data", str(EXAMPLES / "fashion_reviews.csv"), "--rules-only",
                                      "--output", str(tmp_path / "b.md")])
    assert result.exit_code == 2 and "--rules-only needs --rules" in result.output
    bad = CliRunner().invoke(app, ["audit", "--data", str(EXAMPLES / "fashion_reviews.csv"), "--rules-only",
                                   "--rules", str(tmp_path / "none.yaml"), "--output", str(tmp_path / "c.md")])
    assert bad.exit_code == 2 and "cannot read the rules file" in bad.output


def test_report_markdown_lists_rule_notes():
    report = AuditReport(_rules_dataset(), [], method="", rules="fashion", notes=["rule x skipped"])
    assert "- rule x skipped" in report.to_markdown()


def test_an_empty_label_where_almost_every_review_has_a_keyword_ranks_first():
    """The model is unsure of every review (p(A) = 0.5), so the raw p(none) = 0.5 would hide r0's empty label
    behind any keyword label below 0.5; rescaled to the data's 1-in-20 empty share it is the most suspect."""
    labels = [{}] + [{"A": 1}] * 19
    dataset = _dataset(labels)
    probs = np.array([[0.5, 0.0]] * 20)
    probs[5, 0] = 0.3  # r5's A label: the weakest keyword label
    pairs = labeled_pairs(dataset)
    predictions = Predictions(probs, pairs, np.array([[0.05, 0.05, 0.9]] * len(pairs)), "toy model")
    order = rank_reviews(dataset, predictions)
    assert order[0] == 0 and order[1] == 5


def test_out_of_fold_training_refuses_a_warm_start(tmp_path):
    from reviewlens.training import TrainConfig

    dataset, _ = _toy()
    with pytest.raises(ReviewlensError, match="cannot warm-start"):
        out_of_fold_predictions(dataset, TrainConfig(init_from=str(tmp_path)), folds=2)


def test_a_common_keyword_that_slipped_in_outranks_a_rare_one_the_model_barely_knows():
    """Both reviews carry a second keyword the model doubts. C (on 1 review in 20) gets p = 0.04 on r0: low, but
    on a random review C has 0.05, so the text does not argue against it. A (on half the reviews) gets p = 0.05
    on r1, a tenth of its base rate. By raw probability r0 comes first; by ``presence_evidence`` r1 does."""
    schema = LabelSchema(["A", "B", "C"], [-1, 0, 1])
    labels = [{"B": 1, "C": 1}, {"B": 1, "A": 1}] + [{"A": 1}] * 9 + [{"B": 1}] * 9
    dataset = ReviewDataset([Review(f"r{i}", f"리뷰 {i}", dict(l)) for i, l in enumerate(labels)], schema, "toy")
    probs = np.array([[0.1, 0.9, 0.04], [0.05, 0.9, 0.01]] + [[0.9, 0.1, 0.01]] * 9 + [[0.1, 0.9, 0.01]] * 9)
    pairs = labeled_pairs(dataset)
    predictions = Predictions(probs, pairs, np.array([[0.05, 0.05, 0.9]] * len(pairs)), "toy model")
    assert np.argsort(review_self_confidence(dataset, predictions), kind="stable")[0] == 0
    assert presence_evidence(np.array([0.04, 0.05]), keyword_priors(given_keywords(dataset))[[2, 0]]).tolist() == \
        pytest.approx([np.log(0.04 / 0.05), np.log(0.05 / 0.5)])
    assert rank_reviews(dataset, predictions)[:2].tolist() == [1, 0]
    issues = find_label_issues(dataset, predictions, min_support=1)
    extra = [i for i in issues if i.kind == "keyword_extra" and i.row == 1]
    assert extra and extra[0].rank_score == pytest.approx(1 / 20)  # the report agrees with the ranking
    assert extra[0].self_confidence == pytest.approx(0.05)  # and still shows the model's probability


def test_geometric_mean_of_predictions():
    pairs = [(0, "A")]
    one = Predictions(np.array([[0.9, np.nan]]), pairs, np.array([[0.2, 0.2, 0.6]]), "one")
    two = Predictions(np.array([[0.5, np.nan]]), pairs, np.array([[0.2, 0.6, 0.2]]), "two")
    both = geometric_mean([one, two])
    assert both.keyword_probs[0, 0] == pytest.approx(np.sqrt(0.45) / (np.sqrt(0.45) + np.sqrt(0.05)))
    assert np.isnan(both.keyword_probs[0, 1])  # unscored stays unscored
    assert both.sentiment_probs[0].tolist() == pytest.approx([0.2 / 0.2 * (0.2 / (0.2 + 2 * np.sqrt(0.12)))] +
                                                             [np.sqrt(0.12) / (0.2 + 2 * np.sqrt(0.12))] * 2)
    with pytest.raises(ReviewlensError, match="not of the same labels"):
        geometric_mean([one, Predictions(np.array([[0.5, 0.5]]), [(0, "B")], np.array([[0.2, 0.6, 0.2]]))])


def _synthetic_reviews() -> ReviewDataset:
    """90 reviews written from three keywords' phrases, with two planted errors: r0 (a 배송 review) also
    labeled 가격, r1 (a clearly negative 디자인 review) labeled positive."""
    phrases = {"배송": (["배송이 빨라요", "하루만에 도착했어요", "택배가 금방 왔어요"], ["배송이 너무 늦어요", "일주일 걸렸어요"]),
               "가격": (["가격이 저렴해요", "가성비 최고예요", "싸게 잘 샀어요"], ["가격이 비싸요", "값에 비해 별로예요"]),
               "디자인": (["디자인이 예뻐요", "색감이 고급스러워요", "모양이 귀여워요"], ["디자인이 촌스러워요", "사진과 달라요 실망"])}
    rng = np.random.default_rng(0)
    reviews = []
    for i in range(90):
        keyword = list(phrases)[i % 3]
        positive = rng.random() < 0.7
        text = str(rng.choice(phrases[keyword][0 if positive else 1])) + f" {['정말', '진짜', '음', '와'][i % 4]} {i}"
        reviews.append(Review(f"r{i}", text, {keyword: 1 if positive else -1}))
    reviews[0] = Review("r0", "배송이 빨라요 정말 0", {"배송": 1, "가격": 1})
    reviews[1] = Review("r1", "디자인이 촌스러워요 진짜 1", {"디자인": 1})
    return ReviewDataset(reviews, LabelSchema(list(phrases), [-1, 0, 1]), "synthetic")


def _char_embed(texts: list[str]) -> np.ndarray:
    """A stand-in sentence encoder: hashed character bigrams, L2-normalised."""
    out = np.zeros((len(texts), 256))
    for row, text in enumerate(texts):
        for a, b in zip(text, text[1:]):
            out[row, (ord(a) * 31 + ord(b)) % 256] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_linear_out_of_fold_finds_planted_errors():
    dataset = _synthetic_reviews()
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return _char_embed(texts)

    predictions = linear_out_of_fold(dataset, folds=5, seed=0, embed=embed)
    assert calls == [len(set(dataset.texts))]  # every text embedded once
    assert np.isfinite(predictions.keyword_probs).all() and np.isfinite(predictions.sentiment_probs).all()
    assert np.allclose(predictions.sentiment_probs.sum(axis=1), 1.0)
    assert "5 folds" in predictions.method and "TF-IDF" in predictions.method and "embeddings" in predictions.method
    assert "geometric mean" in predictions.method
    assert set(rank_reviews(dataset, predictions)[:4].tolist()) >= {0, 1}
    from reviewlens.baselines import EmbeddingFeatures

    shared = EmbeddingFeatures(dataset.texts, embed)
    again = linear_out_of_fold(dataset, folds=5, seed=0, embed=shared)  # vectors reused, not recomputed
    assert calls == [len(set(dataset.texts))] * 2 and np.allclose(again.keyword_probs, predictions.keyword_probs)
    tfidf_only = linear_out_of_fold(dataset, folds=5, seed=0)
    assert "embeddings" not in tfidf_only.method and not np.allclose(tfidf_only.keyword_probs,
                                                                    predictions.keyword_probs)
    assert predictions.method.endswith("(each Platt-calibrated; their geometric mean, Platt-calibrated)")
    assert tfidf_only.method.endswith(" levels) (Platt-calibrated)")  # one model: calibrated once


def test_embedding_features_and_the_lbfgs_solver():
    from reviewlens.baselines import EmbeddingFeatures, FastModelConfig, FastReviewModel

    dataset = _synthetic_reviews()
    calls = []
    features = EmbeddingFeatures(dataset.texts, lambda texts: calls.append(list(texts)) or _char_embed(texts))
    assert features.transform(dataset.texts[:3]).shape == (3, 256) and len(calls) == 1
    assert np.allclose(features.embed(["새 리뷰입니다", dataset.texts[0]]),
                       _char_embed(["새 리뷰입니다", dataset.texts[0]]))
    assert calls[-1] == ["새 리뷰입니다"]  # only the unseen text is embedded
    model = FastReviewModel(dataset.schema, FastModelConfig(solver="lbfgs", alpha=1e-3), features=features)
    model.fit(dataset.subset(range(2, 90)))
    predicted = model.predict(["배송이 빨라요 와 100", "가격이 비싸요 음 101"])
    assert predicted == [{"배송": 1}, {"가격": -1}]
    with pytest.raises(ValueError, match="solver"):
        FastReviewModel(dataset.schema, FastModelConfig(solver="adam"), features=features).fit(dataset)


def test_cached_embedder_embeds_each_text_once_across_runs(tmp_path):
    from reviewlens.baselines import cached_embedder

    calls = []

    def encoder(texts):
        calls.append(list(texts))
        return _char_embed(texts)

    path = tmp_path / "cache" / "e5.npz"
    first = cached_embedder(encoder, path)
    assert np.allclose(first(["배송 빨라요", "가격 비싸요", "배송 빨라요"]),
                       _char_embed(["배송 빨라요", "가격 비싸요", "배송 빨라요"]))
    assert calls == [["배송 빨라요", "가격 비싸요"]] and path.exists()
    second = cached_embedder(encoder, path)  # a new run: the file answers, only the new text is embedded
    assert np.allclose(second(["가격 비싸요", "새 리뷰"]), _char_embed(["가격 비싸요", "새 리뷰"]))
    assert calls[1:] == [["새 리뷰"]]
    assert np.allclose(cached_embedder(encoder, path)(["새 리뷰"]), _char_embed(["새 리뷰"])) and len(calls) == 2
    assert not [p for p in path.parent.iterdir() if p.name != "e5.npz"]  # no temp file left behind
    path.write_bytes(b"not an npz")
    with pytest.raises(ReviewlensError, match="e5.npz: not an embedding cache"):
        cached_embedder(encoder, path)


def test_log_loss_prefers_the_model_that_agrees_with_the_labels():
    dataset, predictions = _toy()
    worse = Predictions(1.0 - predictions.keyword_probs, predictions.pairs, predictions.sentiment_probs[:, ::-1])
    assert 0 < log_loss(dataset, predictions) < log_loss(dataset, worse)
    assert log_loss(dataset, predictions) == pytest.approx(
        keyword_log_loss(dataset, predictions) + level_log_loss(dataset, predictions))


def test_each_head_keeps_its_own_penalty():
    from reviewlens.audit import _best_per_head

    dataset, good = _toy()
    bad_keywords = Predictions(1.0 - good.keyword_probs, good.pairs, good.sentiment_probs)
    bad_levels = Predictions(good.keyword_probs, good.pairs, good.sentiment_probs[:, ::-1])
    # the keywords of the first penalty are right and its levels wrong; the other way for the second
    best = _best_per_head(dataset, [(1e-5, bad_levels), (1e-4, bad_keywords)], "toy")
    assert np.array_equal(best.keyword_probs, good.keyword_probs)
    assert np.array_equal(best.sentiment_probs, good.sentiment_probs)
    assert best.method == "toy (alpha 1e-05 keywords, 0.0001 levels)"


def test_linear_audit_cli(tmp_path):
    from typer.testing import CliRunner

    from reviewlens.cli import app
    from reviewlens.labeling import write_table

    dataset = _synthetic_reviews()
    data = write_table([{"id": r.id, "text": r.text, "labels": dataset.schema.format(r.labels)} for r in dataset],
                       tmp_path / "reviews.csv", ["id", "text", "labels"])
    result = CliRunner().invoke(app, ["audit", "--data", str(data), "--linear", "--embeddings", "none", "--folds", "5",
                                      "--output", str(tmp_path / "audit.md")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "audit.md").read_text(encoding="utf-8")
    assert "5 folds, of linear models on TF-IDF" in report
    first = report.split("## Issues, most suspect first")[1]
    assert "| r0 |" in first or "| r1 |" in first
    refused = CliRunner().invoke(app, ["audit", "--data", str(data), "--linear", "--model", str(tmp_path),
                                       "--output", str(tmp_path / "b.md")])
    assert refused.exit_code == 2 and "drop --model" in refused.output


def test_platt_calibration_is_monotone_and_matches_label_rates():
    from reviewlens.audit import platt_calibrated

    rng = np.random.default_rng(0)
    n = 400
    labels = [({"A": 1} if rng.random() < 0.3 else {}) for _ in range(n)]
    labels = [dict(l, B=int(rng.choice([-1, 1], p=[0.2, 0.8]))) if i % 2 else l for i, l in enumerate(labels)]
    dataset = _dataset(labels)
    given = np.array([[k in l for k in SCHEMA.keywords] for l in labels])
    # overconfident: the right direction, far too sure (0.01 / 0.99), and wrong 10% of the time
    flip = rng.random(given.shape) < 0.1
    probs = np.where(given ^ flip, 0.99, 0.01).astype(float)
    probs[5, 0] = np.nan  # unscored
    pairs = labeled_pairs(dataset)
    levels = np.array([[0.01, 0.01, 0.98] if labels[i][k] == 1 else [0.5, 0.01, 0.49] for i, k in pairs])
    calibrated = platt_calibrated(dataset, Predictions(probs, pairs, levels, "overconfident"))
    a = calibrated.keyword_probs[:, 0]
    assert np.isnan(a[5]) and calibrated.method == "overconfident"
    scored = ~np.isnan(probs[:, 0])
    # monotone: the ranking within a keyword is the model's
    assert np.all(np.diff(a[scored][np.argsort(probs[scored, 0], kind="stable")]) >= -1e-12)
    # calibrated: a "0.99" becomes the share of those reviews that carry the label (about 0.8, not 0.99)
    sure = scored & (probs[:, 0] > 0.5)
    assert abs(a[sure].mean() - given[sure, 0].mean()) < 0.02 and a[sure].mean() < 0.9
    assert abs(np.nanmean(a) - given[:, 0].mean()) < 0.02
    # levels: the mean probability of each level matches its share of the labels
    shares = np.bincount([SCHEMA.level_index(labels[i][k]) for i, k in pairs], minlength=3) / len(pairs)
    assert np.allclose(calibrated.sentiment_probs.mean(axis=0), shares, atol=0.02)
    assert np.allclose(calibrated.sentiment_probs.sum(axis=1), 1.0)


def test_platt_calibration_leaves_too_rare_keywords_alone():
    from reviewlens.audit import platt_calibrated

    dataset, predictions = _toy()  # B: 2 labeled, 6 not; A: 4 and 4
    rare = _dataset([{"A": 1}, {"A": 1}, {"B": 1}, {"A": 1}, {}, {}, {}, {}])
    p = Predictions(predictions.keyword_probs, labeled_pairs(rare),
                    np.tile([0.1, 0.1, 0.8], (len(labeled_pairs(rare)), 1)), "toy")
    out = platt_calibrated(rare, p)
    assert np.array_equal(out.keyword_probs[:, 1], p.keyword_probs[:, 1])  # B: one labeled review
    assert not np.array_equal(out.keyword_probs[:, 0], p.keyword_probs[:, 0])
    assert np.array_equal(out.sentiment_probs, p.sentiment_probs)  # one level given: nothing to calibrate


def test_product_of_experts_and_the_sentiment_penalty():
    from reviewlens.baselines import (FastModelConfig, FastReviewModel, TfidfFeatures, binary_product_of_experts,
                                      product_of_experts)

    expected = np.sqrt(0.9 * 0.5) / (np.sqrt(0.9 * 0.5) + np.sqrt(0.1 * 0.5))
    assert binary_product_of_experts([np.array([0.9]), np.array([0.5])])[0] == pytest.approx(expected)
    assert np.allclose(product_of_experts([np.array([[0.2, 0.8]]), np.array([[0.2, 0.8]])]), [[0.2, 0.8]])
    assert np.isnan(binary_product_of_experts([np.array([np.nan]), np.array([0.5])])[0])

    dataset = _synthetic_reviews()
    features = TfidfFeatures(dataset.texts)
    same = FastReviewModel(dataset.schema, FastModelConfig(alpha=1e-4, threshold_folds=0), features=features).fit(dataset)
    strong = FastReviewModel(dataset.schema, FastModelConfig(alpha=1e-4, sentiment_alpha=1e-1, threshold_folds=0),
                             features=features).fit(dataset)
    texts, keywords = dataset.texts[:5], ["배송"] * 5
    assert np.allclose(strong.keyword_probs(texts), same.keyword_probs(texts))  # keywords: the same penalty
    # a much larger sentiment penalty pulls the level distributions towards flat
    assert strong.sentiment_probs(texts, keywords).max() < same.sentiment_probs(texts, keywords).max()


def test_linear_ensemble_predicts_and_serves_selection():
    from reviewlens.baselines import (EmbeddingFeatures, EnsembleConfig, LinearEnsemble, TfidfFeatures,
                                      binary_product_of_experts)
    from reviewlens.selection import SelectionContext, select

    dataset = _synthetic_reviews()
    train = dataset.subset(range(2, 90))  # without the two planted errors
    ensemble = LinearEnsemble(dataset.schema, TfidfFeatures(dataset.texts), EmbeddingFeatures(dataset.texts, _char_embed),
                              EnsembleConfig(keyword_alpha=1e-3, sentiment_alpha=1e-3))
    with pytest.raises(RuntimeError, match="fit"):
        ensemble.keyword_probs(["배송이 빨라요"])
    ensemble.fit(train)
    assert set(ensemble.thresholds) == set(dataset.schema.keywords)
    assert len(set(ensemble.thresholds.values())) == 1  # one shared threshold by default
    per_keyword = LinearEnsemble(dataset.schema, ensemble.tfidf, ensemble.embeddings,
                                 EnsembleConfig(keyword_alpha=1e-3, sentiment_alpha=1e-3, threshold_min_support=5))
    assert len(set(per_keyword.fit(train).thresholds.values())) > 1
    assert ensemble.predict(["배송이 빨라요 와 100", "가격이 비싸요 음 101"]) == [{"배송": 1}, {"가격": -1}]
    texts = dataset.texts[:4]
    members = binary_product_of_experts([m.keyword_probs(texts) for m in ensemble.members])
    assert np.allclose(ensemble.keyword_probs(texts), ensemble.calibration(members))  # one monotone map
    assert (ensemble.keyword_probs(texts).argmax(axis=1) == members.argmax(axis=1)).all()
    assert ensemble.embed(texts).shape == (4, 256)
    assert ensemble.at_least_one  # every training review has a keyword
    mute = "ㅁㅁㅁ"  # no keyword evidence at all: still gets the most probable keyword
    assert ensemble.keyword_probs([mute]).max() < ensemble.thresholds["배송"]
    assert len(ensemble.predict([mute])[0]) == 1
    free = LinearEnsemble(dataset.schema, ensemble.tfidf, ensemble.embeddings,
                          EnsembleConfig(keyword_alpha=1e-3, sentiment_alpha=1e-3, at_least_one=False)).fit(train)
    assert free.predict([mute]) == [{}]
    chosen = select(SelectionContext.from_dataset(dataset, ensemble), "keyword-entropy", 5,
                    exclude_ids=[r.id for r in train.reviews[:40]])
    assert len(chosen.indices) == 5 and not set(chosen.indices) & set(range(2, 42))


def test_linear_ensemble_threshold_by_expected_f1_on_a_population():
    from reviewlens.baselines import EmbeddingFeatures, EnsembleConfig, LinearEnsemble, TfidfFeatures
    from reviewlens.calibration import expected_f1_threshold

    dataset = _synthetic_reviews()
    train = dataset.subset(range(2, 60))
    config = EnsembleConfig(keyword_alpha=1e-3, sentiment_alpha=1e-3)
    tfidf, embeddings = TfidfFeatures(dataset.texts), EmbeddingFeatures(dataset.texts, _char_embed)
    population = dataset.texts[60:] + ["ㅁㅁㅁ"] * 40  # a different mix than the labeled reviews
    model = LinearEnsemble(dataset.schema, tfidf, embeddings, config).fit(train, population=population)
    shared = expected_f1_threshold(model.keyword_probs(population), at_least_one=True)
    assert model.thresholds == {k: shared for k in dataset.schema.keywords}
    labeled_only = LinearEnsemble(dataset.schema, tfidf, embeddings, config).fit(train)
    assert len(set(labeled_only.thresholds.values())) == 1
