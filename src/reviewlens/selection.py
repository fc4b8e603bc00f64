"""What to label next: query strategies over a pool of unlabeled reviews (the seed's section 9).

Every strategy is a small class on one base, ``QueryStrategy``, whose ``score(context)`` gives one number
per pool review (higher: label it sooner). ``select`` is shared by all of them: it ranks the candidates,
applies quotas (a weighted mix of strategies, ``shop``/``category`` groups in proportion to the pool),
skips excluded ids and exact or near duplicates, and returns a ``Selection`` whose rows are the next
labeling batch, pre-filled with the model's own completion string so a labeler corrects rather than writes.

Strategies (the seed's criteria):

- ``keyword-boundary``: a keyword's probability is near its calibrated threshold (the seed: sigmoid near 0.5);
- ``keyword-entropy``: the summed binary entropy of all keyword probabilities (doubt about many keywords);
- ``sentiment-margin``: ``(1 - max p) * N / (N - 1)`` over the sentiment distributions of the predicted keywords;
- ``rare-text``: a SentencePiece model trained on the first training texts reads the review with many
  ``<unk>`` or late-index (rare) pieces;
- ``outliers``: far from their k-means centroid in the keyword encoder's embedding space;
- ``random``; and ``WeightedMix`` of any of them with quotas.

Strategies need a model only through ``SelectionModel`` (keyword probabilities and thresholds, sentiment
distributions of (review, keyword) pairs, embeddings): a bundle through ``BundleSelectionModel``, or the
fast TF-IDF model of ``reviewlens.baselines`` in simulations.
"""

from __future__ import annotations

import hashlib
import io
import logging
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import ModelError, ReviewlensError

logger = logging.getLogger(__name__)

BATCH_COLUMNS = ["rank", "id", "text", "labels", "model_labels", "strategy", "score", "shop", "category"]
"""Columns of a labeling batch: ``labels`` starts as the model's completion for the labeler to correct;
``model_labels`` keeps the model's suggestion so ``merge-labels`` can count the corrections."""


# -- the model a strategy needs -------------------------------------------------------------------------


class SelectionModel(Protocol):
    """What strategies need from a model: keyword probabilities, thresholds, sentiment, embeddings."""

    keywords: list[str]
    levels: list[int]
    thresholds: dict[str, float]

    def keyword_probs(self, texts: Sequence[str]) -> np.ndarray: ...

    def sentiment_probs(self, texts: Sequence[str], keywords: Sequence[str]) -> np.ndarray: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class BundleSelectionModel:
    """A trained bundle (through ``ReviewAnalyzer``) as a ``SelectionModel``."""

    def __init__(self, analyzer) -> None:
        self.analyzer = analyzer
        self.keywords = list(analyzer.keywords)
        self.levels = list(analyzer.levels)
        self.thresholds = dict(analyzer.bundle.thresholds)

    @classmethod
    def from_pretrained(cls, path: str | Path | None, *, batch_size: int = 64,
                        device: str = "auto") -> "BundleSelectionModel":
        from .analyzer import ReviewAnalyzer

        analyzer = ReviewAnalyzer.from_pretrained(path, batch_size=batch_size, device=device)
        if not hasattr(analyzer, "scorer"):
            raise ModelError(f"{path}: selection needs a classifier bundle (keyword + sentiment models), "
                             "not a generative one")
        return cls(analyzer)

    def keyword_probs(self, texts: Sequence[str]) -> np.ndarray:
        return self.analyzer.scorer.keyword_probs(list(texts))

    def sentiment_probs(self, texts: Sequence[str], keywords: Sequence[str]) -> np.ndarray:
        """The level distributions ``analyze`` reports: pooled with the keyword's clause by the bundle's weight."""
        from .clause_sentiment import pair_sentiment

        weight = self.analyzer.bundle.clause_weight
        return pair_sentiment(self.analyzer.scorer, list(texts), list(enumerate(keywords)), self.keywords,
                              read_clause=weight > 0).pooled(weight)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return encoder_embeddings(self.analyzer.scorer, texts)


