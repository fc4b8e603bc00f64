"""Highlights: offsets, batching, and a planted trigger word coming out on top."""

import random

import numpy as np
import pytest
from conftest import CORPUS, build_tiny_base

from reviewlens.analyzer import ReviewAnalyzer
from reviewlens.data import Review, ReviewDataset
from reviewlens.errors import ReviewlensError
from reviewlens.highlight import clause_around, clauses, masked_variants, whitespace_words
from reviewlens.schema import LabelSchema
from reviewlens.training import TrainConfig, train


def test_whitespace_words_offsets():
    text = "옷은  예쁘지만\t배송은 늦어요"
    words = whitespace_words(text)
    assert [w for w, _, _ in words] == ["옷은", "예쁘지만", "배송은", "늦어요"]
    assert all(text[s:e] == w for w, s, e in words)
    assert masked_variants(text, words, "[MASK]")[1] == "옷은  [MASK]\t배송은 늦어요"


FILLER = ["오늘", "받았어요", "그냥", "무난해요", "생각보다", "괜찮네요", "주문했어요", "입어봤어요", "보통이에요", "그럭저럭"]


def _trigger_dataset(n: int = 160, seed: int = 0) -> ReviewDataset:
    """배송 is labeled exactly when the word 택배 appears; its sentiment follows 빨라요 / 늦어요.

    빨라요 / 늦어요 also appear without 택배, so only 택배 predicts the keyword. A review without 택배 has one more
    filler word instead, so length says nothing about the keyword (when 택배 was an extra word, a model could learn
    "six words: 배송", and the five-word probe below sat on the threshold: 0.50 trained on a CPU, 0.24 on a GPU)."""
    rng = random.Random(seed)
    schema = LabelSchema(["배송", "만족도"], levels=[-1, 0, 1])
    reviews = []
    for i in range(n):
        words = rng.sample(FILLER, rng.randint(4, 5))
        labels = {"만족도": 0}
        fast = i % 4 < 2
        if i % 2 == 0:
            words[rng.randrange(len(words))] = "택배"
            labels["배송"] = 1 if fast else -1
        words.insert(rng.randrange(len(words) + 1), "빨라요" if fast else "늦어요")
        reviews.append(Review(str(i), " ".join(words), labels))
    return ReviewDataset(reviews, schema, source="trigger")


def test_planted_trigger_word_is_the_top_highlight(tmp_path):
    data = _trigger_dataset()
    # a base whose vocabulary holds every word of the task, so 택배 is one piece whatever data is installed
    base = build_tiny_base(tmp_path / "base", CORPUS + data.texts)
    config = TrainConfig(base=str(base), pooling="mean", keyword_epochs=12, sentiment_epochs=12,
                         learning_rate=3e-3, batch_size=16, early_stopping_patience=0, warmup_ratio=0.0,
                         class_weighted=False, seed=1)
    train(data, tmp_path / "bundle", config, validation=_trigger_dataset(40, seed=1))
    analyzer = ReviewAnalyzer.from_pretrained(tmp_path / "bundle")
    texts = ["오늘 택배 그냥 무난해요 빨라요", "생각보다 괜찮네요 늦어요 택배 주문했어요"]
    results = analyzer.analyze(texts, top_k=3)
    for text, result in zip(texts, results):
        found = {k.keyword: k for k in result.keywords}
        assert "배송" in found, result.to_dict()
        top = found["배송"].highlights[0]
        assert top.word == "택배" and text[top.start:top.end] == "택배"
        assert top.score > 0
    assert {k.keyword: k.level for k in results[0].keywords}["배송"] == 1
    assert {k.keyword: k.level for k in results[1].keywords}["배송"] == -1
    # the sentiment highlight of 배송 names the word that carries the polarity (these synthetic reviews have no
    # clause structure, and "무난해요" closes the clause of 택배, so the whole review is the scope here)
    results = analyzer.analyze(texts[:1], top_k=3, sentiment_scope="review")
    assert {k.keyword: k for k in results[0].keywords}["배송"].sentiment_highlights[0].word == "빨라요"


