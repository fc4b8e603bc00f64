"""Selection strategies, quotas, de-duplication and the labeling batch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from reviewlens.data import read_reviews
from reviewlens.errors import DataError, ModelError, ReviewlensError
from reviewlens.selection import (BATCH_COLUMNS, DEFAULT_STRATEGY, SEED_MIX, BundleSelectionModel, KeywordBoundary,
                                  KeywordEntropy, Outliers, RandomStrategy, RareText, SelectionContext,
                                  SentimentMargin, WeightedMix, largest_remainder, load_or_train_sentencepiece,
                                  make_strategy, normalize_text, select, train_sentencepiece)

from conftest import EXAMPLES

KEYWORDS = ["디자인", "배송", "품질"]
LEVELS = [-1, 0, 1]


class FakeModel:
    """A SelectionModel with hand-set outputs: probs per text, sentiment per (text, keyword), embeddings."""

    def __init__(self, probs: dict[str, list[float]], sentiment: dict | None = None, embeddings: dict | None = None,
                 thresholds: dict[str, float] | None = None) -> None:
        self.keywords, self.levels = list(KEYWORDS), list(LEVELS)
        self.thresholds = thresholds if thresholds is not None else {"디자인": 0.5, "배송": 0.3, "품질": 0.7}
        self.probs, self.sentiment, self.embeddings = probs, sentiment or {}, embeddings or {}
        self.sentiment_calls: list[tuple[str, str]] = []

    def keyword_probs(self, texts):
        return np.array([self.probs[t] for t in texts], dtype=float)

    def sentiment_probs(self, texts, keywords):
        self.sentiment_calls += list(zip(texts, keywords))
        return np.array([self.sentiment.get((t, k), [0.05, 0.05, 0.9]) for t, k in zip(texts, keywords)])

    def embed(self, texts):
        return np.array([self.embeddings[t] for t in texts], dtype=float)


def test_keyword_boundary_prefers_probabilities_at_their_threshold():
    probs = {"a": [0.5, 0.0, 1.0], "b": [0.9, 0.05, 0.95], "c": [0.25, 0.3, 0.0], "d": [0.0, 0.0, 0.85]}
    ctx = SelectionContext(list(probs), FakeModel(probs))
    scores = KeywordBoundary().score(ctx)
    # a: 디자인 exactly at 0.5; c: 배송 exactly at 0.3; b: closest is 디자인 0.9 -> 1 - 0.4/0.5 = 0.2;
    # d: 품질 0.85 above t=0.7 -> 1 - 0.15/0.3 = 0.5
    assert scores == pytest.approx([1.0, 0.2, 1.0, 0.5])
    chosen = select(ctx, KeywordBoundary(), 3, near_duplicate=None)
    assert set(chosen.indices[:2]) == {0, 2} and chosen.indices[2] == 3


def test_keyword_entropy_adds_up_the_doubt_about_every_keyword():
    # one: 디자인 exactly at its threshold, the rest sure; many: three keywords at 0.3
    probs = {"one": [0.5, 0.02, 0.98], "many": [0.3, 0.3, 0.3], "sure": [0.0, 1.0, 0.0]}
    ctx = SelectionContext(list(probs), FakeModel(probs, thresholds={k: 0.5 for k in KEYWORDS}))

    def h(p):
        return -(p * np.log(p) + (1 - p) * np.log(1 - p))

    scores = KeywordEntropy().score(ctx)
    assert scores == pytest.approx([h(0.5) + 2 * h(0.02), 3 * h(0.3), 0.0], abs=1e-6)
    assert select(ctx, make_strategy("keyword-entropy"), 1, near_duplicate=None).indices == [1]
    assert select(ctx, KeywordBoundary(), 1, near_duplicate=None).indices == [0]  # the single closest keyword


def test_label_entropy_adds_the_level_doubt_of_likely_keywords():
    from reviewlens.selection import LabelEntropy

    # same keyword doubt; "mixed" is unsure of its predicted keyword's level, "clear" is not
    probs = {"clear": [0.9, 0.02, 0.02], "mixed": [0.9, 0.02, 0.02]}
    sentiment = {("clear", "디자인"): [0.0, 0.0, 1.0], ("mixed", "디자인"): [0.5, 0.0, 0.5]}
    ctx = SelectionContext(list(probs), FakeModel(probs, sentiment, thresholds={k: 0.5 for k in KEYWORDS}))
    keyword = KeywordEntropy().score(ctx)
    assert keyword[0] == pytest.approx(keyword[1])
    # H(absent, present at v) = H(p) + p * H(levels): 0.9 * ln 2 more for "mixed"
    assert LabelEntropy().score(ctx) == pytest.approx([keyword[0], keyword[1] + 0.9 * np.log(2)], abs=1e-6)
    assert select(ctx, make_strategy("label-entropy"), 1, near_duplicate=None).indices == [1]


def test_information_density_weights_doubt_by_typicality():
    from reviewlens.selection import InformationDensity, typicality

    # "typical" and "odd" share their keyword doubt; "odd" lies away from the pool's other reviews
    probs = {"typical": [0.5, 0.5, 0.02], "odd": [0.5, 0.5, 0.02], "a": [0.02] * 3, "b": [0.02] * 3,
             "sure": [0.0, 1.0, 0.0]}
    embeddings = {"typical": [1.0, 0.1], "odd": [0.0, 1.0], "a": [1.0, 0.0], "b": [2.0, 0.3], "sure": [1.0, 0.05]}
    ctx = SelectionContext(list(probs), FakeModel(probs, embeddings=embeddings))
    entropy = KeywordEntropy().score(ctx)
    x = np.array([embeddings[t] for t in probs])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    log_similarity = np.log(np.clip(x @ x.mean(axis=0), 1e-6, None))  # each review's mean cosine similarity
    z = (log_similarity - log_similarity.mean()) / log_similarity.std()
    assert typicality(x * 3.0) == pytest.approx(z)  # in SDs of the pool, whatever the vectors' length
    assert InformationDensity(strength=0.5).score(ctx) == pytest.approx(entropy * np.exp(0.5 * z))
    assert InformationDensity(strength=0.0).score(ctx) == pytest.approx(entropy)
    assert InformationDensity().score(ctx) == pytest.approx(entropy * np.exp(0.072 * z))  # the default
    assert select(ctx, make_strategy("information-density"), 1, near_duplicate=None).indices == [0]
    assert entropy[0] == pytest.approx(entropy[1])  # keyword-entropy alone cannot tell them apart
    with pytest.raises(ReviewlensError, match="strength"):
        InformationDensity(strength=-1)


def test_typicality_is_the_same_for_any_spread_of_similarities():
    from reviewlens.selection import typicality

    rng = np.random.default_rng(0)
    directions = rng.normal(size=(40, 16))
    common = np.zeros(16)
    common[0] = 1.0
    # two encoders: one spreads the reviews widely, the other packs them near a common direction
    wide, packed = directions + 2.0 * common, directions + 8.0 * common

    def log_similarity_spread(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return np.log(x @ x.mean(axis=0)).std()

    assert log_similarity_spread(wide) > 5 * log_similarity_spread(packed)  # a raw power would mean different things
    for z in (typicality(wide), typicality(packed)):  # in SDs of its own pool, the weight means the same in both
        assert z.std() == pytest.approx(1.0) and z.mean() == pytest.approx(0.0, abs=1e-9)
    assert np.array_equal(typicality(np.ones((3, 4))), np.zeros(3))  # no spread: no weight
    assert typicality(np.zeros((0, 4))).shape == (0,)


def test_sentiment_margin_is_the_seeds_formula_over_predicted_keywords():
    probs = {"x": [0.9, 0.9, 0.0], "y": [0.1, 0.1, 0.1], "z": [0.9, 0.0, 0.0]}
    sentiment = {("x", "디자인"): [0.1, 0.1, 0.8], ("x", "배송"): [0.4, 0.3, 0.3],
                 ("y", "디자인"): [1 / 3, 1 / 3, 1 / 3], ("z", "디자인"): [0.0, 0.0, 1.0]}
    model = FakeModel(probs, sentiment)
    ctx = SelectionContext(list(probs), model)
    scores = SentimentMargin().score(ctx)
    # x: max over its two predicted keywords: (1 - 0.4) * 3/2 = 0.9; y has no keyword above threshold, so its
    # most probable one (the first, 디자인) is read: (1 - 1/3) * 3/2 = 1.0; z is certain: 0
    assert scores == pytest.approx([0.9, 1.0, 0.0])
    assert ("y", "디자인") in model.sentiment_calls and ("x", "품질") not in model.sentiment_calls


def test_rare_text_scores_unseen_characters_and_rare_pieces_high():
    first = read_reviews(EXAMPLES / "fashion_reviews.csv").texts
    pool = [first[0], "뷁뛟쀍 햏", first[5]]
    ctx = SelectionContext(pool, FakeModel({t: [0, 0, 0] for t in pool}), first_texts=first)
    scores = RareText(vocab_size=300).score(ctx)
    assert scores[1] == pytest.approx(1.0)  # characters never seen: every piece is <unk>
    assert scores[0] < 0.5 and scores[2] < 0.5
    # a vocabulary smaller than the alphabet of the first texts still trains (it is widened)
    import sentencepiece as spm

    assert spm.SentencePieceProcessor(model_proto=train_sentencepiece(first, 50)).get_piece_size() > 50


def test_sentencepiece_model_is_cached_by_texts(tmp_path):
    texts = ["배송이 빨라요", "디자인이 예뻐요", "품질이 좋아요"] * 10
    model, path = load_or_train_sentencepiece(texts, tmp_path, vocab_size=40)
    assert path.is_file() and path.read_bytes() == model
    path.write_bytes(train_sentencepiece(["다른 텍스트 입니다"] * 10, 20))  # a cached file is read, not retrained
    again, same = load_or_train_sentencepiece(texts, tmp_path, vocab_size=40)
    assert same == path and again == path.read_bytes() and again != model
    _, other = load_or_train_sentencepiece(texts[:3], tmp_path, vocab_size=40)
    assert other != path


def test_outliers_are_far_from_their_centroid_even_alone():
    rng = np.random.default_rng(0)
    emb = {f"a{i}": [1.0, 0.0, 0.0] + rng.normal(0, 0.01, 3) for i in range(10)}
    emb.update({f"b{i}": [0.0, 1.0, 0.0] + rng.normal(0, 0.01, 3) for i in range(10)})
    emb["far"] = [0.0, 0.0, 1.0]
    texts = list(emb)
    ctx = SelectionContext(texts, FakeModel({t: [0, 0, 0] for t in texts}, embeddings=emb))
    scores = Outliers(n_clusters=3, seed=0).score(ctx)
    assert texts[int(np.argmax(scores))] == "far"
    assert scores[texts.index("far")] > 5 * np.median(scores)


def test_weighted_mix_fills_quotas_in_proportion():
    probs = {f"r{i}": [0.5 if i < 5 else 0.0, 0.0, 0.0] for i in range(12)}
    ctx = SelectionContext(list(probs), FakeModel(probs))
    mix = WeightedMix([(KeywordBoundary(), 2.0), (RandomStrategy(seed=1), 1.0)])
    chosen = select(ctx, mix, 6, near_duplicate=None)
    by = [p.strategy for p in chosen.picks]
    assert by.count("keyword-boundary") == 4 and by.count("random") == 2
    assert {p.index for p in chosen.picks if p.strategy == "keyword-boundary"} <= set(range(5))
    assert len(set(chosen.indices)) == 6
    assert largest_remainder([1, 1, 1], 4) == [2, 1, 1] and sum(largest_remainder([0.5, 0.3, 0.2], 7)) == 7


def test_make_strategy_names_and_mixes():
    assert isinstance(make_strategy("keyword_boundary"), KeywordBoundary)
    mix = make_strategy("keyword-boundary:0.6,random:0.4", seed=3)
    assert isinstance(mix, WeightedMix) and [w for _, w in mix.parts] == [0.6, 0.4]
    with pytest.raises(ReviewlensError, match="unknown strategy 'entropy'"):
        make_strategy("entropy")
    with pytest.raises(ReviewlensError, match="not a number"):
        make_strategy("random:lots,keyword-boundary:1")


def test_proportional_quotas_by_shop():
    texts = [f"리뷰 {i}" for i in range(12)]
    shops = ["A"] * 8 + ["B"] * 4
    probs = {t: [0.5 if s == "A" else 0.45, 0.0, 0.0] for t, s in zip(texts, shops)}  # A always ranks higher
    ctx = SelectionContext(texts, FakeModel(probs), shops=shops)
    chosen = select(ctx, KeywordBoundary(), 6, by="shop", near_duplicate=None)
    picked = [shops[i] for i in chosen.indices]
    assert picked.count("A") == 4 and picked.count("B") == 2
    assert chosen.summary()["by_shop"] == {"A": {"quota": 4, "taken": 4}, "B": {"quota": 2, "taken": 2}}
    mixed = select(ctx, WeightedMix([(KeywordBoundary(), 1.0), (RandomStrategy(seed=2), 1.0)]), 6, by="shop",
                   near_duplicate=None)
    assert Counter(p.strategy for p in mixed.picks) == {"keyword-boundary": 3, "random": 3}
    assert Counter(shops[i] for i in mixed.indices) == {"A": 4, "B": 2}
    unranked = select(ctx, KeywordBoundary(), 6, near_duplicate=None)
    assert [shops[i] for i in unranked.indices].count("B") == 0
    with pytest.raises(ReviewlensError, match="no category values"):
        select(ctx, KeywordBoundary(), 2, by="category")


def test_duplicates_and_labeled_reviews_are_never_selected():
    texts = ["배송이 정말 빨라서 좋아요", "배송이 정말 빨라서 좋아요!!", "배송이 정말 빨라서 좋아요 ㅎㅎ",
             "색상이 사진이랑 달라요", "이미 라벨링한 리뷰입니다", "사이즈가 작아요", "품질이 별로예요"]
    ids = [f"r{i}" for i in range(len(texts))]
    probs = {t: [0.5 - 0.01 * i, 0.0, 0.0] for i, t in enumerate(texts)}  # ranked in list order
    ctx = SelectionContext(texts, FakeModel(probs), ids=ids)
    chosen = select(ctx, KeywordBoundary(), 4, exclude_ids=["r3"], exclude_texts=["이미 라벨링한 리뷰입니다."])
    # r1 is an exact duplicate of r0 (punctuation aside), r2 a near duplicate; r3 excluded by id, r4 by text
    assert [ids[i] for i in chosen.indices] == ["r0", "r5", "r6"]
    assert chosen.duplicates == 2 and chosen.excluded == 2
    loose = select(ctx, KeywordBoundary(), 4, exclude_ids=["r3"], near_duplicate=None)
    assert [ids[i] for i in loose.indices] == ["r0", "r2", "r4", "r5"]
    assert normalize_text("배송 빨라요!!") == normalize_text("배송빨라요")


def test_batch_rows_carry_the_models_completion(tmp_path):
    probs = {"옷은 예쁘지만 배송은 늦어요": [0.9, 0.8, 0.1], "색이 정말 이뻐요": [0.95, 0.0, 0.0],
             "그냥 그래요": [0.1, 0.1, 0.1]}
    sentiment = {("옷은 예쁘지만 배송은 늦어요", "배송"): [0.8, 0.1, 0.1]}
    ctx = SelectionContext(list(probs), FakeModel(probs, sentiment), ids=["a", "b", "c"],
                           shops=["몰1", "몰2", None], categories=["원피스", None, None])
    chosen = select(ctx, RandomStrategy(seed=0), 3, near_duplicate=None)
    rows = {row["id"]: row for row in chosen.rows()}
    assert rows["a"]["labels"] == "디자인 1, 배송 -1" and rows["a"]["model_labels"] == rows["a"]["labels"]
    assert rows["b"]["labels"] == "디자인 1" and rows["c"]["labels"] == ""
    assert rows["a"]["shop"] == "몰1" and rows["a"]["strategy"] == "random"
    path = chosen.write(tmp_path / "batch.csv")
    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header.split(",") == BATCH_COLUMNS
    batch = read_reviews(path, levels=LEVELS)
    assert {r.id: r.labels for r in batch} == {"a": {"디자인": 1, "배송": -1}, "b": {"디자인": 1}, "c": None}


def test_read_reviews_can_ignore_labels(tmp_path):
    path = tmp_path / "pool.csv"
    path.write_text("id,text,labels,shop,category\n1,좋아요,없는키워드 9,몰,상의\n2,별로예요,,몰2,\n", encoding="utf-8")
    with pytest.raises(DataError):
        read_reviews(path, schema=read_reviews(EXAMPLES / "fashion_reviews.csv").schema)
    pool = read_reviews(path, ignore_labels=True)
    assert [(r.id, r.labels, r.shop, r.category) for r in pool] == [("1", None, "몰", "상의"), ("2", None, "몰2", None)]


def test_bundle_selection_end_to_end(tiny_bundle, tmp_path):
    model = BundleSelectionModel.from_pretrained(tiny_bundle)
    pool = read_reviews(EXAMPLES / "fashion_reviews.csv", ignore_labels=True)
    ctx = SelectionContext.from_dataset(pool, model)
    emb = ctx.embeddings
    assert emb.shape == (len(pool), 32) and np.isfinite(emb).all()
    assert not np.allclose(emb[0], emb[1])
    chosen = select(ctx, make_strategy("keyword-boundary:1,sentiment-margin:1,rare-text:1,outliers:1,random:1"), 10,
                    by="shop", exclude_ids=pool.ids[:5])
    assert len(chosen.picks) == 10 and not set(chosen.indices) & set(range(5))
    assert {p.strategy for p in chosen.picks} == {"keyword-boundary", "sentiment-margin", "rare-text", "outliers",
                                                  "random"}
    schema = model.analyzer.schema
    for row in chosen.rows():
        schema.parse(row["labels"])  # the pre-filled completion reads in the bundle's schema
    default = select(ctx, make_strategy(DEFAULT_STRATEGY), 6, exclude_ids=pool.ids[:5])  # information-density
    assert len(default.picks) == 6 and {p.strategy for p in default.picks} == {"information-density"}
    assert not set(default.indices) & set(range(5))


def test_embeddings_need_a_torch_scorer():
    from reviewlens.selection import encoder_embeddings

    with pytest.raises(ModelError, match="torch backend"):
        encoder_embeddings(object(), ["좋아요"])


def test_a_labeling_round_through_the_cli(tiny_bundle, tmp_path):
    """select -> a labeler corrects the batch -> merge-labels, as the seed's retraining loop does it."""
    import pandas as pd
    from typer.testing import CliRunner

    from reviewlens.cli import app

    examples = pd.read_csv(EXAMPLES / "fashion_reviews.csv", dtype=str, keep_default_na=False)
    examples.iloc[:30].to_csv(tmp_path / "train.csv", index=False)
    runner = CliRunner()
    batch = tmp_path / "round1" / "batch.csv"
    result = runner.invoke(app, ["select", "--model", str(tiny_bundle), "--pool", str(EXAMPLES / "fashion_reviews.csv"),
                                 "--n", "8", "--by", "category", "--exclude", str(tmp_path / "train.csv"),
                                 "--strategy", SEED_MIX, "--output", str(batch)])
    assert result.exit_code == 0, result.output
    assert '"selected": 8' in result.output and list(batch.parent.glob("spm-*.model"))
    chosen = pd.read_csv(batch, dtype=str, keep_default_na=False)
    assert list(chosen.columns) == BATCH_COLUMNS and len(chosen) == 8
    assert not set(chosen["id"]) & set(examples["id"][:30])
    chosen["labels"] = ["디자인 1"] * 8  # the labeler's corrections
    chosen.to_csv(batch, index=False)
    out = tmp_path / "train2.csv"
    result = runner.invoke(app, ["merge-labels", "--base", str(tmp_path / "train.csv"), "--labeled", str(batch),
                                 "--output", str(out), "--changes", str(tmp_path / "changes.csv")])
    assert result.exit_code == 0, result.output
    assert "8 added" in result.output and "38 row(s) written" in result.output
    merged = read_reviews(out)
    assert merged.ids[:30] == list(examples["id"][:30]) and len(merged) == 38
    assert len(pd.read_csv(tmp_path / "changes.csv")) == 8
    bad = runner.invoke(app, ["select", "--model", str(tiny_bundle), "--pool", str(EXAMPLES / "fashion_reviews.csv"),
                              "--strategy", "entropy", "--output", str(tmp_path / "x.csv")])
    assert bad.exit_code == 2 and "unknown strategy" in bad.output