def encoder_embeddings(scorer, texts: Sequence[str], which: str = "keyword") -> np.ndarray:
    """(n, hidden) mean-pooled last hidden states of a torch scorer's encoder, batched like the scorer."""
    from .scoring import BatchedScorer

    models = getattr(scorer, "models", None)
    if not models or which not in models:
        raise ModelError("embeddings (the information-density and outliers strategies) need the torch backend; "
                         f"this bundle runs on {type(scorer).__name__}. Load it with backend='torch', or choose "
                         "another strategy (--strategy keyword-entropy)")
    model = models[which]
    encoder = getattr(model, "encoder", None) or getattr(model, model.base_model_prefix)

    class _Embedder(BatchedScorer):
        def num_outputs(self, _which: str) -> int:
            return int(encoder.config.hidden_size)

        def _logits(self, _which: str, batch: dict[str, np.ndarray]) -> np.ndarray:
            import torch

            with torch.inference_mode():
                ids = torch.from_numpy(batch["input_ids"]).to(scorer.device)
                mask = torch.from_numpy(batch["attention_mask"]).to(scorer.device)
                if hasattr(model, "pool"):  # MeanPoolingClassifier: its own masked mean
                    return model.pool(ids, mask).float().cpu().numpy()
                hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
                return pooled.float().cpu().numpy()

    embedder = _Embedder({which: scorer.tokenizers[which]}, {which: scorer.max_lengths[which]},
                         batch_size=scorer.batch_size)
    return embedder.logits(which, list(texts))


# -- the pool and what the model says about it, computed once -------------------------------------------


def normalize_text(text: str) -> str:
    """The exact-duplicate key: NFKC, lower case, without spaces, punctuation and symbols."""
    folded = unicodedata.normalize("NFKC", text).lower()
    key = "".join(c for c in folded if unicodedata.category(c)[0] in "LN")
    return key or folded.strip()


class SelectionContext:
    """The pool texts and the model's view of them; every expensive part is computed once, on first use."""

    def __init__(self, texts: Sequence[str], model: SelectionModel, *, ids: Sequence[str] | None = None,
                 shops: Sequence[str | None] | None = None, categories: Sequence[str | None] | None = None,
                 first_texts: Sequence[str] | None = None, sentencepiece_model: bytes | None = None,
                 text_cache: dict | None = None) -> None:
        self.texts = list(texts)
        n = len(self.texts)
        self.model = model
        self.ids = [str(i) for i in ids] if ids is not None else [str(i + 1) for i in range(n)]
        self.shops = list(shops) if shops is not None else [None] * n
        self.categories = list(categories) if categories is not None else [None] * n
        if not (len(self.ids) == len(self.shops) == len(self.categories) == n):
            raise ValueError("ids, shops and categories must have one entry per text")
        self.first_texts = list(first_texts) if first_texts is not None else None
        self.sentencepiece_model = sentencepiece_model
        self._cache: dict[str, object] = {}
        self._text_cache = text_cache if text_cache is not None else {}

    @classmethod
    def from_dataset(cls, dataset, model: SelectionModel, **kwargs) -> "SelectionContext":
        """A context over a ``ReviewDataset`` (labels, if any, are not used)."""
        reviews = dataset.reviews
        return cls([r.text for r in reviews], model, ids=[r.id for r in reviews],
                   shops=[r.shop for r in reviews], categories=[r.category for r in reviews], **kwargs)

    def __len__(self) -> int:
        return len(self.texts)

    def cached(self, key: str, compute):
        """``compute()`` once per key (strategy scores are cached here)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def cached_text(self, key: str, compute):
        """``compute()`` once per key for results that depend on the texts alone; contexts built with one
        ``text_cache`` dict over the same pool (rounds of a simulation) share them."""
        if key not in self._text_cache:
            self._text_cache[key] = compute()
        return self._text_cache[key]

    def duplicate_vectors(self):
        """``(vectorizer, vectors)``: L2-normalised character 2-3-gram sets of the exact keys, for near duplicates."""
        def compute():
            from sklearn.feature_extraction.text import TfidfVectorizer

            vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(2, 3), binary=True, use_idf=False)
            return vectorizer, vectorizer.fit_transform(self.exact_keys).tocsr()
        return self.cached_text("duplicate-vectors", compute)

    @cached_property
    def keyword_probs(self) -> np.ndarray:
        """(n, K) keyword probabilities."""
        return np.asarray(self.model.keyword_probs(self.texts), dtype=float).reshape(len(self), -1)

    @cached_property
    def thresholds(self) -> np.ndarray:
        """(K,) each keyword's calibrated threshold (0.5 where the model has none)."""
        return np.array([self.model.thresholds.get(k, 0.5) for k in self.model.keywords], dtype=float)

    @cached_property
    def predicted(self) -> np.ndarray:
        """(n, K) booleans: keywords at or above their thresholds."""
        return self.keyword_probs >= self.thresholds[None, :]

    @cached_property
    def sentiment(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, keyword_indices, distributions)`` for the predicted keywords of every review.

        A review with no keyword above its threshold contributes its most probable keyword, so that
        every review has a sentiment reading.
        """
        chosen = self.predicted.copy()
        empty = ~chosen.any(axis=1)
        if len(self) and self.keyword_probs.shape[1]:
            chosen[np.flatnonzero(empty), self.keyword_probs[empty].argmax(axis=1)] = True
        rows, cols = np.nonzero(chosen)
        dists = self.model.sentiment_probs([self.texts[i] for i in rows], [self.model.keywords[k] for k in cols]) \
            if len(rows) else np.zeros((0, len(self.model.levels)))
        return rows, cols, np.asarray(dists, dtype=float)

    @cached_property
    def embeddings(self) -> np.ndarray:
        """(n, d) embeddings of the pool texts."""
        return np.asarray(self.model.embed(self.texts), dtype=float)

    @property
    def exact_keys(self) -> list[str]:
        return self.cached_text("exact-keys", lambda: [normalize_text(t) for t in self.texts])

    def completions(self, indices: Sequence[int]) -> list[str]:
        """The model's completion string of each review in ``indices``: ``디자인 1, 배송 -1``.

        Predicted keywords (most probable first) with their most probable level; "" when none.
        """
        indices = list(indices)
        probs = self.keyword_probs
        pairs = [(i, k) for i in indices for k in np.flatnonzero(self.predicted[i])]
        if "sentiment" in self.__dict__:  # already computed for the whole pool
            rows, cols, dists = self.sentiment
            lookup = {(int(r), int(c)): d for r, c, d in zip(rows, cols, dists)}
            pair_dists = [lookup[(int(i), int(k))] for i, k in pairs]
        elif pairs:
            pair_dists = list(self.model.sentiment_probs([self.texts[i] for i, _ in pairs],
                                                         [self.model.keywords[k] for _, k in pairs]))
        else:
            pair_dists = []
        per_review: dict[int, list[tuple[float, str, int]]] = {i: [] for i in indices}
        for (i, k), dist in zip(pairs, pair_dists):
            level = self.model.levels[int(np.argmax(dist))]
            per_review[i].append((float(probs[i, k]), self.model.keywords[k], level))
        return [", ".join(f"{kw} {level}" for _, kw, level in sorted(per_review[i], key=lambda t: -t[0]))
                for i in indices]


# -- strategies ----------------------------------------------------------------------------------------


@dataclass
class Pick:
    """One chosen review: its pool index, the strategy that chose it and that strategy's score."""

    index: int
    strategy: str
    score: float