def test_occlusion_is_batched_across_reviews(tiny_base, tmp_path):
    """All variants of a call go through few forward passes, not one per variant."""
    from reviewlens.modeling import build_classifier, MULTI_LABEL, SINGLE_LABEL
    from reviewlens.scoring import GPU_BATCH_OVERHEAD, TorchScorer
    from reviewlens.bundle import ModelBundle

    kw, tok = build_classifier(str(tiny_base), 2, MULTI_LABEL, pooling="mean")
    st, tok2 = build_classifier(str(tiny_base), 3, SINGLE_LABEL, pooling="mean")
    scorer = TorchScorer(kw, tok, st, tok2, batch_size=64)
    # a call's fixed cost as on a GPU: batches are then cut by the size limit alone (the cost-planned cuts of a
    # CPU, where padding can cost more than another call, are tested in test_scoring.py)
    scorer.batch_overhead = GPU_BATCH_OVERHEAD
    calls = []
    original = scorer._logits
    scorer._logits = lambda which, batch: calls.append((which, batch["input_ids"].shape)) or original(which, batch)
    bundle = ModelBundle(schema=LabelSchema(["배송", "만족도"], levels=[-1, 0, 1]), thresholds={"배송": 0.0, "만족도": 0.0})
    analyzer = ReviewAnalyzer(bundle, scorer)
    texts = [" ".join(random.Random(i).sample(FILLER, 6)) for i in range(8)]
    results = analyzer.analyze(texts, sentiment_scope="review")
    assert all(len(r.keywords) == 2 for r in results)
    # 8 reviews x 6 words = 48 keyword variants, 8 x 2 x 6 = 96 sentiment variants
    kw_calls = [c for c in calls if c[0] == "keyword"]
    st_calls = [c for c in calls if c[0] == "sentiment"]
    assert sum(shape[0] for _, shape in kw_calls) == 8 + 48
    assert sum(shape[0] for _, shape in st_calls) == 8 * 2 + 96
    assert len(kw_calls) <= 3 and len(st_calls) <= 4


def test_clause_around_cuts_after_connective_and_final_endings():
    text = "옷은 예쁘지만 배송은 늦어요. 색상도 좋고 가격도 싸요 ㅎㅎ 재구매 의사 있음"
    clause = lambda word: text[slice(*clause_around(text, text.index(word)))]
    assert clause("옷은") == clause("예쁘지만") == "옷은 예쁘지만"
    assert clause("배송은") == "배송은 늦어요."
    assert clause("색상도") == "색상도 좋고"
    assert clause("가격도") == "가격도 싸요"
    assert clause("ㅎㅎ") == "ㅎㅎ"
    assert clause("재구매") == "재구매 의사 있음"
    assert clause_around(text, text.index(" 배송은")) == (0, len(text))  # between two clauses: the whole review
    lines = "배송 빠름\n색상 굿 사이즈 딱"  # a line break ends a clause even without an ending
    assert [lines[s:e] for s, e in clauses(lines)] == ["배송 빠름", "색상 굿 사이즈 딱"]
    assert clauses("") == [] and clauses("   ") == []


class _LeakyScorer:
    """Keyword 배송 fires on 배송은, 디자인 on 옷은; the sentiment of *every* keyword leans on every opinion word,
    most on 별로지만 (the way a sentiment model reading the whole review leaks other clauses' sentiment)."""

    keywords = ["배송", "디자인"]
    weights = {"별로지만": 3.0, "늦어요": 2.0}

    def __init__(self):
        self.sentiment_inputs = 0

    def mask_token(self, which):
        return "[MASK]"

    def keyword_probs(self, texts):
        return np.array([[0.9 if "배송은" in t else 0.1, 0.9 if "옷은" in t else 0.1] for t in texts])

    def sentiment_probs(self, texts, keywords):
        self.sentiment_inputs += len(texts)
        logits = np.array([[sum(w for word, w in self.weights.items() if word in t.split()), 0.0, 0.0] for t in texts])
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_sentiment_highlights_scoped_to_the_keywords_clause():
    from reviewlens.bundle import ModelBundle

    bundle = ModelBundle(schema=LabelSchema(_LeakyScorer.keywords, levels=[-1, 0, 1]),
                         thresholds={"배송": 0.5, "디자인": 0.5})
    text = "옷은 별로지만 배송은 늦어요"
    scorer = _LeakyScorer()
    scoped = {k.keyword: k for k in ReviewAnalyzer(bundle, scorer).analyze([text])[0].keywords}
    assert scoped["배송"].level == -1 and scoped["배송"].highlights[0].word == "배송은"
    assert [h.word for h in scoped["배송"].sentiment_highlights] == ["늦어요"]
    assert [h.word for h in scoped["디자인"].sentiment_highlights] == ["별로지만"]
    assert scorer.sentiment_inputs == 2 + 2 + 2  # the 2 pairs, then 2 words of each keyword's clause occluded
    whole = {k.keyword: k for k in ReviewAnalyzer(bundle, _LeakyScorer()).analyze(
        [text], sentiment_scope="review")[0].keywords}
    assert [h.word for h in whole["배송"].sentiment_highlights] == ["별로지만", "늦어요"]
    with pytest.raises(ReviewlensError, match="sentiment_scope"):
        ReviewAnalyzer(bundle, scorer).analyze([text], sentiment_scope="sentence")