def test_fast_model_tells_the_sentiment_of_each_keyword_apart():
    """Two reviews with the same two keywords and opposite levels per keyword: text and keyword features that
    only add up (the keyword one-hot) cannot fit this; the per-keyword copy of the text features can."""
    from reviewlens.baselines import FastModelConfig, FastReviewModel
    from reviewlens.data import Review, ReviewDataset
    from reviewlens.schema import LabelSchema

    schema = LabelSchema(["디자인", "배송"], [-1, 1])
    reviews = [Review(f"a{i}", "옷은 예쁘지만 배송은 늦어요", {"디자인": 1, "배송": -1}) for i in range(10)]
    reviews += [Review(f"b{i}", "옷은 별로인데 배송은 빨라요", {"디자인": -1, "배송": 1}) for i in range(10)]
    data = ReviewDataset(reviews, schema, "toy")
    texts = ["옷은 예쁘지만 배송은 늦어요", "옷은 예쁘지만 배송은 늦어요", "옷은 별로인데 배송은 빨라요", "옷은 별로인데 배송은 빨라요"]
    keywords = ["디자인", "배송", "디자인", "배송"]
    right = [1, 0, 0, 1]  # index of the gold level in [-1, 1]
    for weight, expect in ((0.0, False), (1.0, True)):
        model = FastReviewModel(schema, FastModelConfig(threshold_folds=0, keyword_interactions=weight)).fit(data)
        probs = model.sentiment_probs(texts, keywords)
        assert bool((probs.argmax(axis=1) == right).all()) is expect, (weight, probs.round(2))
