"""A fast keyword + sentiment model for simulations: TF-IDF character n-grams and linear models.

Active-learning and label-audit benchmarks retrain a model many times (rounds x strategies x seeds, or
k folds); a transformer per round does not fit on a CPU. ``FastReviewModel`` gives the same answers as a
bundle's scorer (keyword probabilities, calibrated thresholds, sentiment distributions of
``(review, keyword)`` pairs, embeddings) in about a second, so ``reviewlens.selection`` and
``reviewlens.audit`` run on it unchanged. It is a stand-in for experiments, not a replacement of a bundle.

The linear models are logistic regressions trained by SGD (``SGDClassifier(loss="log_loss")``): on
NIKL they match liblinear's F1 at a thirtieth of the CPU time.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .calibration import PlattScaling, apply_thresholds, expected_f1_threshold, fit_thresholds
from .data import ReviewDataset, atomic_write_bytes
from .errors import ReviewlensError
from .schema import LabelSchema


@dataclass
class FastModelConfig:
    """Settings of the fast model; the defaults suit short Korean reviews."""

    ngram_range: tuple[int, int] = (1, 3)
    min_df: int = 2
    alpha: float = 1e-5  # L2 penalty of the logistic regressions (mean log loss + alpha * |w|^2 / 2)
    sentiment_alpha: float | None = None  # the sentiment model's own penalty; None: ``alpha``
    epochs: int = 15  # SGD passes over the data
    # "sgd": SGDClassifier, fast on wide sparse TF-IDF; "lbfgs": LogisticRegression with the same objective
    # (C = 1 / (alpha * n)) solved exactly, better on a few hundred dense columns (``EmbeddingFeatures``).
    solver: str = "sgd"
    keyword_weight: float = 1.0  # scale of the keyword one-hot appended to the sentiment features
    # scale of the per-keyword copy of the text features (text x keyword) in the sentiment model; 0: none.
    # Without it a linear model gives every keyword of a review the same text evidence and cannot tell
    # "디자인 1, 배송 -1" from "디자인 -1, 배송 1". Fashion dev pipeline F1: 0.619 without, 0.638 with.
    keyword_interactions: float = 1.0
    threshold_folds: int = 3  # out-of-fold keyword probabilities for the per-keyword thresholds (<2: all 0.5)
    threshold_min_support: int = 5
    svd_components: int = 64
    seed: int = 0


class TfidfFeatures:
    """TF-IDF character n-grams of a corpus, fitted once; known texts are looked up, not re-vectorised.

    ``embed`` is a TruncatedSVD of the corpus matrix (latent semantic analysis), fitted on first use.
    Share one instance between models trained on parts of the same corpus (rounds, folds).
    """

    def __init__(self, texts: Sequence[str], config: FastModelConfig | None = None) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.config = config or FastModelConfig()
        texts = list(dict.fromkeys(texts))
        min_df = self.config.min_df if len(texts) >= 10 * self.config.min_df else 1
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=self.config.ngram_range, min_df=min_df,
                                          sublinear_tf=True)
        self.matrix = self.vectorizer.fit_transform(texts).tocsr()
        self.row = {t: i for i, t in enumerate(texts)}
        self._svd = None

    def transform(self, texts: Sequence[str]):
        """Sparse (n, V) TF-IDF rows of ``texts``."""
        from scipy import sparse

        texts = list(texts)
        rows = [self.row.get(t, -1) for t in texts]
        if all(r >= 0 for r in rows):
            return self.matrix[rows]
        out = [self.matrix[[r]] if r >= 0 else self.vectorizer.transform([t]) for t, r in zip(texts, rows)]
        return sparse.vstack(out).tocsr() if out else self.matrix[:0]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) latent semantic vectors."""
        from sklearn.decomposition import TruncatedSVD

        if self._svd is None:
            k = max(1, min(self.config.svd_components, self.matrix.shape[1] - 1, self.matrix.shape[0] - 1))
            self._svd = TruncatedSVD(k, random_state=self.config.seed).fit(self.matrix)
        return self._svd.transform(self.transform(texts))


