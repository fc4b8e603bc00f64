"""ReviewAnalyzer: keywords, then the sentiment of each, then the words that drove them."""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bundle import ModelBundle, resolve_bundle_path
from .calibration import apply_thresholds
from .clause_sentiment import pair_sentiment
from .errors import ReviewlensError
from .highlight import Highlight, check_sentiment_scope, clause_around, keyword_highlights, sentiment_highlights
from .tasks import SENTIMENT_TEMPLATE

logger = logging.getLogger(__name__)


@dataclass
class KeywordResult:
    """One detected keyword: its probability, sentiment level and the words behind both."""

    keyword: str
    probability: float
    level: int
    level_probabilities: dict[str, float]
    highlights: list[Highlight] = field(default_factory=list)
    sentiment_highlights: list[Highlight] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "keyword": self.keyword, "probability": round(self.probability, 6), "level": self.level,
            "level_probabilities": {k: round(v, 6) for k, v in self.level_probabilities.items()},
            "highlights": [h.to_dict() for h in self.highlights],
            "sentiment_highlights": [h.to_dict() for h in self.sentiment_highlights],
        }


@dataclass
class ReviewAnalysis:
    """The analysis of one review."""

    text: str
    keywords: list[KeywordResult] = field(default_factory=list)
    id: str | None = None

    @property
    def labels(self) -> dict[str, int]:
        """keyword -> level, as a label dict."""
        return {k.keyword: k.level for k in self.keywords}

    def completion(self) -> str:
        """The seed's completion string, e.g. ``디자인 1, 배송 -1``."""
        return ", ".join(f"{k.keyword} {k.level}" for k in self.keywords)

    def to_dict(self) -> dict:
        out = {"text": self.text, "completion": self.completion(), "keywords": [k.to_dict() for k in self.keywords]}
        if self.id is not None:
            out = {"id": self.id, **out}
        return out


ANALYSIS_COLUMNS = ("id", "text", "completion", "keywords")
"""The columns of ``reviewlens analyze --format csv``: ``keywords`` holds each keyword's result as JSON."""


def analysis_rows(results: Iterable[ReviewAnalysis]) -> list[dict]:
    """Flat rows (``ANALYSIS_COLUMNS``) for CSV or Parquet output, one per review."""
    return [{"id": r.id or "", "text": r.text, "completion": r.completion(),
             "keywords": json.dumps([k.to_dict() for k in r.keywords], ensure_ascii=False)} for r in results]


def has_content(text: str) -> bool:
    """True when the text has at least one letter or digit (not empty, blank or emoji-only)."""
    return any(unicodedata.category(c)[0] in "LN" for c in text)


