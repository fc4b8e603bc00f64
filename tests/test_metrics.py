import numpy as np
import pytest

from reviewlens.calibration import apply_thresholds, best_threshold, fit_thresholds
from reviewlens.metrics import category_f1, keyword_report, pair_f1, sentiment_report


def test_pair_f1_hand_computed():
    gold = [{"디자인": 1, "배송": -1}, {"색상": 1}]
    pred = [{"디자인": 1, "배송": 1}, {"색상": 1, "가격": 0}]
    # true pairs: (디자인,1), (색상,1) -> tp 2; predicted 4; gold 3
    out = pair_f1(gold, pred)
    assert out["true_positives"] == 2
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    cat = category_f1(gold, pred)  # keywords alone: tp 3 (디자인, 배송, 색상) of 4 predicted, 3 gold
    assert cat["precision"] == pytest.approx(0.75) and cat["recall"] == pytest.approx(1.0)


def test_pair_f1_empty_is_zero_not_nan():
    assert pair_f1([{}], [{}])["f1"] == 0.0


def test_keyword_report_averages_hand_computed():
    y_true = np.array([[1, 0], [1, 1], [0, 1]])
    y_pred = np.array([[1, 0], [0, 1], [1, 1]])
    rep = keyword_report(y_true, y_pred, ["a", "b"])
    # a: tp1 fp1 fn1 -> p .5 r .5 ; b: tp2 fp0 fn0 -> 1, 1
    assert rep["a"]["precision"] == pytest.approx(0.5) and rep["b"]["f1"] == pytest.approx(1.0)
    assert rep["macro"]["f1"] == pytest.approx(0.75)
    assert rep["micro"]["precision"] == pytest.approx(3 / 4) and rep["micro"]["recall"] == pytest.approx(3 / 4)
    # samples: row1 f1 1, row2 f1 2/3, row3 f1 2/3 -> mean 7/9
    assert rep["samples"]["f1"] == pytest.approx(7 / 9)


def test_sentiment_report_micro_and_macro():
    rep = sentiment_report([0, 1, 2, 2], [0, 2, 2, 2], ["-1", "0", "1"])
    assert rep["micro"]["f1"] == pytest.approx(0.75)
    # per class f1: -1: 1, 0: 0, 1: 2*1*(2/3)/(5/3)=0.8 -> macro 0.6
    assert rep["macro"]["f1"] == pytest.approx(0.6)


def test_best_threshold_separates():
    probs = np.array([0.1, 0.2, 0.35, 0.4, 0.9])
    truth = np.array([0, 0, 1, 1, 1])
    t, f1 = best_threshold(probs, truth)
    assert 0.2 < t <= 0.35 and f1 == pytest.approx(1.0)


def test_fit_thresholds_fixes_a_rare_overpredicted_keyword():
    rng = np.random.default_rng(0)
    n = 400
    truth = np.zeros((n, 2), dtype=int)
    truth[:200, 0] = 1
    truth[:20, 1] = 1
    probs = np.zeros((n, 2))
    probs[:, 0] = np.where(truth[:, 0] == 1, rng.uniform(0.5, 1, n), rng.uniform(0, 0.5, n))
    # keyword 1 is over-predicted at 0.5 (the seed's 신축성): negatives up to 0.7, positives above 0.75
    probs[:, 1] = np.where(truth[:, 1] == 1, rng.uniform(0.75, 1, n), rng.uniform(0, 0.7, n))
    th = fit_thresholds(probs, truth, ["품질", "신축성"])
    assert th["신축성"] >= 0.7
    before = apply_thresholds(probs, ["품질", "신축성"], None)[:, 1]
    after = apply_thresholds(probs, ["품질", "신축성"], th)[:, 1]
    precision = lambda pred: (pred & (truth[:, 1] == 1)).sum() / max(pred.sum(), 1)
    assert precision(after) == 1.0 and precision(before) < 0.5


def test_fit_thresholds_low_support_uses_global():
    probs = np.array([[0.9, 0.6], [0.1, 0.2], [0.8, 0.3], [0.2, 0.1], [0.7, 0.4], [0.6, 0.2]])
    truth = np.array([[1, 1], [0, 0], [1, 0], [0, 0], [1, 0], [1, 0]])
    th = fit_thresholds(probs, truth, ["a", "b"], min_support=5)
    assert th["b"] == best_threshold(probs.ravel(), truth.ravel())[0]


