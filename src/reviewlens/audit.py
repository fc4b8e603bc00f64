"""Which labels look wrong: confident-learning flags on out-of-fold probabilities, and keyword tagging rules.

The seed found its fashion labels wrong by reading them ("패션데이터셋 라벨 오류 확인": 신축성 on reviews
that never mention stretch). This module finds such labels for a person to read:

- ``out_of_fold_predictions`` trains k models (``reviewlens.training.train`` with any ``TrainConfig``, or
  any other ``fit``) so that every review is scored by a model that never saw its labels;
  ``bundle_predictions`` is the fast mode: one trained bundle's predictions (in-sample, so it finds fewer).
- ``find_label_issues`` applies confident learning (Northcutt et al., 2021) per label: a keyword is a
  binary class per review (labeled / not labeled) and a sentiment label is one of the levels. The
  threshold of each class is the mean self-confidence of the examples given that class; a label is
  flagged when the model is at least that sure of another class. Issues (and, by ``rank_reviews``, all
  reviews) are ranked by self-confidence (the probability of the given label) made comparable across
  label types by ranking it among the reviews' labels of the same type (``type_rank_scores``).
- ``TaggingRule`` (``load_rules``; ``rules/fashion.yaml`` ships the seed's guideline) flags reviews
  whose words call for a keyword the labels lack, or forbid one they have.

No cleanlab (AGPL-3.0) code is used; the method is re-implemented from the paper.
"""

from __future__ import annotations

import logging
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .calibration import PlattScaling
from .data import ReviewDataset
from .errors import ReviewlensError

if TYPE_CHECKING:
    from .baselines import EmbeddingFeatures

logger = logging.getLogger(__name__)

ISSUE_COLUMNS = ["rank", "id", "kind", "keyword", "given", "suggested", "self_confidence", "threshold",
                 "rank_score", "rule", "detail", "labels", "text"]
KINDS = {
    "keyword_extra": "labeled, but the model is sure the keyword is absent",
    "keyword_missing": "not labeled, but the model is sure the keyword is there",
    "no_keywords": "labeled with no keyword at all, but the model is sure the review mentions one",
    "sentiment": "the model is sure of another level",
    "rule": "breaks a keyword tagging rule",
}


# -- model probabilities for the labels ------------------------------------------------------------------


@dataclass
class Predictions:
    """Probabilities for a dataset's labels, in its schema's order (NaN where the model lacks a keyword/level).

    ``keyword_probs`` (n, K): every keyword of every review. ``sentiment_probs`` (m, L): the level
    distribution of every labeled (review, keyword) pair in ``pairs``.
    """

    keyword_probs: np.ndarray
    pairs: list[tuple[int, str]]
    sentiment_probs: np.ndarray
    method: str = ""


def given_keywords(dataset: ReviewDataset) -> np.ndarray:
    """(n, K) booleans: the keywords each review is labeled with."""
    given = np.zeros((len(dataset), dataset.schema.num_keywords), dtype=bool)
    for i, review in enumerate(dataset.reviews):
        for keyword in review.labels or {}:
            given[i, dataset.schema.keyword_index(keyword)] = True
    return given


def given_levels(dataset: ReviewDataset, pairs: Sequence[tuple[int, str]]) -> np.ndarray:
    """(len(pairs),) the index of each labeled (review, keyword) pair's given level."""
    return np.array([dataset.schema.level_index(dataset.reviews[i].labels[k]) for i, k in pairs], dtype=int)


def labeled_pairs(dataset: ReviewDataset) -> list[tuple[int, str]]:
    """(review index, keyword) of every labeled keyword."""
    return [(i, k) for i, r in enumerate(dataset.reviews) for k in (r.labels or {})]


def predictions_from_model(dataset: ReviewDataset, model, indices: Sequence[int] | None = None,
                           method: str = "") -> Predictions:
    """Score ``dataset`` (or the reviews at ``indices``) with a model that has ``keyword_probs``,
    ``sentiment_probs``, ``keywords`` and ``levels`` (a bundle via ``selection.BundleSelectionModel``, or
    ``baselines.FastReviewModel``); keywords and levels are matched by name."""
    schema = dataset.schema
    rows = list(range(len(dataset))) if indices is None else list(indices)
    texts = [dataset.reviews[i].text for i in rows]
    model_keywords = list(model.keywords)
    raw = np.asarray(model.keyword_probs(texts), dtype=float).reshape(len(rows), len(model_keywords))
    keyword_probs = np.full((len(dataset), schema.num_keywords), np.nan)
    for j, keyword in enumerate(schema.keywords):
        if keyword in model_keywords:
            keyword_probs[rows, j] = raw[:, model_keywords.index(keyword)]
    row_set = set(rows)
    pairs = [(i, k) for i, k in labeled_pairs(dataset) if i in row_set]
    sentiment = np.full((len(pairs), schema.num_levels), np.nan)
    known = [p for p, (_, k) in enumerate(pairs) if k in model_keywords]
    if known:
        dists = np.asarray(model.sentiment_probs([dataset.reviews[pairs[p][0]].text for p in known],
                                                 [pairs[p][1] for p in known]), dtype=float)
        model_levels = list(model.levels)
        for j, level in enumerate(schema.levels):
            if level in model_levels:
                sentiment[known, j] = dists[:, model_levels.index(level)]
    return Predictions(keyword_probs, pairs, sentiment, method)


def bundle_predictions(dataset: ReviewDataset, model: str | Path | None, *, batch_size: int = 64,
                       device: str = "auto") -> Predictions:
    """The fast mode: one trained bundle's predictions. A bundle trained on these labels has seen them,
    so it flags fewer errors than out-of-fold training; use it to screen, k-fold to audit."""
    from .selection import BundleSelectionModel

    return predictions_from_model(dataset, BundleSelectionModel.from_pretrained(model, batch_size=batch_size,
                                                                                   device=device),
                                  method=f"in-sample predictions of bundle {model} (fast mode)")


