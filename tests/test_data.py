import json
import logging
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reviewlens.data import (
    Review,
    ReviewDataset,
    atomic_write_text,
    detect_format,
    read_reviews,
    read_texts,
    train_validation_split,
    write_reviews,
)
from reviewlens.errors import DataError, ReviewlensError, UnreadableFileError
from reviewlens.schema import LabelSchema

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fashion_reviews.csv"
SHARED = ROOT.parent / "shared" / "data"

CSV_TEXT = (
    "id,text,labels,shop,category\n"
    'a1,옷은 예쁘지만 배송은 늦어요,"디자인 1, 배송 -1",데일리룩,상의\n'
    "a2,색이 정말 이뻐요,색상2,봄날옷장,원피스\n"
    'a3,"품질이 좀 떨어지지만, 가격이 싸니까","품질 -1, 가격 1",,하의\n'
    "a4,아직 안 입어봤어요,,,\n"
)


def write(tmp_path, name, content, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp949"])
def test_csv_encodings(tmp_path, encoding):
    dataset = read_reviews(write(tmp_path, "reviews.csv", CSV_TEXT, encoding))
    assert dataset.ids == ["a1", "a2", "a3", "a4"]
    assert dataset.texts[2] == "품질이 좀 떨어지지만, 가격이 싸니까"
    assert dataset[0].labels == {"디자인": 1, "배송": -1}
    assert dataset[1].labels == {"색상": 2}
    assert dataset[3].labels is None and not dataset.labeled
    assert dataset[0].shop == "데일리룩" and dataset[2].shop is None and dataset[2].category == "하의"
    assert dataset.schema.keywords == ["디자인", "배송", "색상", "품질", "가격"]
    assert dataset.source.endswith("reviews.csv")


def test_undecodable_csv_names_the_byte_offset(tmp_path):
    path = write(tmp_path, "bad.csv", b"id,text\n1,ok\n2,\xff\xfe\xfa\n")
    with pytest.raises(DataError) as info:
        read_reviews(path)
    assert "byte offset 15" in str(info.value) and "bad.csv" in str(info.value)


def test_seed_column_names_and_missing_ids(tmp_path):
    path = write(tmp_path, "seed.csv", 'review,completion\n색이 정말 이뻐요,색상 2\n"옷은 예쁘지만 배송은 늦어요","디자인 1, 배송 -1"\n')
    dataset = read_reviews(path)
    assert dataset.ids == ["1", "2"] and dataset.labeled
    assert dataset.completions() == ["색상 2", "디자인 1, 배송 -1"]
    path = write(tmp_path, "seed.jsonl", '{"sequence": "색이 정말 이뻐요", "completion": "색상 2"}\n')
    assert read_reviews(path)[0].labels == {"색상": 2}


def test_example_file_loads():
    dataset = read_reviews(EXAMPLE, require_labels=True)
    assert len(dataset) >= 60 and dataset.labeled
    assert sorted(dataset.schema.keywords) == sorted(
        ["배송", "가격", "디자인", "색상", "품질", "사이즈", "신축성", "마감처리", "착용감", "만족도", "스타일", "소재",
         "핏", "길이", "두께"])
    by_text = {r.text: r.labels for r in dataset}
    assert by_text["옷은 예쁘지만 배송은 늦어요"] == {"디자인": 1, "배송": -1}
    assert by_text["색이 정말 이뻐요"] == {"색상": 2}
    assert by_text["품질이 좀 떨어지지만 가격이 싸니까"] == {"품질": -1, "가격": 1}
    assert {r.category for r in dataset} == {"상의", "하의", "원피스"}


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl", "out.parquet"])
def test_write_read_round_trip(tmp_path, name):
    schema = LabelSchema(["디자인", "배송", "색상"])
    reviews = [
        Review("1", "옷은 예쁘지만 배송은 늦어요", {"디자인": 1, "배송": -1}, shop="데일리룩", category="상의"),
        Review("2", '줄바꿈\n"따옴표", 쉼표', {"색상": 2}),
        Review("3", "라벨 없는 리뷰", None, category="원피스"),
    ]
    dataset = ReviewDataset(reviews, schema)
    write_reviews(dataset, tmp_path / name)
    again = read_reviews(tmp_path / name, schema)
    assert [(r.id, r.text, r.labels, r.shop, r.category) for r in again] == \
           [(r.id, r.text, r.labels, r.shop, r.category) for r in reviews]
    assert again.fingerprint() == dataset.fingerprint()
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp file left behind


def test_jsonl_keeps_spans(tmp_path):
    spans = [{"keyword": "색상", "level": 2, "text": "색이 정말 이뻐요", "start": 0, "end": 9}]
    dataset = ReviewDataset([Review("1", "색이 정말 이뻐요", {"색상": 2}, spans=spans)], LabelSchema(["색상"]))
    write_reviews(dataset, tmp_path / "s.jsonl")
    assert read_reviews(tmp_path / "s.jsonl")[0].spans == spans


def test_write_reviews_without_a_schema_and_unknown_extension(tmp_path):
    write_reviews([Review("1", "색이 정말 이뻐요", {"색상": 2})], tmp_path / "out.jsonl")
    assert json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8"))["labels"] == "색상 2"
    with pytest.raises(ReviewlensError):
        write_reviews([], tmp_path / "out.txt")
    with pytest.raises(ReviewlensError):
        read_reviews(write(tmp_path, "x.txt", "id,text\n1,a\n"))


def test_atomic_write_text_replaces(tmp_path):
    target = tmp_path / "sub" / "f.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "둘")
    assert target.read_text(encoding="utf-8") == "둘"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]


