"""The example formats of the three tasks and every prompt template, in one place."""

from __future__ import annotations

from dataclasses import dataclass

SENTIMENT_TEMPLATE = "###입력: {review}\n###키워드: {keyword}"
"""Input of the sentiment model: the review and one keyword (the seed's format, exactly)."""

GENERATIVE_PROMPT_TEMPLATE = "###입력: {review} \n###명령어: 리뷰를 분석해줘 \n###출력: "
"""Instruction prompt of the generative baseline; the completion string follows it."""

TEMPLATES = {"sentiment": SENTIMENT_TEMPLATE, "generative": GENERATIVE_PROMPT_TEMPLATE}


def sentiment_input(review: str, keyword: str, template: str = SENTIMENT_TEMPLATE) -> str:
    """The sentiment model's input text for one (review, keyword) pair."""
    return template.format(review=review, keyword=keyword)


def generative_prompt(review: str, template: str = GENERATIVE_PROMPT_TEMPLATE) -> str:
    """The generative model's prompt for one review."""
    return template.format(review=review)


@dataclass(frozen=True)
class KeywordExample:
    """Keyword model example: a review and its multi-hot keyword vector."""

    text: str
    targets: list[float]


@dataclass(frozen=True)
class SentimentExample:
    """Sentiment model example: the templated (review, keyword) text and a level index."""

    text: str
    label: int


def keyword_examples(dataset) -> list[KeywordExample]:
    """One multi-hot example per labeled review, in the schema's keyword order."""
    schema = dataset.schema
    out = []
    for review in dataset.reviews:
        targets = [0.0] * schema.num_keywords
        for keyword in review.labels or {}:
            targets[schema.keyword_index(keyword)] = 1.0
        out.append(KeywordExample(review.text, targets))
    return out


def sentiment_examples(dataset, template: str = SENTIMENT_TEMPLATE) -> list[SentimentExample]:
    """One example per (review, labeled keyword) pair, labeled with the level's index."""
    schema = dataset.schema
    return [
        SentimentExample(sentiment_input(review.text, keyword, template), schema.level_index(level))
        for review in dataset.reviews
        for keyword, level in (review.labels or {}).items()
    ]


def span_sentiment_examples(dataset, template: str = SENTIMENT_TEMPLATE) -> list[SentimentExample]:
    """One example per gold mention that has its own text (``Review.spans``: AI Hub and NIKL aspect spans):
    the mention's words alone with its keyword, labeled with the mention's own level. A review's pair keeps
    one level per keyword (``LabelSchema`` rules for a keyword annotated twice); its spans keep each one."""
    schema = dataset.schema
    return [
        SentimentExample(sentiment_input(span["text"], span["keyword"], template), schema.level_index(span["level"]))
        for review in dataset.reviews
        for span in review.spans or []
        if span.get("text") and span["keyword"] in schema.keywords and span["level"] in schema.levels
    ]


def generative_examples(dataset, template: str = GENERATIVE_PROMPT_TEMPLATE) -> list[tuple[str, str]]:
    """(prompt, completion) pairs for the generative baseline."""
    return [(generative_prompt(r.text, template), dataset.schema.format(r.labels or {})) for r in dataset.reviews]