def kfold_indices(n: int, folds: int, seed: int = 42) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled k-fold (train, held-out) index pairs."""
    if folds < 2:
        raise ReviewlensError(f"out-of-fold predictions need at least 2 folds, not {folds}")
    if n < folds:
        raise ReviewlensError(f"{n} review(s) cannot be split into {folds} folds")
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, folds)
    return [(np.sort(np.concatenate(parts[:f] + parts[f + 1:])), np.sort(parts[f])) for f in range(folds)]


def transformer_fit(config, workdir: str | Path) -> Callable[[ReviewDataset, int], object]:
    """A ``fit`` for ``out_of_fold_predictions``: ``reviewlens.training.train`` with ``config`` per fold,
    each fold's bundle written to ``workdir/fold-<i>``."""
    from .selection import BundleSelectionModel
    from .training import TrainConfig, train

    config = replace(config or TrainConfig(), checkpoint_dir=None)  # each fold checkpoints next to its bundle
    if config.init_from:
        raise ReviewlensError(f"init_from {config.init_from}: out-of-fold models cannot warm-start from a bundle, "
                              "which has seen the held-out reviews' labels; train them from the base")

    def fit(part: ReviewDataset, fold: int):
        bundle = train(part, Path(workdir) / f"fold-{fold}", config)
        return BundleSelectionModel.from_pretrained(bundle.path)

    return fit


def out_of_fold_predictions(dataset: ReviewDataset, config=None, *, folds: int = 5, seed: int = 42,
                            fit: Callable[[ReviewDataset, int], object] | None = None,
                            workdir: str | Path | None = None) -> Predictions:
    """Every review scored by a model trained on the other folds.

    ``fit(train_part, fold) -> model`` defaults to transformer training with ``config`` (a TrainConfig:
    base, epochs, ...); the fold bundles go to ``workdir``, or to a temporary folder removed afterwards.
    """
    if not dataset.labeled:
        raise ReviewlensError(f"{dataset.source}: an audit needs labels on every review")
    if fit is None:
        base = getattr(config, "base", None) if config is not None else None
        method = f"out-of-fold predictions, {folds} folds" + (f", base {base}" if base else "")
        if workdir is None:
            with tempfile.TemporaryDirectory(prefix="reviewlens-audit-") as tmp:
                return _out_of_fold(dataset, transformer_fit(config, tmp), folds, seed, method)
        return _out_of_fold(dataset, transformer_fit(config, workdir), folds, seed, method)
    return _out_of_fold(dataset, fit, folds, seed, f"out-of-fold predictions, {folds} folds")


def _out_of_fold(dataset: ReviewDataset, fit, folds: int, seed: int, method: str) -> Predictions:
    schema = dataset.schema
    keyword_probs = np.full((len(dataset), schema.num_keywords), np.nan)
    pairs = labeled_pairs(dataset)
    pair_index = {pair: p for p, pair in enumerate(pairs)}
    sentiment = np.full((len(pairs), schema.num_levels), np.nan)
    for fold, (train_idx, test_idx) in enumerate(kfold_indices(len(dataset), folds, seed)):
        logger.info("audit fold %d/%d: training on %d reviews", fold + 1, folds, len(train_idx))
        model = fit(dataset.subset(train_idx), fold)
        part = predictions_from_model(dataset, model, test_idx)
        keyword_probs[test_idx] = part.keyword_probs[test_idx]
        for p, pair in enumerate(part.pairs):
            sentiment[pair_index[pair]] = part.sentiment_probs[p]
    return Predictions(keyword_probs, pairs, sentiment, method)


def keyword_log_loss(dataset: ReviewDataset, predictions: Predictions) -> float:
    """Mean per review of the binary log loss of every keyword's presence or absence in ``dataset``'s labels
    under ``predictions``; NaN probabilities count as uninformative (0.5)."""
    given = given_keywords(dataset)
    p = np.clip(np.nan_to_num(predictions.keyword_probs, nan=0.5), 1e-6, 1 - 1e-6)
    return float(-np.sum(np.where(given, np.log(p), np.log(1 - p))) / max(len(dataset), 1))


def level_log_loss(dataset: ReviewDataset, predictions: Predictions) -> float:
    """Mean per review of the log loss of the level of every labeled keyword under ``predictions``; NaN
    probabilities (unscored pairs) cost nothing."""
    if not predictions.pairs:
        return 0.0
    levels = given_levels(dataset, predictions.pairs)
    level_p = predictions.sentiment_probs[np.arange(len(levels)), levels]
    return float(-np.sum(np.log(np.clip(np.nan_to_num(level_p, nan=1.0), 1e-6, 1.0))) / max(len(dataset), 1))


def log_loss(dataset: ReviewDataset, predictions: Predictions) -> float:
    """Mean per review of the log loss of ``dataset``'s labels under ``predictions``: every keyword (present
    or absent, binary) plus the level of every labeled keyword (``keyword_log_loss + level_log_loss``)."""
    return keyword_log_loss(dataset, predictions) + level_log_loss(dataset, predictions)


def geometric_mean(predictions: Sequence[Predictions], method: str = "") -> Predictions:
    """The normalised geometric mean of several models' predictions of the same labels: per keyword of
    ``p`` against ``1 - p``, per pair over the levels (a product of experts; one model's confident "no"
    is not averaged away as an arithmetic mean would)."""
    if not predictions:
        raise ReviewlensError("geometric_mean needs at least one set of predictions")
    first = predictions[0]
    if any(p.pairs != first.pairs or p.keyword_probs.shape != first.keyword_probs.shape for p in predictions):
        raise ReviewlensError("geometric_mean: the predictions are not of the same labels")

    from .baselines import binary_product_of_experts, product_of_experts

    return Predictions(binary_product_of_experts([p.keyword_probs for p in predictions]), list(first.pairs),
                       product_of_experts([p.sentiment_probs for p in predictions]),
                       method or " x ".join(p.method for p in predictions))