def test_fingerprint_changes_with_labels():
    schema = LabelSchema(["색상"])
    a = ReviewDataset([Review("1", "색이 이뻐요", {"색상": 1})], schema)
    b = ReviewDataset([Review("1", "색이 이뻐요", {"색상": 2})], schema)
    c = ReviewDataset([Review("1", "색이 이뻐요", None)], schema)
    assert len({a.fingerprint(), b.fingerprint(), c.fingerprint()}) == 3


def _slice(tmp_path, folder, name, lines=50):
    source = SHARED / folder / "train.jsonl"
    if not source.exists():
        pytest.skip(f"{source} is not here")
    with open(source, encoding="utf-8") as handle:
        head = [next(handle) for _ in range(lines)]
    path = tmp_path / name
    path.write_text("".join(head), encoding="utf-8")
    return path, [json.loads(line) for line in head]


def test_nikl_slice(tmp_path):
    path, rows = _slice(tmp_path, "nikl-absa-2022", "nikl.jsonl")
    assert detect_format(path) == "nikl"
    dataset = read_reviews(path)
    assert len(dataset) == 50 and dataset.labeled and dataset.schema.levels == [-1, 0, 1]
    first = dataset[0]
    assert first.id == rows[0]["id"] and first.text == rows[0]["sentence_form"]
    for review, row in zip(dataset, rows):
        categories = {a[0] for a in row["annotation"]}
        assert set(review.labels) == categories
        for span in review.spans:
            if span["text"] is not None:
                assert review.text[span["start"]:span["end"]] == span["text"]
    assert dataset[0].labels == {"본품#품질": -1}


def test_aihub_slice_with_aliases(tmp_path):
    path, rows = _slice(tmp_path, "aihub-absa-fashion", "aihub.jsonl")
    assert detect_format(path) == "aihub"
    aliases = {"치수/사이즈": "사이즈", "착화감": "착용감"}
    dataset = read_reviews(path, aliases=aliases)
    assert len(dataset) == 50 and dataset.schema.levels == [-1, 0, 1]
    assert "치수/사이즈" not in dataset.schema.keywords and "착화감" not in dataset.schema.keywords
    for review, row in zip(dataset, rows):
        assert set(review.labels) == {aliases.get(a["aspect"], a["aspect"]) for a in row["aspects"]}
        assert len(review.spans) == len(row["aspects"])
        for span in review.spans:
            assert review.text[span["start"]:span["end"]] == span["text"]