class EmbeddingFeatures:
    """Frozen sentence embeddings as the features of ``FastReviewModel``: a linear probe on an encoder.

    ``embed(texts) -> (n, d)`` is called once for the corpus and later only for texts it has not seen
    (``reviewlens.bases.offline_embedder`` gives one for an offline base). Same interface as
    ``TfidfFeatures``; use ``FastModelConfig(solver="lbfgs")`` with it.
    """

    def __init__(self, texts: Sequence[str], embed: Callable[[list[str]], np.ndarray]) -> None:
        self._embed = embed
        texts = list(dict.fromkeys(texts))
        self.row: dict[str, int] = {}
        self.matrix = np.zeros((0, 0), dtype=np.float32)
        self._add(texts)

    def _add(self, texts: list[str]) -> None:
        new = [t for t in dict.fromkeys(texts) if t not in self.row]
        if not new:
            return
        vectors = np.asarray(self._embed(new), dtype=np.float32).reshape(len(new), -1)
        self.matrix = vectors if not self.row else np.vstack([self.matrix, vectors])
        self.row.update({t: len(self.row) + i for i, t in enumerate(new)})

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) embeddings of ``texts``."""
        texts = list(texts)
        self._add(texts)
        return self.matrix[[self.row[t] for t in texts]]

    def transform(self, texts: Sequence[str]):
        """The embeddings as a sparse matrix (what ``FastReviewModel``'s feature blocks are built from)."""
        from scipy import sparse

        return sparse.csr_matrix(self.embed(texts))


def cached_embedder(embed: Callable[[list[str]], np.ndarray], path: str | os.PathLike
                    ) -> Callable[[list[str]], np.ndarray]:
    """``embed`` with a cache on disk, for benchmarks that embed the same corpus on every run.

    ``path`` is an ``.npz`` of ``texts`` and their ``vectors``; texts found there are not embedded again, and
    after a call that embeds new texts the file is rewritten atomically (a killed run leaves the old one).
    The cache knows nothing of the encoder: name the file after it, and delete it when the encoder changes.
    """
    path = Path(path)
    store: dict[str, np.ndarray] = {}
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as saved:
                store = dict(zip(saved["texts"].tolist(), saved["vectors"]))
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ReviewlensError(f"{path}: not an embedding cache ({exc}); delete it to embed again") from exc

    def embed_cached(texts: list[str]) -> np.ndarray:
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in store]
        if missing:
            vectors = np.asarray(embed(missing), dtype=np.float32).reshape(len(missing), -1)
            store.update(zip(missing, vectors))
            buffer = io.BytesIO()
            np.savez(buffer, texts=np.array(list(store), dtype=str), vectors=np.stack(list(store.values())))
            atomic_write_bytes(path, buffer.getvalue())
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([store[t] for t in texts])

    return embed_cached


def _fit_logistic(config: FastModelConfig, x, y):
    """A binary or multinomial logistic regression with L2 penalty ``config.alpha``, by ``config.solver``."""
    if config.solver == "lbfgs":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=1.0 / (config.alpha * max(x.shape[0], 1)), max_iter=1000).fit(x, y)
    if config.solver != "sgd":
        raise ValueError(f"FastModelConfig.solver must be 'sgd' or 'lbfgs', not {config.solver!r}")
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(loss="log_loss", alpha=config.alpha, max_iter=config.epochs, tol=None,
                         random_state=config.seed).fit(x, y)