class ReviewAnalyzer:
    """Runs a bundle's keyword and sentiment models through a scorer."""

    def __init__(self, bundle: ModelBundle, scorer) -> None:
        self.bundle = bundle
        self.scorer = scorer
        self.schema = bundle.schema
        self.keywords = list(bundle.schema.keywords)
        self.levels = list(bundle.schema.levels)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, *, device: str = "auto", batch_size: int = 64,
                        backend: str | None = None) -> "ReviewAnalyzer":
        """Load a bundle directory (the default bundle when ``path`` is None) onto ``device`` ("auto": the GPU
        when there is one, ``reviewlens.device.resolve_device``; the ONNX backend runs on the CPU)."""
        from .device import resolve_device

        device = resolve_device(device)
        bundle = ModelBundle.load(resolve_bundle_path(path))
        backend = backend or bundle.backend
        bundle.check_heads()
        if bundle.kind == "generative":
            from .generative import GenerativeAnalyzer

            return GenerativeAnalyzer.from_bundle(bundle, device=device)
        if backend == "onnx":
            from .compress.onnx import OnnxScorer

            scorer = OnnxScorer.from_bundle(bundle, batch_size=batch_size)
        else:
            from .modeling import load_classifier
            from .scoring import TorchScorer

            kw_model, kw_tok = load_classifier(bundle.path / "keyword", device)
            st_model, st_tok = load_classifier(bundle.path / "sentiment", device)
            scorer = TorchScorer(kw_model, kw_tok, st_model, st_tok, device=device, batch_size=batch_size,
                                 template=bundle.templates.get("sentiment", SENTIMENT_TEMPLATE))
        return cls(bundle, scorer)

    def keyword_probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(n, K) keyword probabilities."""
        return self.scorer.keyword_probs(list(texts))

    def predict_keywords(self, probs: np.ndarray) -> np.ndarray:
        """(n, K) booleans with the bundle's calibrated thresholds."""
        return apply_thresholds(probs, self.keywords, self.bundle.thresholds)

    def analyze(self, texts: str | Iterable[str], *, highlights: bool = True, top_k: int = 3,
                ids: Sequence[str] | None = None, attribution: str = "occlusion",
                sentiment_scope: str = "clause") -> list[ReviewAnalysis]:
        """Analyse reviews: keywords above threshold, their sentiment and (optionally) highlights.

        A keyword's level pools the sentiment model's reading of the whole review with its reading of the
        keyword's own clause, by the bundle's ``clause_weight`` (see ``reviewlens.clause_sentiment``).

        ``attribution`` picks how highlights are found: ``"occlusion"`` (mask each word, any backend) or
        ``"gradient"`` (gradient × input, torch bundles, cheaper; see ``reviewlens.attribution``).
        ``sentiment_scope`` picks where a keyword's sentiment highlights may lie: ``"clause"`` (the clause that
        holds the keyword's top highlight, see ``highlight.clause_around``; the whole review when the keyword
        has no highlight) or ``"review"`` (any word).
        """
        if attribution not in ("occlusion", "gradient"):
            raise ReviewlensError(f"attribution must be 'occlusion' or 'gradient', not {attribution!r}")
        check_sentiment_scope(sentiment_scope)
        texts = [texts] if isinstance(texts, str) else list(texts)
        results = [ReviewAnalysis(t, id=(ids[i] if ids is not None else None)) for i, t in enumerate(texts)]
        live = [i for i, t in enumerate(texts) if isinstance(t, str) and has_content(t)]
        if not live:
            return results
        live_texts = [texts[i] for i in live]
        before = getattr(self.scorer, "truncated", 0)
        probs = self.keyword_probabilities(live_texts)
        n_long = getattr(self.scorer, "truncated", 0) - before
        if n_long:
            logger.warning("%d review(s) longer than the model's max length were truncated", n_long)
        chosen = self.predict_keywords(probs)
        pairs = [(j, self.keywords[k]) for j in range(len(live)) for k in np.flatnonzero(chosen[j])]
        weight = self.bundle.clause_weight
        sentiment = pair_sentiment(self.scorer, live_texts, pairs, self.keywords, read_clause=weight > 0)
        sent = sentiment.pooled(weight)
        level_names = [str(v) for v in self.levels]
        per_review: dict[int, list[KeywordResult]] = {j: [] for j in range(len(live))}
        for (j, kw), dist in zip(pairs, sent):
            level_idx = int(np.argmax(dist))
            per_review[j].append(KeywordResult(
                kw, float(probs[j, self.keywords.index(kw)]), self.levels[level_idx],
                {n: float(p) for n, p in zip(level_names, dist)}))
        if highlights and pairs:
            targets = [list(np.flatnonzero(chosen[j])) for j in range(len(live))]
            kw_highlights, st_highlights = keyword_highlights, sentiment_highlights
            if attribution == "gradient":
                from .attribution import keyword_highlights as kw_highlights, sentiment_highlights as st_highlights
            kw_hl = kw_highlights(self.scorer, live_texts, probs, targets, top_k)
            # the drops are measured on the whole-review model, so the base is its probability of the chosen level
            st_pairs = [(j, kw, int(np.argmax(dist)), float(whole[np.argmax(dist)]))
                        for (j, kw), dist, whole in zip(pairs, sent, sentiment.review)]
            scopes = None
            if sentiment_scope == "clause" and weight > 0:  # the clause the level was read from
                scopes = sentiment.clauses
            elif sentiment_scope == "clause":
                anchors = [kw_hl[j].get(self.keywords.index(kw)) for j, kw in pairs]
                scopes = [clause_around(live_texts[j], anchor[0].start) if anchor else None
                          for (j, _), anchor in zip(pairs, anchors)]
            st_hl = st_highlights(self.scorer, live_texts, st_pairs, top_k, scopes=scopes)
            p = 0
            for j in range(len(live)):
                for result in per_review[j]:
                    result.highlights = kw_hl[j].get(self.keywords.index(result.keyword), [])
                    result.sentiment_highlights = st_hl[p]
                    p += 1
        for j, i in enumerate(live):
            results[i].keywords = sorted(per_review[j], key=lambda r: -r.probability)
        return results