def test_absa_mixed_polarity_rule(tmp_path):
    lines = [
        {"id": "x1", "text": "색은 예쁜데 색이 바래요 색 별로", "aspects": [
            {"aspect": "색상", "polarity": "positive", "span": "색은 예쁜데"},
            {"aspect": "색상", "polarity": "negative", "span": "색이 바래요"},
            {"aspect": "색상", "polarity": "negative", "span": "색 별로"}]},
        {"id": "x2", "text": "가격 좋고 가격 그저 그래요", "aspects": [
            {"aspect": "가격", "polarity": "positive", "span": "가격 좋고"},
            {"aspect": "가격", "polarity": "neutral", "span": "가격 그저 그래요"}]},
        {"id": "x3", "text": "사이즈 딱 맞고 치수가 작아요", "aspects": [
            {"aspect": "사이즈", "polarity": "positive", "span": "사이즈 딱 맞고"},
            {"aspect": "치수/사이즈", "polarity": "negative", "span": "치수가 작아요"}]},
    ]
    path = write(tmp_path, "mixed.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    dataset = read_reviews(path, aliases={"치수/사이즈": "사이즈"})
    assert [r.labels for r in dataset] == [{"색상": -1}, {"가격": 0}, {"사이즈": -1}]
    assert [s["start"] for s in dataset[0].spans] == [0, 7, 14]


def test_every_bad_row_is_reported_at_once(tmp_path):
    content = (
        "id,text,labels\n"
        "1,좋아요,색상 1\n"
        "2,   ,색상 1\n"          # empty text
        "3,배송 늦어요,배숑 -1\n"   # unknown keyword (with a schema)
        "4,괜찮아요,색상 1\n"
        "5,너무 비싸요,가격 9\n"    # level out of range
    )
    path = write(tmp_path, "three.csv", content)
    schema = LabelSchema(["색상", "배송", "가격"])
    with pytest.raises(DataError) as info:
        read_reviews(path, schema)
    problems = info.value.problems
    assert [(p.row, p.field) for p in problems] == [(2, "text"), (3, "labels"), (5, "labels")]
    message = str(info.value)
    assert "three.csv row 2, field 'text'" in message and "배숑" in message and "level 9" in message
    assert "3 bad row(s)" in message


def test_jsonl_bad_rows(tmp_path):
    content = "\n".join([
        '{"id": "1", "text": "좋아요", "labels": "색상 1"}',
        "{not json",
        '{"id": "3", "text": 42}',
        '["a list"]',
        '{"id": "5", "labels": "색상 1"}',
        '{"id": "6", "text": "' + "가" * 20001 + '"}',
        '{"id": "7", "text": "좋아요", "labels": ["색상"]}',
    ]) + "\n"
    with pytest.raises(DataError) as info:
        read_reviews(write(tmp_path, "bad.jsonl", content))
    found = [(p.row, p.field) for p in info.value.problems]
    assert found == [(2, "json"), (3, "text"), (4, "json"), (5, "text"), (6, "text"), (7, "labels")]
    assert "too long" in str(info.value)


def test_skip_bad_rows_writes_rejects(tmp_path, monkeypatch, caplog):
    content = "id,text,labels\n1,좋아요,색상 1\n2,,색상 1\n3,배송 빨라요,배송 1\n4,별로,색상 1 배송\n5,예뻐요,디자인 1\n"
    path = write(tmp_path, "mixed.csv", content)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    with caplog.at_level(logging.WARNING, logger="reviewlens.data"):
        dataset = read_reviews(path, skip_bad_rows=True)
    assert dataset.ids == ["1", "3", "5"]
    assert dataset.schema.keywords == ["색상", "배송", "디자인"]
    rejects = work / "mixed.rejects.jsonl"
    entries = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert [e["row"] for e in entries] == [2, 4]
    assert entries[0]["fields"] == {"id": "2", "text": "", "labels": "색상 1"}
    assert entries[0]["reasons"][0]["field"] == "text"
    assert "2 bad row(s)" in caplog.text or "skipped 2 bad row(s)" in caplog.text
    assert str(rejects) in caplog.text

    custom = tmp_path / "elsewhere" / "r.jsonl"
    read_reviews(path, skip_bad_rows=True, rejects_path=custom)
    assert custom.exists()


def test_duplicate_ids(tmp_path):
    content = "id,text,labels\n1,좋아요,색상 1\n2,별로,색상 -1\n1,좋아요,색상 1\n2,별로예요,색상 -1\n"
    with pytest.raises(DataError) as info:
        read_reviews(write(tmp_path, "dup.csv", content))
    (problem,) = info.value.problems
    assert problem.row == 4 and problem.field == "id" and "row 2" in problem.reason
    dataset = read_reviews(write(tmp_path, "dup2.csv", content), skip_bad_rows=True,
                           rejects_path=tmp_path / "rejects.jsonl")
    assert dataset.ids == ["1", "2"]  # the exact duplicate is dropped, the conflicting one rejected


def test_require_labels_and_file_level_errors(tmp_path):
    with pytest.raises(DataError) as info:
        read_reviews(write(tmp_path, "pool.csv", "id,text,labels\n1,좋아요,\n2,별로,색상 -1\n"), require_labels=True)
    assert [(p.row, p.field) for p in info.value.problems] == [(1, "labels")]
    with pytest.raises(UnreadableFileError, match="no text column"):
        read_reviews(write(tmp_path, "notext.csv", "id,body\n1,좋아요\n"))
    with pytest.raises(UnreadableFileError, match="no rows"):
        read_reviews(write(tmp_path, "empty.csv", ""))
    with pytest.raises(UnreadableFileError, match="no rows"):
        read_reviews(write(tmp_path, "header.csv", "id,text,labels\n"))
    with pytest.raises(UnreadableFileError, match="no rows"):
        read_reviews(write(tmp_path, "empty.jsonl", "\n\n"))
    with pytest.raises(UnreadableFileError, match="no such file"):
        read_reviews(tmp_path / "missing.csv")
    with pytest.raises(UnreadableFileError):
        read_reviews(write(tmp_path, "broken.parquet", b"PAR1 not really"))


def test_read_texts_ignores_labels(tmp_path):
    path = write(tmp_path, "pool.csv", "id,text,labels\nx,좋아요,배숑 9\ny,별로예요,\n")
    assert read_texts(path) == (["x", "y"], ["좋아요", "별로예요"])
    txt = write(tmp_path, "pool.txt", "색이 정말 이뻐요\n\n배송이 늦어요\r\n")
    assert read_texts(txt) == (None, ["색이 정말 이뻐요", "배송이 늦어요"])
    with pytest.raises(UnreadableFileError):
        read_texts(write(tmp_path, "blank.txt", "\n \n"))


def test_control_characters_are_stripped(tmp_path):
    path = write(tmp_path, "ctrl.jsonl", json.dumps({"id": 1, "text": "좋\u0000아\u0007요\n\t끝"}) + "\n")
    assert read_reviews(path)[0].text == "좋아요\n\t끝"
    assert read_reviews(path)[0].id == "1"


def test_schema_given_keeps_keywords_and_new_keywords(tmp_path):
    schema = LabelSchema(["배송", "색상"])
    path = write(tmp_path, "r.csv", "id,text,labels\n1,예뻐요,디자인 1\n2,빨라요,배송 1\n")
    with pytest.raises(DataError):
        read_reviews(path, schema)
    dataset = read_reviews(path, schema, allow_new_keywords=True)
    assert dataset.schema.keywords == ["배송", "색상", "디자인"]
    assert schema.keywords == ["배송", "색상"]  # the caller's schema is not changed


_BYTES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=120).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from([b"id", b"text", b"labels", b",", b"\n", b'"', b"\r", b"{", b"}", b":", b"\"text\"",
                              b"\xea\xb0\x80", b"\xff", b"\x00", b"1", b"\xeb\x94\x94\xec\x9e\x90\xec\x9d\xb8 1",
                              b"[", b"]", b"\\ud800", b"null", b"\"id\""]), max_size=40).map(b"".join),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_BYTES, suffix=st.sampled_from([".csv", ".jsonl"]), header=st.booleans())
