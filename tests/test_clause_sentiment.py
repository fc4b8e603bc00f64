"""A keyword's level pooled from the whole review and the keyword's own clause (reviewlens.clause_sentiment)."""

import numpy as np
import pytest

from reviewlens.analyzer import ReviewAnalyzer
from reviewlens.bundle import ModelBundle
from reviewlens.clause_sentiment import CLAUSE_WEIGHTS, fit_clause_weight, keyword_clauses, pair_sentiment, pool
from reviewlens.data import Review, ReviewDataset
from reviewlens.errors import ReviewlensError
from reviewlens.evaluation import evaluate_scorer
from reviewlens.schema import LabelSchema
from reviewlens.training import calibrate

TEXT = "옷은 예쁘지만 배송은 늦어요"
KEYWORDS = ["배송", "디자인"]


class _ClauseScorer:
    """배송 fires on 배송은, 디자인 on 옷은. The sentiment model hears every opinion word of its input: 예쁘지만
    pulls to +1 (logit 2.5), 늦어요 to -1 (logit 2), so on the whole review both keywords read +1."""

    def __init__(self):
        self.keyword_inputs, self.sentiment_inputs = [], []

    def mask_token(self, which):
        return "[MASK]"

    def keyword_probs(self, texts):
        self.keyword_inputs += list(texts)
        return np.array([[0.9 if "배송은" in t else 0.1, 0.9 if "옷은" in t else 0.1] for t in texts])

    def sentiment_probs(self, texts, keywords):
        self.sentiment_inputs += list(texts)
        logits = np.array([[2.0 * ("늦어요" in t.split()), 0.0, 2.5 * ("예쁘지만" in t.split())] for t in texts])
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _bundle(weight: float) -> ModelBundle:
    return ModelBundle(schema=LabelSchema(KEYWORDS, levels=[-1, 0, 1]), thresholds={"배송": 0.5, "디자인": 0.5},
                       clause_weight=weight)