class QueryStrategy:
    """Base class: ``score`` the pool (higher: label sooner); ``choose`` takes the best free candidates."""

    name = "strategy"

    def score(self, context: SelectionContext) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def scores(self, context: SelectionContext) -> np.ndarray:
        """``score`` computed once per context."""
        return context.cached(f"score:{self.name}:{id(self)}", lambda: np.asarray(self.score(context), dtype=float))

    def choose(self, context: SelectionContext, quota: int, candidates: np.ndarray, picker: "_Picker") -> int:
        """Hand ``picker`` this strategy's best candidates until ``quota`` are taken; returns how many were."""
        if quota <= 0 or not len(candidates):
            return 0
        scores = self.scores(context)
        tie_break = picker.rng.random(len(candidates))
        order = candidates[np.lexsort((tie_break, -scores[candidates]))]
        return picker.take(order, quota, self.name, scores)


class KeywordBoundary(QueryStrategy):
    """A keyword's probability near its calibrated threshold (the seed: sigmoid output near 0.5).

    Per keyword, closeness is ``1 - |p - t| / t`` below the threshold ``t`` and ``1 - (p - t) / (1 - t)``
    above it: 1 at the threshold, 0 at a certain 0 or 1. A review's score is its closest keyword's.
    """

    name = "keyword-boundary"

    def score(self, context: SelectionContext) -> np.ndarray:
        p, t = context.keyword_probs, context.thresholds[None, :]
        if not p.size:
            return np.zeros(len(context))
        scale = np.where(p < t, t, 1.0 - t)
        closeness = 1.0 - np.abs(p - t) / np.maximum(scale, 1e-9)
        return np.clip(closeness, 0.0, 1.0).max(axis=1)


class KeywordEntropy(QueryStrategy):
    """Unsure of many keywords at once: the sum over the keywords of the binary entropy of their probabilities.

    ``keyword-boundary`` looks at a review's single closest keyword; this one adds up the doubt about all of
    them, so a review the model is half-sure of on three keywords comes before one it doubts on one. On NIKL
    (``benchmarks/active_learning.py``, 6 seeds) it reached random sampling's F1 at 900 labels with 550-600 and
    at 1,100 with 810-890; keyword-boundary needed 670-910 and 880-1,100.
    """

    name = "keyword-entropy"

    def score(self, context: SelectionContext) -> np.ndarray:
        p = np.clip(context.keyword_probs, 1e-9, 1.0 - 1e-9)
        if not p.size:
            return np.zeros(len(context))
        return -(p * np.log(p) + (1.0 - p) * np.log(1.0 - p)).sum(axis=1)