def test_arbitrary_bytes_load_or_raise_reviewlens_error(tmp_path, data, suffix, header):
    if header:
        data = (b"id,text,labels\n" if suffix == ".csv" else b'{"id": 1, "text": "x", "labels": ""}\n') + data
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        dataset = read_reviews(path, skip_bad_rows=header, rejects_path=tmp_path / "rejects.jsonl")
    except ReviewlensError:
        return
    assert len(dataset) > 0
    dataset.fingerprint()
    dataset.completions()


def _labeled(n_common=80):
    reviews = []
    for i in range(n_common):
        labels = {"배송": 1 if i % 3 else -1}
        if i % 4 == 0:
            labels["색상"] = 2
        reviews.append(Review(str(i), f"리뷰 {i}", labels))
    rare = {"두께": [1, -1], "핏": [1, 1, -1], "길이": [1, 2, 1, -1]}
    for keyword, levels in rare.items():
        for j, level in enumerate(levels):
            reviews.append(Review(f"{keyword}{j}", f"{keyword} 리뷰 {j}", {keyword: level, "배송": 1}))
    reviews.append(Review("solo", "한 번만", {"마감처리": 1}))
    return ReviewDataset(reviews, LabelSchema.infer(LabelSchema([]).format_items(r.labels.items()) for r in reviews))


def test_split_is_deterministic_and_stratified():
    dataset = _labeled()
    train, validation = train_validation_split(dataset, 0.1, seed=3)
    again_train, again_validation = train_validation_split(dataset, 0.1, seed=3)
    assert train.ids == again_train.ids and validation.ids == again_validation.ids
    assert sorted(train.ids + validation.ids) == sorted(dataset.ids)
    assert not set(train.ids) & set(validation.ids)
    assert 8 <= len(validation) <= 14
    counts = Counter(k for r in dataset for k in r.labels)
    for keyword, count in counts.items():
        if count >= 2:
            assert any(keyword in r.labels for r in train), keyword
            assert any(keyword in r.labels for r in validation), keyword
    other = train_validation_split(dataset, 0.1, seed=4)[1]
    assert other.ids != validation.ids
    assert train.schema is dataset.schema