def test_pool_is_log_linear_and_normalised():
    review = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    clause = np.array([[0.1, 0.2, 0.7], [0.2, 0.2, 0.6]])
    assert pool(review, clause, 0.0) is review
    np.testing.assert_allclose(pool(review, clause, 1.0), clause, atol=1e-9)
    half = np.sqrt(review * clause)
    np.testing.assert_allclose(pool(review, clause, 0.5), half / half.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(pool(review, clause, 0.25).sum(axis=1), 1.0)


def test_keyword_clauses_pick_the_clause_where_the_keyword_fires():
    scorer = _ClauseScorer()
    texts = [TEXT, "배송 빠름"]
    ranges = keyword_clauses(scorer, texts, [(0, 0), (0, 1), (1, 0), (0, 7)])
    assert TEXT[slice(*ranges[0])] == "배송은 늦어요" and TEXT[slice(*ranges[1])] == "옷은 예쁘지만"
    assert ranges[2] is None  # one clause: the review itself
    assert ranges[3] is None  # not a keyword of the model
    assert scorer.keyword_inputs == ["옷은 예쁘지만", "배송은 늦어요"]  # only reviews with several clauses
    repeated = _ClauseScorer()  # a review listed once per keyword (as selection does) is scored once
    ranges = keyword_clauses(repeated, [TEXT, TEXT], [(0, 0), (1, 1)])
    assert [TEXT[slice(*r)] for r in ranges] == ["배송은 늦어요", "옷은 예쁘지만"]
    assert repeated.keyword_inputs == ["옷은 예쁘지만", "배송은 늦어요"]


def test_the_clause_weight_moves_the_level_the_analyzer_reports():
    plain_scorer = _ClauseScorer()
    plain = {k.keyword: k for k in ReviewAnalyzer(_bundle(0.0), plain_scorer).analyze([TEXT], highlights=False)[0].keywords}
    assert plain["배송"].level == 1 and plain["디자인"].level == 1  # the whole review leaks 예쁘지만 into 배송
    assert len(plain_scorer.keyword_inputs) == 1 and len(plain_scorer.sentiment_inputs) == 2  # no clause passes

    scorer = _ClauseScorer()
    pooled = {k.keyword: k for k in ReviewAnalyzer(_bundle(0.5), scorer).analyze([TEXT])[0].keywords}
    assert pooled["배송"].level == -1 and pooled["디자인"].level == 1
    for result in pooled.values():
        probs = result.level_probabilities
        assert abs(sum(probs.values()) - 1) < 1e-9 and max(probs, key=probs.get) == str(result.level)
    # highlights still explain the level on the whole-review model, within the keyword's clause
    assert [h.word for h in pooled["배송"].sentiment_highlights] == ["늦어요"]
    assert pooled["배송"].sentiment_highlights[0].score > 0


def test_pair_sentiment_skips_clause_passes_when_asked():
    scorer = _ClauseScorer()
    plain = pair_sentiment(scorer, [TEXT], [(0, "배송")], KEYWORDS, read_clause=False)
    assert plain.clause is plain.review and plain.clauses == [None] and scorer.sentiment_inputs == [TEXT]
    read = pair_sentiment(scorer, [TEXT], [(0, "배송")], KEYWORDS)
    assert int(np.argmax(read.review[0])) == 2 and int(np.argmax(read.clause[0])) == 0
    assert TEXT[slice(*read.clauses[0])] == "배송은 늦어요" and scorer.sentiment_inputs[-1] == "배송은 늦어요"
    np.testing.assert_allclose(read.pooled(0.5), pool(read.review, read.clause, 0.5))
    empty = pair_sentiment(scorer, [TEXT], [], KEYWORDS)
    assert empty.review.shape[0] == empty.clause.shape[0] == len(empty.clauses) == 0
    assert empty.pooled(0.5).shape[0] == 0


def test_reviews_without_keywords_pass_through_a_clause_weighted_bundle():
    results = ReviewAnalyzer(_bundle(0.5), _ClauseScorer()).analyze(["색이 예뻐요 정말", "좋아요"])
    assert [r.keywords for r in results] == [[], []]


def test_fit_clause_weight_takes_the_best_and_ties_to_the_smaller():
    weight, scores = fit_clause_weight(lambda w: {0.0: 0.5, 0.25: 0.7, 0.5: 0.7, 0.75: 0.6, 1.0: 0.1}[w])
    assert weight == 0.25 and set(scores) == set(CLAUSE_WEIGHTS)
    assert fit_clause_weight(lambda w: 0.3)[0] == 0.0


def _dataset() -> ReviewDataset:
    schema = LabelSchema(KEYWORDS, levels=[-1, 0, 1])
    return ReviewDataset([Review("1", TEXT, {"배송": -1, "디자인": 1}),
                          Review("2", "옷은 예쁘지만", {"디자인": 1})], schema, "clauses.csv")


def test_evaluation_and_calibration_use_the_clause_weight():
    data = _dataset()
    whole = evaluate_scorer(_ClauseScorer(), data, {"배송": 0.5, "디자인": 0.5}).summary()
    pooled = evaluate_scorer(_ClauseScorer(), data, {"배송": 0.5, "디자인": 0.5}, clause_weight=0.5).summary()
    assert whole["pipeline_f1"] == pytest.approx(2 / 3) and pooled["pipeline_f1"] == 1.0

    thresholds, weight, metrics = calibrate(_ClauseScorer(), data, min_support=1)
    assert set(thresholds) == set(KEYWORDS) and weight == 0.25  # the smallest weight that reads 배송 right
    assert metrics["validation"]["pipeline_f1"] == 1.0
    assert metrics["clause_weight_pipeline_f1"]["0.0"] == pytest.approx(2 / 3, abs=1e-4)
    kept = calibrate(_ClauseScorer(), data, min_support=1, clause_weight=0.0)
    assert kept[1] == 0.0 and "clause_weight_pipeline_f1" not in kept[2]
    with pytest.raises(ReviewlensError, match="clause_weight"):
        calibrate(_ClauseScorer(), data, clause_weight=1.5)


def test_bundles_without_a_clause_weight_read_the_whole_review(tmp_path):
    data = _bundle(0.5).to_dict()
    assert data["clause_weight"] == 0.5
    data.pop("clause_weight")
    assert ModelBundle.from_dict(data).clause_weight == 0.0


def test_selection_and_audit_see_the_levels_analyze_reports():
    from reviewlens.selection import BundleSelectionModel

    model = BundleSelectionModel(ReviewAnalyzer(_bundle(0.5), _ClauseScorer()))
    dists = model.sentiment_probs([TEXT, TEXT], ["배송", "디자인"])
    assert [int(np.argmax(d)) for d in dists] == [0, 2]  # 배송 -1 from its clause, 디자인 +1
    whole = BundleSelectionModel(ReviewAnalyzer(_bundle(0.0), _ClauseScorer())).sentiment_probs([TEXT], ["배송"])
    assert int(np.argmax(whole[0])) == 2