class FastReviewModel:
    """Keyword model (one logistic regression per keyword) and sentiment model over (text, keyword) pairs.

    Implements the model protocol of ``reviewlens.selection`` (``keywords``, ``levels``, ``thresholds``,
    ``keyword_probs``, ``sentiment_probs``, ``embed``) and ``predict`` for the pipeline metrics.
    """

    def __init__(self, schema: LabelSchema, config: FastModelConfig | None = None, *,
                 features: TfidfFeatures | EmbeddingFeatures | None = None) -> None:
        self.schema = schema
        self.config = config or FastModelConfig()
        self.keywords = list(schema.keywords)
        self.levels = list(schema.levels)
        self.thresholds: dict[str, float] = {}
        self.features = features
        self._keyword_models: list = []
        self._sentiment_model = None
        self._sentiment_prior = np.full(len(self.levels), 1.0 / max(len(self.levels), 1))

    # -- training -----------------------------------------------------------------------------------

    def fit(self, dataset: ReviewDataset, unlabeled_texts: Iterable[str] = ()) -> "FastReviewModel":
        """Train on the labeled reviews. Without shared ``features``, TF-IDF is fitted on the labeled texts
        and ``unlabeled_texts`` (which only widen the vocabulary and the SVD)."""
        if self.features is None:
            self.features = TfidfFeatures(dataset.texts + list(unlabeled_texts), self.config)
        x = self.features.transform(dataset.texts)
        y = self._targets(dataset)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SGD's max_iter notice: the epoch count is the setting
            self._keyword_models = self._fit_keywords(x, y)
            self.thresholds = self._fit_thresholds(x, y) if self.config.threshold_folds > 1 else {}
            self._fit_sentiment(dataset, x)
        return self

    def _targets(self, dataset: ReviewDataset) -> np.ndarray:
        return keyword_targets(dataset, self.keywords)

    def _fit_keywords(self, x, y: np.ndarray) -> list:
        """One model per keyword; a constant (0 or 1) where the keyword has a single class."""
        models = []
        for j in range(y.shape[1]):
            column = y[:, j]
            if not len(column) or column.min() == column.max():
                models.append(float(column[0]) if len(column) else 0.0)
            else:
                models.append(_fit_logistic(self.config, x, column))
        return models

    def _fit_thresholds(self, x, y: np.ndarray) -> dict[str, float]:
        """Per-keyword thresholds on out-of-fold probabilities (``out_of_fold_thresholds``)."""
        c = self.config
        return out_of_fold_thresholds(
            y, self.keywords, lambda train_idx, test_idx: self._probs_from(
                self._fit_keywords(x[train_idx], y[train_idx]), x[test_idx]),
            folds=c.threshold_folds, seed=c.seed, min_support=c.threshold_min_support)

    def _sentiment_features(self, x_text, keywords: Sequence[str]):
        from scipy import sparse

        index = {k: i for i, k in enumerate(self.keywords)}
        cols = [index.get(k, -1) for k in keywords]
        rows = [r for r, c in enumerate(cols) if c >= 0]
        onehot = sparse.csr_matrix((np.full(len(rows), self.config.keyword_weight), (rows, [cols[r] for r in rows])),
                                   shape=(len(keywords), len(self.keywords)))
        blocks = [x_text, onehot]
        if self.config.keyword_interactions:  # the text's n-grams again, in the block of the pair's keyword
            x = sparse.coo_matrix(x_text)
            width = x_text.shape[1]
            col = np.asarray(cols)[x.row]
            keep = col >= 0
            blocks.append(sparse.csr_matrix(
                (x.data[keep] * self.config.keyword_interactions, (x.row[keep], x.col[keep] + width * col[keep])),
                shape=(len(keywords), width * len(self.keywords))))
        return sparse.hstack(blocks).tocsr()

    def _fit_sentiment(self, dataset: ReviewDataset, x) -> None:
        rows, keywords, labels = [], [], []
        for row, review in enumerate(dataset.reviews):
            for keyword, level in (review.labels or {}).items():
                if keyword in self.keywords and level in self.levels:
                    rows.append(row)
                    keywords.append(keyword)
                    labels.append(self.levels.index(level))
        self._sentiment_model = None
        if not labels:
            return
        counts = np.bincount(labels, minlength=len(self.levels)).astype(float)
        self._sentiment_prior = counts / counts.sum()
        if len(set(labels)) > 1:
            config = self.config if self.config.sentiment_alpha is None else replace(
                self.config, alpha=self.config.sentiment_alpha)
            self._sentiment_model = _fit_logistic(config, self._sentiment_features(x[rows], keywords), labels)

    # -- the selection model protocol -------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if self.features is None:
            raise RuntimeError("FastReviewModel.fit must be called first")

    @staticmethod
    def _probs_from(models: list, x) -> np.ndarray:
        out = np.zeros((x.shape[0], len(models)), dtype=float)
        for j, model in enumerate(models):
            out[:, j] = model if isinstance(model, float) else model.predict_proba(x)[:, 1]
        return out

    def keyword_probs(self, texts: Sequence[str]) -> np.ndarray:
        """(n, K) probability of each keyword."""
        self._check_fitted()
        if not len(texts):
            return np.zeros((0, len(self.keywords)))
        return self._probs_from(self._keyword_models, self.features.transform(texts))

    def sentiment_probs(self, texts: Sequence[str], keywords: Sequence[str]) -> np.ndarray:
        """(n, L) distribution over the levels for each (text, keyword) pair."""
        self._check_fitted()
        if len(texts) != len(keywords):
            raise ValueError(f"{len(texts)} texts but {len(keywords)} keywords")
        out = np.tile(self._sentiment_prior, (len(texts), 1))
        if self._sentiment_model is None or not len(texts):
            return out
        probs = self._sentiment_model.predict_proba(self._sentiment_features(self.features.transform(texts), keywords))
        out[:] = 0.0
        out[:, self._sentiment_model.classes_] = probs
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) TruncatedSVD of the TF-IDF vectors."""
        self._check_fitted()
        return self.features.embed(texts)

    def predict(self, texts: Sequence[str]) -> list[dict[str, int]]:
        """``{keyword: level}`` per text: keywords above their thresholds, the most probable level of each."""
        return predict_labels(self, texts)


def keyword_targets(dataset: ReviewDataset, keywords: Sequence[str]) -> np.ndarray:
    """(n, K) 0/1: the ``keywords`` each review is labeled with (labels outside ``keywords`` ignored)."""
    y = np.zeros((len(dataset), len(keywords)), dtype=int)
    index = {k: i for i, k in enumerate(keywords)}
    for row, review in enumerate(dataset.reviews):
        for keyword in review.labels or {}:
            if keyword in index:
                y[row, index[keyword]] = 1
    return y


def out_of_fold_probs(y: np.ndarray, probs: Callable[[np.ndarray, np.ndarray], np.ndarray], *, folds: int,
                      seed: int) -> np.ndarray | None:
    """(n, K) out-of-fold keyword probabilities: ``probs(train_idx, test_idx)`` fits on the train rows and
    scores the test rows. None under 2 folds."""
    from sklearn.model_selection import KFold

    folds = min(folds, y.shape[0])
    if folds < 2:
        return None
    oof = np.zeros(y.shape, dtype=float)
    for train_idx, test_idx in KFold(folds, shuffle=True, random_state=seed).split(y):
        oof[test_idx] = probs(train_idx, test_idx)
    return oof


def out_of_fold_thresholds(y: np.ndarray, keywords: Sequence[str], probs: Callable[[np.ndarray, np.ndarray], np.ndarray],
                           *, folds: int, seed: int, min_support: int | None) -> dict[str, float]:
    """Per-keyword thresholds (``calibration.fit_thresholds``) on ``out_of_fold_probs``. {} under 2 folds."""
    oof = out_of_fold_probs(y, probs, folds=folds, seed=seed)
    return {} if oof is None else fit_thresholds(oof, y, keywords, min_support)


def predict_labels(model, texts: Sequence[str]) -> list[dict[str, int]]:
    """``{keyword: level}`` per text from a selection model (``keywords``, ``levels``, ``thresholds``,
    ``keyword_probs``, ``sentiment_probs``): keywords above their thresholds (and the most probable one when
    the model has ``at_least_one`` set), the most probable level of each."""
    texts = list(texts)
    chosen = apply_thresholds(model.keyword_probs(texts), model.keywords, model.thresholds,
                              at_least_one=getattr(model, "at_least_one", False))
    pairs = [(i, model.keywords[k]) for i in range(len(texts)) for k in np.flatnonzero(chosen[i])]
    out: list[dict[str, int]] = [{} for _ in texts]
    if pairs:
        dists = model.sentiment_probs([texts[i] for i, _ in pairs], [k for _, k in pairs])
        for (i, keyword), dist in zip(pairs, dists):
            out[i][keyword] = model.levels[int(np.argmax(dist))]
    return out


def product_of_experts(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """The normalised geometric mean of several models' distributions over the last axis (one model's
    confident "no" is not averaged away as an arithmetic mean would); NaN rows stay NaN."""
    log = np.mean([np.log(np.clip(p, 1e-9, 1.0)) for p in probabilities], axis=0)
    with np.errstate(invalid="ignore"):
        out = np.exp(log)
        return out / out.sum(axis=-1, keepdims=True)


def binary_product_of_experts(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """``product_of_experts`` of independent yes/no probabilities (each p against 1 - p)."""
    return product_of_experts([np.stack([p, 1.0 - p], axis=-1) for p in probabilities])[..., 0]


@dataclass
class EnsembleConfig:
    """Settings of ``LinearEnsemble``. The penalties are those ``reviewlens audit --linear`` chooses on NIKL
    train by out-of-fold log loss (keywords 3e-5, levels 1e-4, both views).

    Keyword probabilities are recalibrated by one Platt map fitted on 3-fold out-of-fold probabilities, and
    keywords share one threshold (``threshold_min_support=None``): per-keyword thresholds from a few hundred
    reviews are noisy (on NIKL, 900 random labels, 3 samples x 3 seeds: dev pipeline F1 0.581 with a standard
    deviation of up to 0.017 between seeds, one shared threshold 0.590 with at most 0.006). ``fit(...,
    population=texts)`` chooses that threshold by expected F1 on the given texts instead of on the labeled
    ones (``calibration.expected_f1_threshold``).

    ``at_least_one``: every review keeps its most probable keyword; None turns it on when every training review
    has a keyword (NIKL: every sentence has an aspect, 94% exactly one)."""

    keyword_alpha: float = 3e-5
    sentiment_alpha: float = 1e-4
    threshold_folds: int = 3
    threshold_min_support: int | None = None  # an int: per-keyword thresholds for keywords with this support
    at_least_one: bool | None = None
    seed: int = 0


class LinearEnsemble:
    """The quick audit's two linear models as one model: a ``FastReviewModel`` on TF-IDF character n-grams
    (SGD, with keyword x text copies for sentiment) and a linear probe on frozen sentence embeddings
    (lbfgs), combined by ``product_of_experts`` and recalibrated (``PlattScaling`` on 3-fold out-of-fold
    probabilities); one shared keyword threshold. Same protocol as ``FastReviewModel``
    (``reviewlens.selection``, ``predict``); ``embed`` gives the sentence embeddings. Stronger than either
    model alone: NIKL dev pipeline F1 after 1,500 random labels 0.606 (seeds 0-2) against 0.587 for
    ``FastReviewModel`` (``benchmarks/active_learning.py``).
    """

    def __init__(self, schema: LabelSchema, tfidf: TfidfFeatures, embeddings: EmbeddingFeatures,
                 config: EnsembleConfig | None = None) -> None:
        self.schema = schema
        self.config = config or EnsembleConfig()
        self.keywords = list(schema.keywords)
        self.levels = list(schema.levels)
        self.thresholds: dict[str, float] = {}
        self.at_least_one = False
        self.calibration = PlattScaling()
        self.tfidf, self.embeddings = tfidf, embeddings
        self.members: list[FastReviewModel] = []

    def _fit_members(self, dataset: ReviewDataset) -> list[FastReviewModel]:
        c = self.config
        tfidf = FastModelConfig(alpha=c.keyword_alpha, sentiment_alpha=c.sentiment_alpha, threshold_folds=0,
                                seed=c.seed)
        probe = replace(tfidf, solver="lbfgs", keyword_interactions=0.0)
        return [FastReviewModel(self.schema, config, features=features).fit(dataset)
                for features, config in ((self.tfidf, tfidf), (self.embeddings, probe))]

    def fit(self, dataset: ReviewDataset, population: Sequence[str] | None = None) -> "LinearEnsemble":
        """Train on the labeled reviews. ``population``: texts like those the model will label (in active
        learning, the whole pool); the shared keyword threshold then maximises the expected F1 on them."""
        def probs(train_idx: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
            texts = [dataset.texts[i] for i in test_idx]
            return binary_product_of_experts([m.keyword_probs(texts)
                                              for m in self._fit_members(dataset.subset(train_idx))])

        c = self.config
        y = keyword_targets(dataset, self.keywords)
        self.at_least_one = bool(len(y) and y.any(axis=1).all()) if c.at_least_one is None else c.at_least_one
        oof = out_of_fold_probs(y, probs, folds=c.threshold_folds, seed=c.seed)
        self.calibration = PlattScaling() if oof is None else PlattScaling.fit(oof, y)
        self.members = self._fit_members(dataset)
        if population is not None and len(population):
            shared = expected_f1_threshold(self.keyword_probs(list(population)), at_least_one=self.at_least_one)
            self.thresholds = {k: shared for k in self.keywords}
        elif oof is not None:
            self.thresholds = fit_thresholds(self.calibration(oof), y, self.keywords, c.threshold_min_support,
                                             at_least_one=self.at_least_one)
        else:
            self.thresholds = {}
        return self

    def keyword_probs(self, texts: Sequence[str]) -> np.ndarray:
        """(n, K) probability of each keyword."""
        if not self.members:
            raise RuntimeError("LinearEnsemble.fit must be called first")
        return self.calibration(binary_product_of_experts([m.keyword_probs(texts) for m in self.members]))

    def sentiment_probs(self, texts: Sequence[str], keywords: Sequence[str]) -> np.ndarray:
        """(n, L) distribution over the levels for each (text, keyword) pair."""
        if not self.members:
            raise RuntimeError("LinearEnsemble.fit must be called first")
        return product_of_experts([m.sentiment_probs(texts, keywords) for m in self.members])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) the sentence embeddings."""
        return self.embeddings.embed(texts)

    def predict(self, texts: Sequence[str]) -> list[dict[str, int]]:
        """``{keyword: level}`` per text (``predict_labels``)."""
        return predict_labels(self, texts)