def test_empty_blank_emoji_and_long_reviews(tiny_base):
    from reviewlens.modeling import build_classifier, MULTI_LABEL, SINGLE_LABEL
    from reviewlens.scoring import TorchScorer
    from reviewlens.bundle import ModelBundle

    kw, tok = build_classifier(str(tiny_base), 2, MULTI_LABEL)
    st, tok2 = build_classifier(str(tiny_base), 3, SINGLE_LABEL)
    bundle = ModelBundle(schema=LabelSchema(["배송", "만족도"], levels=[-1, 0, 1]), thresholds={"배송": 0.0, "만족도": 0.0})
    analyzer = ReviewAnalyzer(bundle, TorchScorer(kw, tok, st, tok2))
    long_review = "배송이 빨라요 " * 2000
    results = analyzer.analyze(["", "   \n", "😀😍👍", long_review])
    assert [r.keywords for r in results[:3]] == [[], [], []]
    assert len(results[3].keywords) == 2  # truncated, not an index error
    assert np.isfinite(results[3].keywords[0].probability)


def test_long_review_occludes_only_words_the_model_sees(tiny_bundle):
    """A review longer than the model's input: words past the truncation point are not occluded (they cannot
    change the output), and the sentiment input keeps its keyword (the review is cut, not the template)."""
    from reviewlens.highlight import keyword_highlights, sentiment_highlights
    from reviewlens.tasks import sentiment_input

    analyzer = ReviewAnalyzer.from_pretrained(tiny_bundle)
    scorer = analyzer.scorer
    text = " ".join(["배송이", "빨라요", "색상이", "예뻐요", "사이즈가", "커요"] * 400)
    n_words = len(whitespace_words(text))
    seen = {"keyword": 0, "sentiment": 0}

    class Counting:
        def __getattr__(self, name):
            return getattr(scorer, name)

        def keyword_probs(self, texts):
            seen["keyword"] += len(texts)
            return scorer.keyword_probs(texts)

        def sentiment_probs(self, texts, keywords):
            seen["sentiment"] += len(texts)
            return scorer.sentiment_probs(texts, keywords)

    visible = scorer.visible_chars("keyword", [text])[0]
    assert 0 < visible < len(text)
    base = scorer.keyword_probs([text])
    out = keyword_highlights(Counting(), [text], base, [[0, 1]], top_k=50)
    assert 0 < seen["keyword"] <= scorer.max_lengths["keyword"] < n_words
    assert all(h.end <= visible for hs in out[0].values() for h in hs)

    keyword = analyzer.keywords[0]
    cut = scorer.sentiment_visible_chars([text], [keyword])[0]
    ids = scorer.tokenizers["sentiment"](sentiment_input(text[:cut], keyword, scorer.template))["input_ids"]
    assert len(ids) <= scorer.max_lengths["sentiment"]
    level = int(np.argmax(scorer.sentiment_probs([text], [keyword])[0]))
    pairs = [(0, keyword, level, float(scorer.sentiment_probs([text], [keyword])[0, level]))]
    highlights = sentiment_highlights(Counting(), [text], pairs, top_k=50)[0]
    assert 0 < seen["sentiment"] <= scorer.max_lengths["sentiment"]
    assert all(h.end <= cut for h in highlights)