def test_split_example_and_edge_cases():
    dataset = read_reviews(EXAMPLE)
    train, validation = train_validation_split(dataset, 0.2)
    assert len(train) + len(validation) == len(dataset) and len(validation) >= 10
    tiny = ReviewDataset([Review("1", "a", None), Review("2", "b", None)], LabelSchema([]))
    assert [len(p) for p in train_validation_split(tiny, 0.1)] == [1, 1]
    with pytest.raises(ReviewlensError):
        train_validation_split(tiny, 1.5)
    with pytest.raises(ReviewlensError):
        train_validation_split(tiny.subset([0]), 0.1)


def test_dataset_helpers():
    dataset = _labeled()
    assert len(dataset[:5]) == 5 and isinstance(dataset[:5], ReviewDataset)
    assert dataset.subset([0, 2]).ids == ["0", "2"]
    assert len(list(iter(dataset))) == len(dataset)
    assert dataset.completions()[0] == "배송 -1, 색상 2"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 30) | st.sampled_from(["positive", "negative", "neutral", "색상", ""])
    | st.text(max_size=6),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["aspect", "polarity", "span", "x"]), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_JSON, _JSON, _JSON), min_size=1, max_size=4), fmt=st.sampled_from(["nikl", "aihub"]))
def test_arbitrary_absa_lines_load_or_raise_reviewlens_error(tmp_path, rows, fmt):
    keys = ("sentence_form", "annotation") if fmt == "nikl" else ("text", "aspects")
    lines = [json.dumps({"id": i, keys[0]: text, keys[1]: labels}) for i, (text, labels, _) in enumerate(rows)]
    path = write(tmp_path, "absa.jsonl", "\n".join(lines))
    assert detect_format(path) == fmt
    try:
        dataset = read_reviews(path, skip_bad_rows=True, rejects_path=tmp_path / "rejects.jsonl")
    except ReviewlensError:
        return
    for review in dataset:
        assert review.labels is None or set(review.labels) <= set(dataset.schema.keywords)
    dataset.fingerprint()


def test_a_pool_read_without_labels_keeps_reviews_whose_annotation_is_broken(tmp_path):
    from reviewlens.data import read_texts

    path = tmp_path / "pool.jsonl"
    lines = [{"id": "a", "sentence_form": "배송이 빨라요", "annotation": [["배송#일반", ["배송이", 0, 3], "positive"]]},
             {"id": "b", "sentence_form": "색이 예뻐요", "annotation": [["색상#일반", None, "amazing"]]},
             {"id": "c", "sentence_form": "그냥 그래요", "annotation": "not a list"}]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError):
        read_reviews(path)
    pool = read_reviews(path, ignore_labels=True)
    assert pool.ids == ["a", "b", "c"] and all(r.labels is None for r in pool)
    assert read_texts(path)[0] == ["a", "b", "c"]


def test_span_sentiment_examples_keep_each_mention_level(tmp_path):
    """AI Hub aspects: a keyword annotated twice keeps one level in the review's labels, but each span keeps its
    own; a mention without a span text gives no span example."""
    from reviewlens.tasks import span_sentiment_examples

    path = tmp_path / "aihub.jsonl"
    rows = [{"id": "a1", "text": "디자인은 예쁜데 사이즈가 커요 사이즈 교환은 쉬웠어요",
             "aspects": [{"aspect": "디자인", "polarity": "positive", "span": "디자인은 예쁜데"},
                         {"aspect": "사이즈", "polarity": "negative", "span": "사이즈가 커요"},
                         {"aspect": "사이즈", "polarity": "positive", "span": "사이즈 교환은 쉬웠어요"},
                         {"aspect": "가격", "polarity": "positive"}]}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    dataset = read_reviews(path)
    examples = span_sentiment_examples(dataset)
    levels = dataset.schema.levels
    assert [(e.text, levels[e.label]) for e in examples] == [
        ("###입력: 디자인은 예쁜데\n###키워드: 디자인", 1), ("###입력: 사이즈가 커요\n###키워드: 사이즈", -1),
        ("###입력: 사이즈 교환은 쉬웠어요\n###키워드: 사이즈", 1)]