def test_fit_thresholds_without_min_support_shares_the_global_one():
    rng = np.random.default_rng(1)
    truth = (rng.uniform(size=(300, 3)) < 0.3).astype(int)
    low = np.array([[0.5, 0.8, 0.3]])  # positives above, negatives below: each keyword its own best cut
    probs = np.where(truth == 1, rng.uniform(low, 1.0, truth.shape), rng.uniform(0.0, low - 0.05, truth.shape))
    global_t = best_threshold(probs.ravel(), truth.ravel())[0]
    assert fit_thresholds(probs, truth, ["a", "b", "c"], min_support=None) == {"a": global_t, "b": global_t,
                                                                               "c": global_t}
    assert fit_thresholds(probs, truth, ["a", "b", "c"], min_support=5) != {"a": global_t, "b": global_t,
                                                                            "c": global_t}


def test_sentiment_report_of_no_pairs_is_all_zero():
    report = sentiment_report([], [], ["-1", "0", "1"])
    assert report["micro"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["macro"]["f1"] == 0.0 and report["-1"]["support"] == 0


def test_decode_at_least_one_keeps_the_most_probable_keyword():
    from reviewlens.calibration import decode

    probs = np.array([[0.1, 0.3, 0.2], [0.9, 0.8, 0.1], [np.nan, np.nan, np.nan]])
    plain = decode(probs, 0.5)
    assert plain.tolist() == [[False, False, False], [True, True, False], [False, False, False]]
    forced = decode(probs, 0.5, at_least_one=True)
    assert forced.tolist() == [[False, True, False], [True, True, False], [False, False, False]]  # NaN: unscored
    assert apply_thresholds(probs, ["a", "b", "c"], {"a": 0.5, "b": 0.5, "c": 0.5}, at_least_one=True).tolist() \
        == forced.tolist()


def test_fit_thresholds_at_least_one_fits_the_threshold_for_the_extra_keywords():
    # the first keyword is always right and always the most probable, at a low 0.2; a second, at 0.15, is
    # right one time in four. Plain decoding must go down to 0.2 to keep the first; forced decoding keeps
    # it anyway, so its threshold only has to leave the second out (every cut above 0.15 ties: 0.5)
    probs = np.tile([[0.2, 0.15]], (8, 1))
    truth = np.zeros((8, 2), dtype=bool)
    truth[:, 0] = True
    truth[:2, 1] = True
    plain = fit_thresholds(probs, truth, ["a", "b"], None)
    forced = fit_thresholds(probs, truth, ["a", "b"], None, at_least_one=True)
    assert plain == {"a": 0.2, "b": 0.2}
    assert forced == {"a": 0.5, "b": 0.5}
    unsure = np.array([[0.1, 0.05]])
    assert apply_thresholds(unsure, ["a", "b"], plain).tolist() == [[False, False]]
    assert apply_thresholds(unsure, ["a", "b"], forced, at_least_one=True).tolist() == [[True, False]]


def test_expected_f1_threshold_is_the_plug_in_optimum():
    from reviewlens.calibration import expected_f1_threshold

    # calibrated 0.4s: predicting them gives expected F1 0.8 / (1.4 + 0.05) ~ 0.55, leaving them out 0
    probs = np.array([[0.4, 0.05]] * 10)
    assert expected_f1_threshold(probs) == 0.4
    # near-certain keywords: any threshold between the two groups ties, the one closest to 0.5 wins
    assert expected_f1_threshold(np.array([[0.99, 0.01]] * 10)) == 0.5
    assert expected_f1_threshold(np.full((0, 2), np.nan)) == 0.5


def test_platt_scaling_recalibrates_overconfident_probabilities():
    from reviewlens.calibration import PlattScaling, logit

    rng = np.random.default_rng(0)
    true_p = rng.uniform(0.05, 0.95, size=(4000, 2))
    truth = rng.random(true_p.shape) < true_p
    overconfident = 1.0 / (1.0 + np.exp(-2.0 * logit(true_p)))
    platt = PlattScaling.fit(overconfident, truth)
    assert 0.4 < platt.a < 0.6 and abs(platt.b) < 0.1
    assert np.abs(platt(overconfident) - true_p).max() < 0.05
    same = PlattScaling.fit(overconfident, np.ones_like(truth))  # one class only: identity
    assert np.allclose(same(overconfident), overconfident)
    edges = np.array([0.0, 1.0, np.nan])
    assert np.array_equal(same(edges), edges, equal_nan=True)  # the identity leaves probabilities exactly as they are
    assert np.isnan(platt(np.array([np.nan]))).all()