def platt_calibrated(dataset: ReviewDataset, predictions: Predictions) -> Predictions:
    """``predictions`` recalibrated to the labels under audit: per keyword a logistic regression of its
    presence on the logit of its probability (Platt scaling), and one multinomial logistic regression of the
    given level on the log level probabilities. Each map is monotone per keyword and has two (levels: twelve)
    parameters, so it cannot learn which reviews are wrong; it only puts keywords and levels on one scale.

    Why: ``presence_evidence`` compares a keyword's probability with its prior across keywords, and the
    ranking compares level probabilities across given levels, both of which assume calibrated probabilities;
    a geometric mean of two models that read the same text counts its evidence twice and is overconfident.
    Keywords (and levels) with fewer than two labels on either side, and unscored (NaN) rows, stay as they are.
    """
    from sklearn.linear_model import LogisticRegression

    given = given_keywords(dataset)
    keyword_probs = predictions.keyword_probs.copy()
    for j in range(keyword_probs.shape[1]):  # PlattScaling skips NaN rows, and too few labels leave p as it is
        keyword_probs[:, j] = PlattScaling.fit(keyword_probs[:, j], given[:, j])(keyword_probs[:, j])
    sentiment_probs = predictions.sentiment_probs.copy()
    if predictions.pairs:
        levels = given_levels(dataset, predictions.pairs)
        scored = ~np.isnan(sentiment_probs).any(axis=1)
        counts = np.bincount(levels[scored], minlength=sentiment_probs.shape[1])
        if (counts >= 2).sum() >= 2:
            x = np.log(np.clip(sentiment_probs[scored], 1e-9, 1.0))
            model = LogisticRegression(max_iter=1000).fit(x, levels[scored])
            calibrated = np.zeros_like(x)
            calibrated[:, model.classes_] = model.predict_proba(x)
            sentiment_probs[scored] = calibrated
    return Predictions(keyword_probs, list(predictions.pairs), sentiment_probs, predictions.method)


TFIDF_ALPHAS = (1e-5, 3e-5, 1e-4)
EMBEDDING_ALPHAS = (3e-5, 1e-4, 3e-4)
"""L2 penalties tried for the linear audit models. Each model's keyword and level heads each keep the penalty
whose out-of-fold predictions give the given labels the lowest log loss (``keyword_log_loss``,
``level_log_loss``): the labels under audit are all there is to choose on."""


def _best_per_head(dataset: ReviewDataset, runs: list[tuple[float, Predictions]], name: str) -> Predictions:
    """The keyword probabilities of the run (penalty, predictions) with the lowest ``keyword_log_loss`` and
    the level probabilities of the one with the lowest ``level_log_loss``: the two heads are separate
    regressions, and one penalty for both is chosen by the keyword loss, 25 binary terms per review against
    one level term."""
    keyword_alpha, keywords = min(runs, key=lambda run: keyword_log_loss(dataset, run[1]))
    level_alpha, levels = min(runs, key=lambda run: level_log_loss(dataset, run[1]))
    return Predictions(keywords.keyword_probs, list(keywords.pairs), levels.sentiment_probs,
                       f"{name} (alpha {keyword_alpha:g} keywords, {level_alpha:g} levels)")


def linear_out_of_fold(dataset: ReviewDataset, *, folds: int = 10, seed: int = 42,
                       embed: Callable[[list[str]], np.ndarray] | EmbeddingFeatures | None = None) -> Predictions:
    """The quick audit: out-of-fold predictions of linear models, in minutes instead of k
    transformer trainings.

    A ``baselines.FastReviewModel`` on TF-IDF character n-grams and, with ``embed`` (e.g.
    ``bases.offline_embedder()``), another on frozen sentence embeddings (a linear probe), combined by
    ``geometric_mean``. Each model's keyword and level heads get their own L2 penalty by out-of-fold log loss
    (``TFIDF_ALPHAS``, ``EMBEDDING_ALPHAS``, ``_best_per_head``); each model is ``platt_calibrated`` before
    the mean (so that it multiplies calibrated experts) and the mean again after it (it counts the evidence the
    two models share twice). Ten folds by default: each model learns
    from 90% of the labels. Pass an ``EmbeddingFeatures`` instead of a function to reuse its vectors across
    calls (datasets sharing texts).
    """
    from .baselines import EmbeddingFeatures, FastModelConfig, FastReviewModel, TfidfFeatures

    views = [("TF-IDF character n-grams", TfidfFeatures(dataset.texts), "sgd", 1.0, TFIDF_ALPHAS)]
    # The embedding model is a plain probe: without keyword x embedding copies for sentiment (TF-IDF keeps its
    # own) label_audit.py gives NIKL 0.79 / 0.78 on noise seeds 0-2 / 3-5 (0.78 / 0.77 with them) in half the
    # time; on the fashion reviews, which carry several keywords each, 0.44 (0.45 with them).
    if embed is not None:
        features = embed if isinstance(embed, EmbeddingFeatures) else EmbeddingFeatures(dataset.texts, embed)
        views.append(("sentence embeddings", features, "lbfgs", 0.0, EMBEDDING_ALPHAS))
    parts = []
    for name, features, solver, interactions, alphas in views:
        runs = []
        for alpha in alphas:
            config = FastModelConfig(alpha=alpha, solver=solver, keyword_interactions=interactions,
                                     threshold_folds=0, seed=seed)
            logger.info("linear audit: %s, alpha %g, %d folds", name, alpha, folds)
            runs.append((alpha, out_of_fold_predictions(
                dataset, folds=folds, seed=seed,
                fit=lambda part, fold, c=config, f=features: FastReviewModel(part.schema, c, features=f).fit(part))))
        parts.append(platt_calibrated(dataset, _best_per_head(dataset, runs, name)))
    combined = platt_calibrated(dataset, geometric_mean(parts)) if len(parts) > 1 else parts[0]
    combined.method = (f"out-of-fold predictions, {folds} folds, of linear models on "
                       + " and ".join(p.method for p in parts)
                       + (" (each Platt-calibrated; their geometric mean, Platt-calibrated)" if len(parts) > 1
                          else " (Platt-calibrated)"))
    return combined