class LabelEntropy(QueryStrategy):
    """Unsure of the whole label: per keyword, the entropy of "absent, or present with level v", which is
    ``H(p) + p * H(levels)``, summed over the keywords (``keyword-entropy`` plus the level doubt of each
    keyword, weighted by how likely the keyword is). Level distributions are read for the predicted keywords
    (``SelectionContext.sentiment``); the other keywords count by their presence alone."""

    name = "label-entropy"

    def score(self, context: SelectionContext) -> np.ndarray:
        out = KeywordEntropy().score(context)
        rows, cols, dists = context.sentiment
        if len(rows):
            d = np.clip(dists, 1e-12, 1.0)
            np.add.at(out, rows, context.keyword_probs[rows, cols] * -(d * np.log(d)).sum(axis=1))
        return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` with each row scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=float)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def typicality(embeddings: np.ndarray) -> np.ndarray:
    """(n,) how typical each row is of the whole set, in standard deviations: the z-score of the log of its mean
    cosine similarity to the set (self included; for L2-normalised rows that mean is the dot product with the mean
    row). Zeros when the rows do not differ. Standardising makes it the same for any encoder: sentence encoders
    spread these similarities very differently (on NIKL the log-similarity SD is 0.012 with multilingual-e5-small,
    0.039 with a fine-tuned classifier's mean-pooled encoder)."""
    x = unit_rows(embeddings)
    if not len(x):
        return np.zeros(0)
    log_similarity = np.log(np.clip(x @ x.mean(axis=0), 1e-6, None))
    spread = log_similarity.std()
    if spread < 1e-12:
        return np.zeros(len(x))
    return (log_similarity - log_similarity.mean()) / spread


class InformationDensity(QueryStrategy):
    """``keyword-entropy`` weighted by how typical a review is: ``H(x) * exp(strength * z(x))``, where ``z`` is
    ``typicality``, the review's log mean cosine similarity to the whole pool in the model's embeddings, in standard
    deviations of the pool (Settles & Craven's information density, ``H * sim^beta``, with the power set per pool so
    that the weight means the same in any embedding space). Pure uncertainty keeps picking odd, ambiguous reviews
    once the clear ones are learned; the density keeps it on reviews like many others. A review one SD more typical
    than another of equal doubt scores ``exp(strength)`` times as much.

    On NIKL (``benchmarks/active_learning.py``, seeds 0-2 / 3-5 / 6-8 / 9-11) it reached random sampling's F1 at
    1,500 labels with 813 / 916 / 796 / 714 labels, 808 on the mean of the twelve seeds (keyword-entropy: 1,029 /
    1,065 / 986 / 950, 1,003). The default strength, 0.072, is power 6.02 on those e5 embeddings (SD 0.012); power
    6 was chosen on seeds 0-8 (900-label F1, mean: power 4 0.606, 6 0.610, 8 0.606) and held on 9-11. With the default bundle's encoder (SD 0.039) as the
    density space the same strength gave 0.595 / 0.594 at 900 labels on seeds 3-5 / 6-8, and power 6 itself
    0.587 / 0.585. The default of ``reviewlens select``."""

    name = "information-density"

    def __init__(self, strength: float = 0.072) -> None:
        if strength < 0:
            raise ReviewlensError(f"information-density: strength must be >= 0, not {strength}")
        self.strength = strength

    def score(self, context: SelectionContext) -> np.ndarray:
        entropy = KeywordEntropy().score(context)
        if not len(entropy) or self.strength == 0:
            return entropy
        return entropy * np.exp(self.strength * typicality(context.embeddings))


class SentimentMargin(QueryStrategy):
    """Unsure sentiment: ``(1 - max p) * N / (N - 1)`` (the seed's formula, 0..1), the largest over the
    predicted keywords of a review."""

    name = "sentiment-margin"

    def score(self, context: SelectionContext) -> np.ndarray:
        rows, _, dists = context.sentiment
        out = np.zeros(len(context))
        if not len(rows):
            return out
        n_levels = dists.shape[1]
        uncertainty = (1.0 - dists.max(axis=1)) * (n_levels / (n_levels - 1) if n_levels > 1 else 0.0)
        np.maximum.at(out, rows, uncertainty)
        return out


def train_sentencepiece(texts: Sequence[str], vocab_size: int = 8000, *, model_type: str = "unigram",
                        character_coverage: float = 0.9995) -> bytes:
    """A SentencePiece model (its serialized bytes) trained in-process on ``texts``.

    ``character_coverage`` below 1 leaves the rarest characters out of the vocabulary: they read as
    ``<unk>``. ``vocab_size`` is an upper bound (small corpora get fewer pieces).
    """
    import sentencepiece as spm

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ReviewlensError("no texts to train the rare-text SentencePiece model on")
    # every kept character needs a piece: a vocabulary smaller than the alphabet (Hangul has thousands) fails
    vocab_size = max(vocab_size, len(set("".join(texts))) + 8)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=out, vocab_size=vocab_size,
                                   hard_vocab_limit=False, model_type=model_type,
                                   character_coverage=character_coverage, minloglevel=2)
    return out.getvalue()


def load_or_train_sentencepiece(texts: Sequence[str], cache_dir: str | Path | None, *,
                                vocab_size: int = 8000) -> tuple[bytes, Path | None]:
    """The SentencePiece model of ``texts``, read from ``cache_dir/spm-<hash>.model`` when there.

    The hash covers the texts and the vocabulary size, so other first texts train (and cache) a new model.
    """
    from .data import atomic_write_bytes

    digest = hashlib.sha256(f"{vocab_size}\n".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\n")
    path = Path(cache_dir) / f"spm-{digest.hexdigest()[:12]}.model" if cache_dir is not None else None
    if path is not None and path.is_file():
        return path.read_bytes(), path
    model = train_sentencepiece(texts, vocab_size)
    if path is not None:
        atomic_write_bytes(path, model)
    return model, path


class RareText(QueryStrategy):
    """Reviews made of rare pieces under a SentencePiece model trained on the first training texts.

    A review's score is the mean rarity of its pieces: ``<unk>`` is 1, a known piece's rarity is its
    vocabulary index over the vocabulary size (SentencePiece orders its pieces frequent first), so many
    ``<unk>`` or many late-index pieces score high (the seed's two criteria in one number).
    """

    name = "rare-text"

    def __init__(self, sentencepiece_model: bytes | None = None, *, vocab_size: int = 8000,
                 first_n: int = 5000) -> None:
        self.sentencepiece_model = sentencepiece_model
        self.vocab_size = vocab_size
        self.first_n = first_n

    def processor(self, context: SelectionContext):
        """The SentencePiece processor: this strategy's model, the context's, or one trained on first texts."""
        import sentencepiece as spm

        model = self.sentencepiece_model or context.sentencepiece_model
        if model is None:
            first = context.first_texts if context.first_texts is not None else context.texts[: self.first_n]
            digest = hashlib.sha256("\n".join(first).encode("utf-8", "surrogatepass")).hexdigest()
            model = context.cached_text(f"spm:{self.vocab_size}:{digest}",
                                        lambda: train_sentencepiece(first, self.vocab_size))
        return spm.SentencePieceProcessor(model_proto=model)

    def score(self, context: SelectionContext) -> np.ndarray:
        sp = self.processor(context)
        key = "rare-text:" + hashlib.sha256(sp.serialized_model_proto()).hexdigest()
        return context.cached_text(key, lambda: self.rarity(sp, context.texts))

    @staticmethod
    def rarity(sp, texts: Sequence[str]) -> np.ndarray:
        """Mean piece rarity of each text under the SentencePiece processor ``sp`` (bare word boundaries,
        which carry no content, are left out)."""
        size, unk = sp.get_piece_size(), sp.unk_id()
        boundary = sp.piece_to_id("\u2581")
        out = np.zeros(len(texts))
        for i, pieces in enumerate(sp.encode(list(texts))):
            ids = np.asarray([p for p in pieces if p != boundary or p == unk])
            if len(ids):
                out[i] = np.where(ids == unk, 1.0, ids / size).mean()
        return out


class Outliers(QueryStrategy):
    """Far from their k-means centroid in embedding space (L2-normalised embeddings).

    Points in clusters smaller than ``min_cluster_size`` are measured to the nearest centroid of a
    larger cluster, so a lone outlier in its own cluster still scores high.
    """

    name = "outliers"

    def __init__(self, n_clusters: int | None = None, *, min_cluster_size: int = 3, seed: int = 0) -> None:
        self.n_clusters = n_clusters
        self.min_cluster_size = min_cluster_size
        self.seed = seed

    def score(self, context: SelectionContext) -> np.ndarray:
        x = np.ascontiguousarray(context.embeddings)
        # the same embeddings cluster the same way: a model whose embeddings do not change between rounds
        # (the TF-IDF baseline) clusters once per pool
        digest = hashlib.sha256(x.tobytes()).hexdigest()
        key = f"outliers:{self.n_clusters}:{self.min_cluster_size}:{self.seed}:{digest}"
        return context.cached_text(key, lambda: self._distances(x))

    def _distances(self, x: np.ndarray) -> np.ndarray:
        from sklearn.cluster import KMeans

        n = len(x)
        if n < 3:
            return np.zeros(n)
        x = unit_rows(x)
        k = self.n_clusters or int(np.clip(round(np.sqrt(n / 2)), 2, 50))
        k = max(1, min(k, n - 1))
        km = KMeans(n_clusters=k, n_init=3, random_state=self.seed).fit(x)
        sizes = np.bincount(km.labels_, minlength=k)
        big = np.flatnonzero(sizes >= self.min_cluster_size)
        if not len(big):
            big = np.arange(k)
        centers = km.cluster_centers_
        own = np.linalg.norm(x - centers[km.labels_], axis=1)
        # |x - c|^2 = |x|^2 + |c|^2 - 2 x.c with |x| = 1: an (n, k) matrix, not (n, k, d)
        squared = 1.0 + (centers[big] ** 2).sum(axis=1)[None, :] - 2.0 * x @ centers[big].T
        nearest_big = np.sqrt(np.clip(squared, 0.0, None)).min(axis=1)
        return np.where(np.isin(km.labels_, big), own, nearest_big)


class RandomStrategy(QueryStrategy):
    """Uniformly random (the baseline every strategy is measured against)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, context: SelectionContext) -> np.ndarray:
        return np.random.default_rng(self.seed).random(len(context))


class WeightedMix(QueryStrategy):
    """Several strategies, each filling a quota in proportion to its weight (largest remainder).

    Parts go in the given order; a part that runs out of candidates leaves its shortfall to the next.
    """

    name = "mix"

    def __init__(self, parts: Sequence[tuple[QueryStrategy, float]]) -> None:
        parts = [(s, float(w)) for s, w in parts if float(w) > 0]
        if not parts:
            raise ReviewlensError("a strategy mix needs at least one part with a positive weight")
        self.parts = parts

    def score(self, context: SelectionContext) -> np.ndarray:
        """The weighted mean of the parts' scores, each rescaled to 0..1 by rank (for inspection only)."""
        total = sum(w for _, w in self.parts)
        out = np.zeros(len(context))
        for strategy, weight in self.parts:
            s = strategy.scores(context)
            out += weight / total * (np.argsort(np.argsort(s)) / max(len(s) - 1, 1))
        return out

    def choose(self, context: SelectionContext, quota: int, candidates: np.ndarray, picker: "_Picker") -> int:
        quotas = largest_remainder([w for _, w in self.parts], quota)
        taken, carry = 0, 0
        for (strategy, _), share in zip(self.parts, quotas):
            got = strategy.choose(context, share + carry, candidates, picker)
            carry = share + carry - got
            taken += got
        for strategy, _ in self.parts:  # whatever is still missing, from any part
            if taken >= quota:
                break
            taken += strategy.choose(context, quota - taken, candidates, picker)
        return taken


STRATEGIES = {
    "keyword-boundary": KeywordBoundary,
    "keyword-entropy": KeywordEntropy,
    "label-entropy": LabelEntropy,
    "information-density": InformationDensity,
    "sentiment-margin": SentimentMargin,
    "rare-text": RareText,
    "outliers": Outliers,
    "random": RandomStrategy,
}
# The seed's practice, several sources of doubt and novelty with quotas; ``reviewlens select --strategy`` takes it.
SEED_MIX = "keyword-boundary:0.5,sentiment-margin:0.2,rare-text:0.1,outliers:0.1,random:0.1"
# The default is the strategy that measured best: on NIKL (``benchmarks/active_learning.py``, 12 seeds)
# information-density reached random sampling's F1 at 1,500 labels with 813 / 916 / 796 / 714 on seeds 0-2 / 3-5 /
# 6-8 / 9-11 (keyword-entropy: 1,029 / 1,065 / 986 / 950, the seed's mix 1,296 / 1,332 / 1,393 / 1,279).
DEFAULT_STRATEGY = "information-density"


def make_strategy(spec: str, *, seed: int = 0, sentencepiece_model: bytes | None = None,
                  vocab_size: int = 8000, n_clusters: int | None = None) -> QueryStrategy:
    """A strategy from its name (``keyword-boundary``) or a weighted mix (``keyword-boundary:0.6,random:0.4``)."""

    def one(name: str) -> QueryStrategy:
        name = name.strip().replace("_", "-")
        if name not in STRATEGIES:
            raise ReviewlensError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)} "
                                  f"or a mix like 'keyword-boundary:0.6,random:0.4'")
        if name == "rare-text":
            return RareText(sentencepiece_model, vocab_size=vocab_size)
        if name == "outliers":
            return Outliers(n_clusters, seed=seed)
        if name == "random":
            return RandomStrategy(seed)
        return STRATEGIES[name]()

    if ":" not in spec and "," not in spec:
        return one(spec)
    parts = []
    for item in spec.split(","):
        name, _, weight = item.partition(":")
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ReviewlensError(f"strategy mix {spec!r}: weight {weight!r} of {name.strip()!r} is not a "
                                  "number") from None
        if value < 0:
            raise ReviewlensError(f"strategy mix {spec!r}: weights cannot be negative")
        parts.append((one(name), value))
    return WeightedMix(parts)


# -- the shared selection --------------------------------------------------------------------------------


def largest_remainder(weights: Sequence[float], total: int) -> list[int]:
    """Integer shares of ``total`` in proportion to ``weights`` (Hamilton's method; ties to the first)."""
    weights = np.asarray(weights, dtype=float)
    if total <= 0 or not len(weights) or weights.sum() <= 0:
        return [0] * len(weights)
    exact = weights / weights.sum() * total
    shares = np.floor(exact).astype(int)
    order = np.argsort(-(exact - shares), kind="stable")
    shares[order[: total - shares.sum()]] += 1
    return shares.tolist()


class _Picker:
    """Takes candidates in a strategy's order, skipping taken, excluded and (near-)duplicate reviews."""

    def __init__(self, context: SelectionContext, blocked: np.ndarray, reference_texts: Sequence[str],
                 near_duplicate: float | None, rng: np.random.Generator, block_size: int = 256) -> None:
        self.context = context
        self.blocked = blocked
        self.taken = np.zeros(len(context), dtype=bool)
        self.rng = rng
        self.picks: list[Pick] = []
        self.duplicates = 0
        self.seen = {normalize_text(t) for t in reference_texts}
        self.near_duplicate = near_duplicate
        self.block_size = block_size
        self.vectors = self.reference = None
        if near_duplicate is not None and len(context):
            vectorizer, self.vectors = context.duplicate_vectors()
            if len(reference_texts):  # n-grams outside the pool's vocabulary cannot match a pool review anyway
                self.reference = vectorizer.transform([normalize_text(t) for t in reference_texts])

    def _near(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) the highest similarity of each row to a reference text or an already-taken review."""
        best = np.zeros(len(rows))
        if self.reference is not None and self.reference.shape[0]:
            best = np.maximum(best, (self.vectors[rows] @ self.reference.T).max(axis=1).toarray().ravel())
        taken = [p.index for p in self.picks]
        if taken:
            best = np.maximum(best, (self.vectors[rows] @ self.vectors[taken].T).max(axis=1).toarray().ravel())
        return best

    def take(self, order: np.ndarray, quota: int, strategy: str, scores: np.ndarray) -> int:
        """Take up to ``quota`` reviews from ``order`` (best first); returns how many were taken."""
        got, keys = 0, self.context.exact_keys
        free = order[~(self.taken[order] | self.blocked[order])]
        for start in range(0, len(free), self.block_size):
            if got >= quota:
                break
            block = free[start:start + self.block_size]
            block = block[~(self.taken[block] | self.blocked[block])]
            near = self._near(block) if self.vectors is not None and len(block) else np.zeros(len(block))
            accepted_in_block: list[int] = []
            for j, i in enumerate(block):
                if got >= quota:
                    break
                duplicate = keys[i] in self.seen or near[j] >= (self.near_duplicate or np.inf)
                if not duplicate and self.vectors is not None and accepted_in_block:
                    sims = (self.vectors[[i]] @ self.vectors[accepted_in_block].T).toarray().ravel()
                    duplicate = bool(sims.max() >= self.near_duplicate)
                if duplicate:
                    self.blocked[i] = True
                    self.duplicates += 1
                    continue
                self.taken[i] = True
                self.seen.add(keys[i])
                accepted_in_block.append(int(i))
                self.picks.append(Pick(int(i), strategy, float(scores[i])))
                got += 1
        return got


@dataclass
class Selection:
    """The chosen reviews, in the order they were chosen, and what happened on the way."""

    context: SelectionContext
    picks: list[Pick]
    excluded: int = 0
    duplicates: int = 0
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)  # group -> (quota, taken)
    by: str | None = None

    @property
    def indices(self) -> list[int]:
        return [p.index for p in self.picks]

    def rows(self) -> list[dict]:
        """The labeling batch: one dict per chosen review with the ``BATCH_COLUMNS``."""
        ctx = self.context
        completions = ctx.completions(self.indices)
        return [{"rank": rank, "id": ctx.ids[p.index], "text": ctx.texts[p.index], "labels": completion,
                 "model_labels": completion, "strategy": p.strategy, "score": round(p.score, 6),
                 "shop": ctx.shops[p.index] or "", "category": ctx.categories[p.index] or ""}
                for rank, (p, completion) in enumerate(zip(self.picks, completions), start=1)]

    def summary(self) -> dict:
        """Counts per strategy and group, duplicates skipped and ids excluded."""
        return {"selected": len(self.picks), "pool": len(self.context), "excluded": self.excluded,
                "duplicates_skipped": self.duplicates,
                "by_strategy": dict(Counter(p.strategy for p in self.picks)),
                **({"by_" + self.by: {g: {"quota": q, "taken": t} for g, (q, t) in self.groups.items()}}
                   if self.by else {})}

    def write(self, path: str | Path) -> Path:
        """Write the batch (CSV, JSONL or Parquet by extension), atomically."""
        from .labeling import write_table

        return write_table(self.rows(), path, BATCH_COLUMNS)


def select(context: SelectionContext, strategy: QueryStrategy | str, n: int, *, by: str | None = None,
           exclude_ids: Sequence[str] = (), exclude_texts: Sequence[str] = (),
           near_duplicate: float | None = 0.85, seed: int = 0) -> Selection:
    """Choose ``n`` pool reviews to label next.

    ``by`` ("shop" or "category") gives each group a quota in proportion to its share of the pool (the
    seed's step 3); a group short of candidates leaves its rest to the overall ranking. Reviews whose
    id is in ``exclude_ids`` or whose normalised text equals one of ``exclude_texts`` (the labeled data)
    are never chosen; nor are exact duplicates of a chosen review, nor, with ``near_duplicate`` (a
    cosine similarity of character 2-3-gram sets, None to turn off), near duplicates of a chosen or
    excluded review.
    """
    if isinstance(strategy, str):
        strategy = make_strategy(strategy, seed=seed)
    if n < 0:
        raise ReviewlensError(f"the number of reviews to select must be positive, not {n}")
    if by not in (None, "shop", "category"):
        raise ReviewlensError(f"--by must be 'shop' or 'category', not {by!r}")
    excluded_ids = {str(i) for i in exclude_ids}
    blocked = np.array([i in excluded_ids for i in context.ids], dtype=bool)
    picker = _Picker(context, blocked, list(exclude_texts), near_duplicate, np.random.default_rng(seed))
    reference_keys = set(picker.seen)
    blocked |= np.array([k in reference_keys for k in context.exact_keys], dtype=bool)
    excluded = int(blocked.sum())
    candidates = np.arange(len(context))
    n = min(n, len(context))
    # a mix splits n between its parts; groups split each part's share in proportion to what the groups
    # still need, so both the strategy quotas and the group quotas hold (as far as candidates allow)
    parts = [s for s, _ in strategy.parts] if isinstance(strategy, WeightedMix) else [strategy]
    part_quotas = largest_remainder([w for _, w in strategy.parts], n) if isinstance(strategy, WeightedMix) else [n]
    groups: dict[str, tuple[int, int]] = {}
    if by is None:
        for part, quota in zip(parts, part_quotas):
            part.choose(context, quota, candidates, picker)
    else:
        values = context.shops if by == "shop" else context.categories
        if all(v is None for v in values):
            raise ReviewlensError(f"--by {by}: the pool has no {by} values (add a '{by}' column)")
        names = np.array(["(none)" if v is None else str(v) for v in values])
        sizes = Counter(names.tolist())
        group_names = sorted(sizes, key=lambda g: (-sizes[g], g))
        members = {g: candidates[names == g] for g in group_names}
        group_quotas = dict(zip(group_names, largest_remainder([sizes[g] for g in group_names], n)))
        wanted = dict(group_quotas)
        for part, quota in zip(parts, part_quotas):
            shares = largest_remainder([wanted[g] for g in group_names], min(quota, sum(wanted.values())))
            for group, share in zip(group_names, shares):
                wanted[group] -= part.choose(context, share, members[group], picker)
        for group in group_names:  # a part short of candidates in a group: the other parts fill in
            for part in parts:
                if wanted[group] > 0:
                    wanted[group] -= part.choose(context, wanted[group], members[group], picker)
    for part in parts:  # groups short of candidates: the overall ranking
        if len(picker.picks) < n:
            part.choose(context, n - len(picker.picks), candidates, picker)
    if by is not None:
        final = Counter(names[p.index] for p in picker.picks)
        groups = {g: (group_quotas[g], final.get(g, 0)) for g in group_names}
    if len(picker.picks) < n:
        logger.warning("only %d of %d reviews could be selected (the rest are excluded or duplicates)",
                       len(picker.picks), n)
    return Selection(context, picker.picks, excluded=excluded, duplicates=picker.duplicates, groups=groups, by=by)