# -- confident learning ----------------------------------------------------------------------------------


@dataclass
class LabelIssue:
    """One suspected wrong label (or rule violation) of one review."""

    row: int
    id: str
    kind: str  # keyword_extra | keyword_missing | sentiment | rule
    keyword: str
    given: str
    suggested: str
    self_confidence: float | None = None  # the model's probability of the given label
    threshold: float | None = None  # the mean self-confidence of the given class
    rule: str = ""
    detail: str = ""
    rank_score: float | None = None  # share of reviews as unsure of a label of this type (``type_rank_scores``)

    def sort_key(self) -> tuple:
        missing = 2.0
        return (self.rank_score if self.rank_score is not None else missing,
                self.self_confidence if self.self_confidence is not None else missing, self.row, self.keyword)


def _confident_class(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per row, the class with the highest probability among those at or above their threshold; -1 if none."""
    above = probs >= thresholds[None, :]
    masked = np.where(above, probs, -np.inf)
    best = masked.argmax(axis=1)
    return np.where(above.any(axis=1), best, -1)


def _disagreement(probs: np.ndarray, given: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per row, the class the model is confident of instead of the given one, or -1.

    Confident learning's class (``_confident_class``) must differ from the given label *and* be more probable
    than it: a keyword the model barely learned has a tiny mean self-confidence, and without the second
    condition every review with a probability above that tiny threshold would be flagged as missing it.
    """
    confident = _confident_class(probs, thresholds)
    rows = np.arange(len(probs))
    beats = probs[rows, np.maximum(confident, 0)] > probs[rows, given]
    return np.where((confident >= 0) & (confident != given) & beats, confident, -1)


def _class_thresholds(probs: np.ndarray, given: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean self-confidence of each class over the examples given it (inf for a class no example has)."""
    out = np.full(n_classes, np.inf)
    for c in range(n_classes):
        mask = given == c
        if mask.any():
            out[c] = float(np.mean(probs[mask, c]))
    return out


MIN_SUPPORT = 10
"""Keywords labeled on fewer reviews are not judged by the model: trained on the other folds' handful of
examples, it cannot know them, and their every label would top the list."""


def too_rare(dataset: ReviewDataset, min_support: int = MIN_SUPPORT) -> list[str]:
    """Keywords labeled on fewer than ``min_support`` reviews (their keyword labels get no model flags)."""
    counts = Counter(k for r in dataset.reviews for k in (r.labels or {}))
    return [k for k in dataset.schema.keywords if counts[k] < min_support]


def find_label_issues(dataset: ReviewDataset, predictions: Predictions,
                      min_support: int = MIN_SUPPORT) -> list[LabelIssue]:
    """Confident-learning flags for every keyword label (present/absent) and sentiment label, ranked.

    Keywords labeled on fewer than ``min_support`` reviews are left out of the keyword flags (``too_rare``).
    """
    schema = dataset.schema
    reviews = dataset.reviews
    issues: list[LabelIssue] = []
    given = given_keywords(dataset).astype(int)
    rare = set(too_rare(dataset, min_support))
    for j, keyword in enumerate(schema.keywords):
        p = predictions.keyword_probs[:, j]
        scored = ~np.isnan(p)
        if not scored.any() or keyword in rare:
            continue
        rows = np.flatnonzero(scored)
        two = np.stack([1.0 - p[rows], p[rows]], axis=1)
        labels = given[rows, j]
        thresholds = _class_thresholds(two, labels, 2)
        confident = _disagreement(two, labels, thresholds)
        for r, label, chosen, probs in zip(rows, labels, confident, two):
            if chosen < 0:
                continue
            review = reviews[r]
            if label == 1:
                issues.append(LabelIssue(int(r), review.id, "keyword_extra", keyword,
                                         f"{keyword} {review.labels[keyword]}", f"remove {keyword}",
                                         float(probs[1]), float(thresholds[1])))
            else:
                issues.append(LabelIssue(int(r), review.id, "keyword_missing", keyword, "(not labeled)",
                                         f"add {keyword}", float(probs[0]), float(thresholds[0])))
    issues += _empty_label_issues(dataset, given, predictions.keyword_probs)
    dists = predictions.sentiment_probs
    pairs = predictions.pairs
    if len(pairs):
        level_given = np.array([schema.level_index(reviews[i].labels[k]) for i, k in pairs])
        scored = ~np.isnan(dists).any(axis=1)
        rows = np.flatnonzero(scored)
        if len(rows):
            thresholds = _class_thresholds(dists[rows], level_given[rows], schema.num_levels)
            confident = _disagreement(dists[rows], level_given[rows], thresholds)
            for p, chosen in zip(rows, confident):
                label = level_given[p]
                if chosen < 0:
                    continue
                i, keyword = pairs[p]
                issues.append(LabelIssue(int(i), reviews[i].id, "sentiment", keyword,
                                         f"{keyword} {schema.levels[label]}", f"{keyword} {schema.levels[chosen]}",
                                         float(dists[p, label]), float(thresholds[label])))
    issues = _with_rank_scores(issues, type_label_scores(dataset, predictions), given, schema.keywords)
    return sorted(issues, key=LabelIssue.sort_key)


def _none_probability(keyword_probs: np.ndarray, empty_rate: float | None = None) -> np.ndarray:
    """(n,) the probability that a review mentions no keyword.

    The product of 1 - p over the keywords (independent sigmoids; NaN columns, keywords the model lacks, are
    left out) ignores how many keywords reviews carry: for a review whose keyword the model is unsure of it
    is high even where every review has a keyword. With ``empty_rate`` (the share of reviews labeled with
    no keyword) the odds are rescaled by one factor so that the mean probability matches that rate (prior
    matching, as in label-shift correction): an empty label is then as surprising as the data says it is.
    """
    q = np.prod(np.where(np.isnan(keyword_probs), 1.0, 1.0 - keyword_probs), axis=1)
    if empty_rate is None or not len(q):
        return q
    target = float(np.clip(empty_rate, 0.5 / len(q), 1 - 0.5 / len(q)))
    odds = np.clip(q, 1e-12, 1 - 1e-12) / np.clip(1 - q, 1e-12, None)
    low, high = -30.0, 30.0  # log of the factor, by bisection: the mean is increasing in it
    for _ in range(60):
        mid = (low + high) / 2
        scaled = odds * np.exp(mid)
        if np.mean(scaled / (1 + scaled)) < target:
            low = mid
        else:
            high = mid
    scaled = odds * np.exp((low + high) / 2)
    return scaled / (1 + scaled)


def _none_probabilities(keyword_probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """(n,) ``_none_probability`` matched to the share of reviews ``given`` (n, K) labels with no keyword, over
    the reviews the model scored; 1.0 for reviews it did not score at all."""
    scored = ~np.isnan(keyword_probs).all(axis=1)
    out = np.ones(len(keyword_probs))
    if scored.any():
        empty_rate = float(np.mean(~given[scored].astype(bool).any(axis=1)))
        out[scored] = _none_probability(keyword_probs[scored], empty_rate)
    return out


def _empty_label_issues(dataset: ReviewDataset, given: np.ndarray, keyword_probs: np.ndarray) -> list[LabelIssue]:
    """Reviews labeled with no keyword although the model is sure they mention one (confident learning over
    "has a keyword" / "has none"). The seed removed such reviews in its final clean-up ("라벨 미출력 리뷰")."""
    scored = ~np.isnan(keyword_probs).all(axis=1)
    if not scored.any() or not dataset.schema.num_keywords:
        return []
    rows = np.flatnonzero(scored)
    none = _none_probabilities(keyword_probs, given)[rows]
    two = np.stack([none, 1.0 - none], axis=1)  # class 0: no keyword, class 1: some keyword
    labels = (given[rows].sum(axis=1) > 0).astype(int)
    thresholds = _class_thresholds(two, labels, 2)
    confident = _disagreement(two, labels, thresholds)
    out = []
    for r, label, chosen, probs in zip(rows, labels, confident, two):
        if label == 0 and chosen == 1:
            best = dataset.schema.keywords[int(np.nanargmax(keyword_probs[r]))]
            out.append(LabelIssue(int(r), dataset.reviews[r].id, "no_keywords", best, "(no keywords)",
                                  f"add {best}", float(probs[0]), float(thresholds[0])))
    return out


EXTRA_AMONG_SEVERAL = "keyword_extra_among_several"
"""The label type of a keyword labeled on a review that has other keywords too (see ``label_type``)."""


def label_type(kind: str, keywords_given: int) -> str:
    """The label type a label of issue ``kind`` is ranked within: its kind, except that a labeled keyword of a
    review with several keywords (``EXTRA_AMONG_SEVERAL``) is compared with its like only.

    Most reviews carry one keyword (NIKL: 91%), so a keyword label the model doubts is usually a keyword it
    finds ambiguous (본품#품질 vs 제품 전체#품질), and the review must have *some* keyword. A doubted keyword
    beside another one the review also has is a different case: removing it leaves a well-formed label set.
    Ranked among the single keywords, those extra keywords drown in ambiguous categories (0.29 of the injected
    ones in the top 10% of ``benchmarks/label_audit.py``); among their like, 0.51.
    """
    return EXTRA_AMONG_SEVERAL if kind == "keyword_extra" and keywords_given > 1 else kind


def _lowest(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """(n,) per row the lowest of ``values`` (n, K) where ``where`` holds and the value is not NaN; inf if none."""
    if not values.size:
        return np.full(len(where), np.inf)
    return np.min(np.where(where & ~np.isnan(values), values, np.inf), axis=1)


def type_self_confidences(dataset: ReviewDataset, predictions: Predictions) -> dict[str, np.ndarray]:
    """Per label type (``label_type``: ``keyword_extra``: keyword labeled, alone; ``EXTRA_AMONG_SEVERAL``:
    keyword labeled beside others; ``keyword_missing``: not labeled; ``no_keywords``: no keyword at all;
    ``sentiment``: level), each review's lowest self-confidence over its labels of that type: (n,) arrays,
    ``inf`` where a review has no label of the type or the model did not score it."""
    n = len(dataset)
    given = given_keywords(dataset)
    probs = predictions.keyword_probs
    several = (given.sum(axis=1) > 1)[:, None]
    out = {"keyword_extra": _lowest(probs, given & ~several), EXTRA_AMONG_SEVERAL: _lowest(probs, given & several),
           "keyword_missing": _lowest(1.0 - probs, ~given), "no_keywords": np.full(n, np.inf),
           "sentiment": np.full(n, np.inf)}
    empty = ~given.any(axis=1) & ~np.isnan(probs).all(axis=1) if probs.size else np.zeros(n, bool)
    if empty.any():  # labeled with no keyword: how sure the model is that the review mentions none
        out["no_keywords"][empty] = _none_probabilities(probs, given)[empty]
    if predictions.pairs:  # a review's lowest probability of a level it was given
        levels = given_levels(dataset, predictions.pairs)
        values = predictions.sentiment_probs[np.arange(len(levels)), levels]
        rows = np.array([i for i, _ in predictions.pairs])
        scored = ~np.isnan(values)
        np.minimum.at(out["sentiment"], rows[scored], values[scored])
    return out


def keyword_priors(given: np.ndarray) -> np.ndarray:
    """(K,) the share of reviews labeled with each keyword (at least half a review's worth, never 0)."""
    n = max(len(given), 1)
    return np.maximum(given.sum(axis=0), 0.5) / n


def presence_evidence(probs: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """``log(p / prior)`` (``priors`` broadcast against ``probs``, e.g. (n, K) and (K,)): how much more (> 0)
    or less (< 0) likely the model finds a keyword in this review than in a review drawn at random. NaN
    where ``probs`` is NaN."""
    return np.log(np.clip(probs, 1e-9, 1.0)) - np.log(priors)


def type_label_scores(dataset: ReviewDataset, predictions: Predictions,
                      confidences: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """What ``rank_reviews`` ranks within each label type: ``type_self_confidences``, except that a labeled
    keyword is scored by its ``presence_evidence`` instead of its raw probability.

    Why: a wrong keyword that slips into a label set is more often a common one (an annotator's habit, a
    default), and a common keyword keeps a fair probability on any review. If wrong keywords are added in
    proportion to their frequency, the odds that a labeled keyword is wrong are proportional to
    ``prior / p`` (Bayes), so ``log(p / prior)`` ranks them; raw ``p`` is right only for keywords added
    uniformly at random. On ``benchmarks/label_audit.py`` (NIKL, 5% noise, TF-IDF model) the injected
    keywords that rank in the top 10% go from 0.51 to 0.61. A missing keyword (the labeler left one out)
    and a level stay scored by the model's probability, which is what the same reasoning gives for them.
    ``confidences``: ``type_self_confidences`` of the same arguments, when the caller has them already.
    """
    out = dict(confidences if confidences is not None else type_self_confidences(dataset, predictions))
    given = given_keywords(dataset)
    evidence = presence_evidence(predictions.keyword_probs, keyword_priors(given))
    several = (given.sum(axis=1) > 1)[:, None]
    out["keyword_extra"] = _lowest(evidence, given & ~several)
    out[EXTRA_AMONG_SEVERAL] = _lowest(evidence, given & several)
    return out


def _share_at_or_below(values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For each query, the share of ``values`` (n,) that are finite and at or below it (``inf`` for queries
    that are not finite)."""
    ranked = np.sort(values[np.isfinite(values)])
    share = np.searchsorted(ranked, queries, side="right") / max(len(values), 1)
    return np.where(np.isfinite(queries), share, np.inf)


def type_rank_scores(confidences: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Self-confidences made comparable across label types: the share of reviews whose lowest self-confidence
    of the same type is at or below the review's (``inf`` where it has no such label).

    The probability of a present keyword, of an absent one, of "no keyword at all" and of a sentiment level
    are not on one scale (a rare keyword's labels are always less probable than a level of a 95%-positive
    polarity), so one threshold over raw self-confidence lets one type fill the list. Ranked within its
    type, each label is compared with its peers; a type few reviews have (an empty label set among
    reviews that nearly all have a keyword) puts its members near the top, as the data says it should.
    """
    return {kind: _share_at_or_below(values, values) for kind, values in confidences.items()}


def _with_rank_scores(issues: list["LabelIssue"], scores: dict[str, np.ndarray], given: np.ndarray,
                      keywords: Sequence[str]) -> list["LabelIssue"]:
    """``issues`` with ``rank_score`` set: the ``type_rank_scores`` share of their own label's score
    (``type_label_scores``) within their ``label_type``."""
    out = list(issues)
    priors = dict(zip(keywords, keyword_priors(given)))
    keywords_given = given.sum(axis=1)
    types = [label_type(issue.kind, int(keywords_given[issue.row])) for issue in out]
    for kind, values in scores.items():
        at = [k for k, issue in enumerate(out) if types[k] == kind and issue.self_confidence is not None]
        if at:
            own = np.array([out[k].self_confidence for k in at], dtype=float)
            if kind in ("keyword_extra", EXTRA_AMONG_SEVERAL):
                own = presence_evidence(own, np.array([priors[out[k].keyword] for k in at]))
            shares = _share_at_or_below(values, own)
            for k, share in zip(at, shares):
                out[k] = replace(out[k], rank_score=float(share))
    return out


def review_self_confidence(dataset: ReviewDataset, predictions: Predictions,
                           confidences: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """(n,) each review's lowest self-confidence over all its labels (keywords present and absent, levels);
    ``confidences``: ``type_self_confidences`` of the same arguments, when the caller has them already."""
    confidences = confidences if confidences is not None else type_self_confidences(dataset, predictions)
    lowest = np.min(np.stack(list(confidences.values())), axis=0)
    return np.where(np.isinf(lowest), 1.0, lowest)


def rank_reviews(dataset: ReviewDataset, predictions: Predictions) -> np.ndarray:
    """Review indices, most suspect first: by the lowest ``type_rank_scores`` over the label types, ties by
    the lowest raw self-confidence.

    Flags are not ranked first: confident learning's per-class thresholds leave out labels that are merely
    improbable (an empty label set the model gives 3% to, among reviews that all have keywords), while
    labels it does flag can be far less suspect than those. On NIKL train with 5% injected noise
    (``benchmarks/label_audit.py``) flagged-first ordering put 0.61 of the wrong labels in the top 10%,
    this one 0.70 (0.74 since keywords beside others form their own type, ``label_type``).
    """
    confidences = type_self_confidences(dataset, predictions)
    shares = type_rank_scores(type_label_scores(dataset, predictions, confidences))
    scores = np.min(np.stack(list(shares.values())), axis=0)
    return np.lexsort((review_self_confidence(dataset, predictions, confidences), scores))


# -- keyword tagging rules ----------------------------------------------------------------------------------


def _squash(text: str) -> str:
    """NFC text without whitespace: rules match words whether or not a review spaces them."""
    return "".join(unicodedata.normalize("NFC", text).split())


@dataclass
class TaggingRule:
    """A guideline for one kind of wording: which keyword it calls for, and which it rules out."""

    id: str
    description: str
    words: list[str]
    expect_any: list[str] = field(default_factory=list)
    forbid: list[str] = field(default_factory=list)
    with_any: list[str] = field(default_factory=list)
    unless_any: list[str] = field(default_factory=list)

    def fires(self, text: str) -> str | None:
        """The trigger word found in ``text`` (spaces ignored) when the rule applies, else None."""
        squashed = _squash(text)
        word = next((w for w in self.words if _squash(w) in squashed), None)
        if word is None:
            return None
        if self.with_any and not any(_squash(w) in squashed for w in self.with_any):
            return None
        if any(_squash(w) in squashed for w in self.unless_any):
            return None
        return word


@dataclass
class RuleSet:
    """Rules with the keyword aliases they are written against."""

    name: str
    rules: list[TaggingRule]
    aliases: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def keywords(self) -> set[str]:
        return {k for rule in self.rules for k in (*rule.expect_any, *rule.forbid)}


BUILTIN_RULES = ("fashion",)


def load_rules(path_or_name: str | Path) -> RuleSet:
    """Rules from a YAML file, or a packaged rule set by name (``fashion``)."""
    import yaml

    name = str(path_or_name)
    if name in BUILTIN_RULES and not Path(name).exists():
        text = resources.files("reviewlens").joinpath("rules", f"{name}.yaml").read_text(encoding="utf-8")
        source = f"reviewlens/rules/{name}.yaml"
    else:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except OSError as exc:
            raise ReviewlensError(f"{name}: cannot read the rules file ({exc.strerror or exc}); give a YAML file "
                                  f"or one of the packaged rule sets: {', '.join(BUILTIN_RULES)}") from exc
        source = name
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ReviewlensError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ReviewlensError(f"{source}: a rules file is a mapping with a 'rules' list (see reviewlens/rules/"
                              "fashion.yaml)")
    known = {"id", "description", "words", "expect_any", "forbid", "with_any", "unless_any"}
    rules = []
    for n, item in enumerate(data["rules"], start=1):
        where = f"{source}: rule {n}"
        if not isinstance(item, dict):
            raise ReviewlensError(f"{where}: expected a mapping with id, words and expect_any or forbid")
        unknown = sorted(set(item) - known)
        if unknown:
            raise ReviewlensError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
        lists = {}
        for key in ("words", "expect_any", "forbid", "with_any", "unless_any"):
            value = item.get(key) or []
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise ReviewlensError(f"{where}, field '{key}': expected a list of non-empty strings")
            lists[key] = [v.strip() for v in value]
        if not lists["words"]:
            raise ReviewlensError(f"{where}, field 'words': a rule needs at least one trigger word")
        if not lists["expect_any"] and not lists["forbid"]:
            raise ReviewlensError(f"{where}: give 'expect_any' or 'forbid' (what the rule asks of the labels)")
        rules.append(TaggingRule(id=str(item.get("id") or f"rule-{n}"), description=str(item.get("description", "")),
                                 **lists))
    ids = [r.id for r in rules]
    twice = sorted(k for k, c in Counter(ids).items() if c > 1)
    if twice:
        raise ReviewlensError(f"{source}: rule ids listed twice: {', '.join(twice)}")
    aliases = data.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise ReviewlensError(f"{source}, field 'aliases': expected a mapping of alias: keyword")
    return RuleSet(str(data.get("name", Path(source).stem)), rules, {str(k): str(v) for k, v in aliases.items()},
                   source)


def check_rules(dataset: ReviewDataset, rules: RuleSet) -> tuple[list[LabelIssue], list[str]]:
    """Rule violations of every labeled review, and notes on rules that cannot apply to this data."""
    canonical = lambda k: rules.aliases.get(k, k)  # noqa: E731
    data_keywords = {canonical(k) for k in dataset.schema.keywords}
    notes = []
    active = []
    for rule in rules.rules:
        missing = [k for k in (*rule.expect_any, *rule.forbid) if k not in data_keywords]
        if rule.expect_any and all(k not in data_keywords for k in rule.expect_any):
            notes.append(f"rule {rule.id} skipped: none of {', '.join(rule.expect_any)} is a keyword of this data")
            continue
        if missing:
            notes.append(f"rule {rule.id}: {', '.join(missing)} not in this data's keywords")
        active.append(rule)
    issues = []
    for i, review in enumerate(dataset.reviews):
        if review.labels is None:
            continue
        labeled = {canonical(k): (k, v) for k, v in review.labels.items()}
        for rule in active:
            word = rule.fires(review.text)
            if word is None:
                continue
            if rule.expect_any and not any(k in labeled for k in rule.expect_any):
                issues.append(LabelIssue(i, review.id, "rule", " / ".join(rule.expect_any), "(not labeled)",
                                         f"add {' or '.join(rule.expect_any)}", rule=rule.id,
                                         detail=f"'{word}': {rule.description}"))
            for keyword in rule.forbid:
                if keyword in labeled:
                    name, level = labeled[keyword]
                    suggestion = f"{name} -> {rule.expect_any[0]}" if rule.expect_any else f"remove {name}"
                    issues.append(LabelIssue(i, review.id, "rule", keyword, f"{name} {level}", suggestion,
                                             rule=rule.id, detail=f"'{word}': {rule.description}"))
    return issues, notes


# -- the report ------------------------------------------------------------------------------------------


@dataclass
class AuditReport:
    """Ranked issues, the per-label summary and how the probabilities were made."""

    dataset: ReviewDataset
    issues: list[LabelIssue]
    method: str = ""
    rules: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[dict]:
        """Per keyword and per level: support, suspected errors and their share (the seed's table)."""
        schema = self.dataset.schema
        support = Counter(k for r in self.dataset.reviews for k in (r.labels or {}))
        level_support = Counter(v for r in self.dataset.reviews for v in (r.labels or {}).values())
        wrong, missing, rules = Counter(), Counter(), Counter()
        for issue in self.issues:
            if issue.kind == "keyword_extra":
                wrong[issue.keyword] += 1
            elif issue.kind in ("keyword_missing", "no_keywords"):
                missing[issue.keyword] += 1
            elif issue.kind == "rule":
                for keyword in issue.keyword.split(" / "):
                    rules[keyword] += 1
        rows = []
        for keyword in schema.keywords:
            n = support.get(keyword, 0)
            rows.append({"label": keyword, "support": n, "suspected_wrong": wrong[keyword],
                         "suspected_missing": missing[keyword], "rule_flags": rules[keyword],
                         "error_share": round(wrong[keyword] / n, 4) if n else 0.0})
        sentiment = Counter(i.given.rsplit(" ", 1)[-1] for i in self.issues if i.kind == "sentiment")
        for level in schema.levels:
            n = level_support.get(level, 0)
            rows.append({"label": f"level {level}", "support": n, "suspected_wrong": sentiment[str(level)],
                         "suspected_missing": 0, "rule_flags": 0,
                         "error_share": round(sentiment[str(level)] / n, 4) if n else 0.0})
        return rows

    def rows(self) -> list[dict]:
        """The issues as table rows (``ISSUE_COLUMNS``), most suspect first."""
        schema = self.dataset.schema
        out = []
        for rank, issue in enumerate(self.issues, start=1):
            review = self.dataset.reviews[issue.row]
            out.append({"rank": rank, "id": issue.id, "kind": issue.kind, "keyword": issue.keyword,
                        "given": issue.given, "suggested": issue.suggested,
                        "self_confidence": None if issue.self_confidence is None else round(issue.self_confidence, 4),
                        "threshold": None if issue.threshold is None else round(issue.threshold, 4),
                        "rank_score": None if issue.rank_score is None else round(issue.rank_score, 4),
                        "rule": issue.rule, "detail": issue.detail,
                        "labels": schema.format(review.labels) if review.labels is not None else "",
                        "text": review.text})
        return out

    def summary_markdown(self) -> str:
        lines = ["| label | support | suspected wrong | suspected missing | rule flags | error share |",
                 "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in self.summary():
            if row["support"] or row["suspected_wrong"] or row["suspected_missing"] or row["rule_flags"]:
                lines.append(f"| {row['label']} | {row['support']} | {row['suspected_wrong']} | "
                             f"{row['suspected_missing']} | {row['rule_flags']} | {row['error_share']:.1%} |")
        return "\n".join(lines)

    def to_markdown(self, max_rows: int = 300) -> str:
        kinds = Counter(i.kind for i in self.issues)
        head = [f"# Label audit of {self.dataset.source or 'the data'}", "",
                f"{len(self.dataset)} reviews; {len(self.issues)} suspected issue(s): "
                + (", ".join(f"{kinds[k]} {k} ({KINDS[k]})" for k in KINDS if kinds[k]) or "none") + ".", ""]
        if self.method:
            head.append(f"Model probabilities: {self.method}.")
        if self.rules:
            head.append(f"Rules: {self.rules}.")
        head += [f"- {note}" for note in self.notes]
        head += ["", "## Per label", "", self.summary_markdown(), "", "## Issues, most suspect first", "",
                 "| rank | id | kind | given | suggested | self-confidence | rank score | rule | text |",
                 "| ---: | --- | --- | --- | --- | ---: | ---: | --- | --- |"]

        def cell(value) -> str:
            return str("" if value is None else value).replace("|", "\\|").replace("\n", " ")

        for row in self.rows()[:max_rows]:
            head.append(f"| {row['rank']} | {cell(row['id'])} | {row['kind']} | {cell(row['given'])} | "
                        f"{cell(row['suggested'])} | {cell(row['self_confidence'])} | {cell(row['rank_score'])} | "
                        f"{cell(row['rule'])} | "
                        f"{cell(row['text'])} |")
        if len(self.issues) > max_rows:
            head.append(f"\n... and {len(self.issues) - max_rows} more (write a .csv report for all of them)")
        return "\n".join(head) + "\n"

    def write(self, path: str | Path) -> Path:
        """``.md``: summary and issues; ``.csv`` / ``.jsonl`` / ``.parquet``: one row per issue. Atomic."""
        from .data import atomic_write_text
        from .labeling import write_table

        path = Path(path)
        if path.suffix.lower() == ".md":
            atomic_write_text(path, self.to_markdown())
            return path
        return write_table(self.rows(), path, ISSUE_COLUMNS)


def audit(dataset: ReviewDataset, predictions: Predictions | None = None, rules: RuleSet | None = None) -> AuditReport:
    """Confident-learning issues (when ``predictions`` are given) and rule violations, most suspect first.

    Model issues come first, ranked by ``LabelIssue.sort_key``; rule violations follow in data order.
    """
    issues: list[LabelIssue] = []
    notes: list[str] = []
    if predictions is not None:
        issues += find_label_issues(dataset, predictions)
        rare = too_rare(dataset)
        if rare:
            notes.append(f"keywords labeled on fewer than {MIN_SUPPORT} reviews are not judged by the model (too "
                         f"few examples to learn them): {', '.join(rare)}")
    if rules is not None:
        found, rule_notes = check_rules(dataset, rules)
        issues += found
        notes += rule_notes
    return AuditReport(dataset, issues, predictions.method if predictions is not None else "",
                       f"{rules.name} ({rules.source}, {len(rules.rules)} rules)" if rules is not None else "", notes)
