"""Broken input as users bring it: each case loads as documented or fails with a ReviewlensError naming the
file, the row and the field.

Covered elsewhere and not repeated here: CP949 and BOM CSVs that load (test_data.test_csv_encodings), bytes
that are neither UTF-8 nor CP949, unknown keywords and out-of-range levels, every bad row in one error,
duplicated ids with different text, empty files, a missing text column, control characters in JSONL, fuzzed
CSV/JSONL/ABSA bytes (test_data) and the fuzzed completion parser (test_schema); resuming from checkpoints of
another schema (test_resume).
"""

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from reviewlens.cli import app
from reviewlens.data import read_reviews, read_texts
from reviewlens.errors import DataError, ModelError, ReviewlensError, UnreadableFileError
from reviewlens.schema import LabelSchema

MIXED_SCRIPTS = [
    "사이즈 good, 색감 ですね 최고",                       # Hangul, Latin, Japanese
    "배송 빨라요 مرحبا שלום Привет",                        # Arabic and Hebrew (right to left), Cyrillic
    "핏이 예뻐요 \u200f\u202e거꾸로\u202c 끝",               # RTL mark and a bidi override
    "가격 ok 👍🏽 👨‍👩‍👧 e\u0301 \u0915\u094d\u0937",       # skin tone and ZWJ emoji, combining accent, Devanagari
    "ｆｕｌｌｗｉｄｔｈ 전각 문자와 \u200b폭 없는 공백",       # fullwidth Latin, zero-width space
]
EMOJI_ONLY = ["😀😀👍", "🔥", "❤️❤️ ✨"]


def write(tmp_path, name, content, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


def only_problem(info) -> tuple:
    (problem,) = info.value.problems
    return problem.row, problem.field, problem.reason


# -- encodings --------------------------------------------------------------------------------------------


def test_cp949_file_errors_keep_row_and_korean_text(tmp_path):
    path = write(tmp_path, "shop.csv", "id,text,labels\n1,배송이 빨라요,배송 1\n2,색이 바랬어요,색상 -7\n", "cp949")
    with pytest.raises(DataError) as info:
        read_reviews(path)
    assert only_problem(info)[:2] == (2, "labels")
    assert "shop.csv row 2, field 'labels'" in str(info.value) and "'색상 -7'" in str(info.value)
    assert read_texts(path) == (["1", "2"], ["배송이 빨라요", "색이 바랬어요"])


def test_bom_jsonl_reads_its_first_line(tmp_path):
    path = write(tmp_path, "bom.jsonl", b"\xef\xbb\xbf" + '{"id": "a", "text": "좋아요", "labels": "색상 1"}\n'.encode())
    dataset = read_reviews(path)
    assert dataset.ids == ["a"] and dataset[0].labels == {"색상": 1}


# -- broken CSV quoting -----------------------------------------------------------------------------------


def test_unclosed_quote_names_the_row_where_it_opens(tmp_path):
    path = write(tmp_path, "quote.csv", 'id,text,labels\n1,좋아요,색상 1\n2,"별로,색상 -1\n3,괜찮아요,색상 1\n')
    with pytest.raises(DataError) as info:
        read_reviews(path)
    row, field, reason = only_problem(info)
    assert (row, field) == (2, "*") and "2 fields but the header has 3" in reason
    assert "quote opened on line 3 is never closed: lines 3-4" in reason
    assert "quote.csv row 2, field '*'" in str(info.value)
    dataset = read_reviews(path, skip_bad_rows=True, rejects_path=tmp_path / "rejects.jsonl")
    assert dataset.ids == ["1"]  # the open quote swallowed row 3 into row 2: both are set aside
    (reject,) = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert reject["row"] == 2 and "괜찮아요" in "".join(reject["fields"])


def test_unquoted_comma_suggests_quoting(tmp_path):
    path = write(tmp_path, "comma.csv", "id,text,labels\n1,좋아요, 진짜요,색상 1\n2,별로,색상 -1\n")
    with pytest.raises(DataError) as info:
        read_reviews(path)
    row, field, reason = only_problem(info)
    assert (row, field) == (1, "*") and "4 fields but the header has 3" in reason and "quote the text" in reason


def test_stray_quotes_inside_a_field_are_kept_as_text(tmp_path):
    path = write(tmp_path, "stray.csv", 'id,text\n1,좋"아"요\n2,"따옴표 ""안"" 쉼표, 포함"\n')
    assert read_texts(path)[1] == ['좋"아"요', '따옴표 "안" 쉼표, 포함']


# -- missing columns and empty files -----------------------------------------------------------------------


def test_training_file_without_labels_column(tmp_path):
    path = write(tmp_path, "pool.csv", "id,text\n1,좋아요\n")
    with pytest.raises(UnreadableFileError) as info:
        read_reviews(path, require_labels=True)
    assert only_problem(info)[:2] == ("header", "labels")
    assert "pool.csv" in str(info.value) and "no labels column (expected one of labels, completion)" in str(info.value)
    result = CliRunner().invoke(app, ["train", "--data", str(path), "--model-out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "pool.csv: no labels column" in result.output
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.checkpoints").exists()


@pytest.mark.parametrize("name, content", [
    ("empty.csv", b""), ("header.csv", b"id,text\n"), ("blank.jsonl", b"\n\n"), ("blank.txt", b" \n"),
])
def test_empty_input_to_analyze_is_a_clear_error(tmp_path, name, content):
    path = write(tmp_path, name, content)
    result = CliRunner().invoke(app, ["analyze", "--input", str(path), "--format", "csv"])
    assert result.exit_code == 2
    assert f"{path}: no rows" in result.output and "Traceback" not in result.output


def test_parquet_without_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), path)
    with pytest.raises(UnreadableFileError, match="empty.parquet: no rows"):
        read_reviews(path)


# -- labels and ids ----------------------------------------------------------------------------------------


def test_duplicated_id_with_different_labels(tmp_path):
    path = write(tmp_path, "dup.csv", "id,text,labels\n7,좋아요,색상 1\n8,별로,색상 -1\n7,좋아요,색상 -1\n")
    with pytest.raises(DataError) as info:
        read_reviews(path)
    row, field, reason = only_problem(info)
    assert (row, field) == (3, "id") and "also on row 1" in reason and "different labels" in reason
    dataset = read_reviews(path, skip_bad_rows=True, rejects_path=tmp_path / "rejects.jsonl")
    assert [(r.id, r.labels) for r in dataset] == [("7", {"색상": 1}), ("8", {"색상": -1})]  # the first one wins


# -- texts: null, too long, control characters, scripts, emoji ---------------------------------------------


def test_null_text_in_every_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = write(tmp_path, "null.jsonl", '{"id": "a", "text": "좋아요"}\n{"id": "b", "text": null}\n')
    parquet = tmp_path / "null.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["좋아요", None]}), parquet)
    csv = write(tmp_path, "null.csv", "id,text\na,좋아요\nb,\n")
    for path, reason in ((jsonl, "missing text"), (parquet, "missing text"), (csv, "empty text")):
        with pytest.raises(DataError) as info:
            read_texts(path)
        assert only_problem(info) == (2, "text", reason), path
        assert f"{path} row 2, field 'text': {reason}" in str(info.value)


def test_fifty_thousand_character_review(tmp_path, caplog):
    long_review = ("배송이 빨라요 색이 예뻐요 " * 4000)[:50_000]
    csv = write(tmp_path, "long.csv", f'id,text\n1,좋아요\n2,"{long_review}"\n3,별로예요\n')
    txt = write(tmp_path, "long.txt", f"좋아요\n{long_review}\n별로예요\n")
    for path in (csv, txt):
        with pytest.raises(DataError) as info:
            read_texts(path)
        row, field, reason = only_problem(info)
        assert (row, field) == (2, "text") and "too long (50,000 characters, the limit is 20,000)" in reason
        assert read_texts(path, skip_bad_rows=True, rejects_path=tmp_path / "r.jsonl")[1] == ["좋아요", "별로예요"]


def test_fifty_thousand_character_review_through_the_analyzer(tiny_bundle, caplog):
    from reviewlens.analyzer import ReviewAnalyzer

    long_review = ("배송이 빨라요 색이 예뻐요 " * 4000)[:50_000]
    analyzer = ReviewAnalyzer.from_pretrained(tiny_bundle)
    with caplog.at_level(logging.WARNING, logger="reviewlens.analyzer"):
        (result,) = analyzer.analyze([long_review], highlights=False)
    assert result.text == long_review and "truncated" in caplog.text
    assert all(k.keyword in analyzer.keywords for k in result.keywords)


def test_control_characters_in_csv_are_dropped_but_newlines_and_tabs_kept(tmp_path):
    path = write(tmp_path, "ctl.csv", 'id,text\n1,좋\x00아\x07요\x1b끝\x7f\u0085\n2,"줄\n바꿈\t탭"\n')
    assert read_texts(path) == (["1", "2"], ["좋아요끝", "줄\n바꿈\t탭"])


def test_mixed_scripts_load_unchanged_and_highlights_point_into_them(tmp_path, tiny_bundle):
    from reviewlens.analyzer import ReviewAnalyzer

    path = write(tmp_path, "mixed.jsonl", "".join(json.dumps({"id": str(i), "text": t}, ensure_ascii=False) + "\n"
                                                  for i, t in enumerate(MIXED_SCRIPTS)))
    ids, texts = read_texts(path)
    assert texts == MIXED_SCRIPTS
    results = ReviewAnalyzer.from_pretrained(tiny_bundle).analyze(texts, ids=ids, top_k=2)
    assert [r.text for r in results] == MIXED_SCRIPTS
    for result in results:
        for keyword in result.keywords:
            for h in keyword.highlights + keyword.sentiment_highlights:
                assert result.text[h.start:h.end] == h.word
        json.dumps(result.to_dict(), ensure_ascii=False)


def test_emoji_only_reviews_load_and_get_no_keywords(tmp_path, tiny_bundle):
    path = write(tmp_path, "emoji.csv", "id,text\n" + "".join(f"e{i},{t}\n" for i, t in enumerate(EMOJI_ONLY)))
    assert read_texts(path) == (["e0", "e1", "e2"], EMOJI_ONLY)
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(app, ["analyze", "--model", str(tiny_bundle), "--input", str(path),
                                      "--format", "csv", "--output", str(out)])
    assert result.exit_code == 0, result.output
    import pandas as pd

    table = pd.read_csv(out, keep_default_na=False, dtype=str)
    assert table["id"].tolist() == ["e0", "e1", "e2"] and table["text"].tolist() == EMOJI_ONLY
    assert table["completion"].tolist() == ["", "", ""] and table["keywords"].tolist() == ["[]", "[]", "[]"]


# -- a model of another schema -----------------------------------------------------------------------------


def test_evaluating_levels_the_bundle_does_not_have(tmp_path, tiny_bundle):
    from reviewlens.bundle import ModelBundle
    from reviewlens.evaluation import evaluate_bundle

    levels = ModelBundle.load(tiny_bundle).schema.levels
    keyword = ModelBundle.load(tiny_bundle).schema.keywords[0]
    path = write(tmp_path, "dev.csv", f"id,text,labels\n1,좋아요,{keyword} 1\n2,최고예요,{keyword} {max(levels) + 3}\n")
    with pytest.raises(DataError) as info:
        evaluate_bundle(tiny_bundle, path)
    row, field, reason = only_problem(info)
    assert (row, field) == (2, "labels") and "outside the levels" in reason


def test_evaluating_a_bundle_of_another_schema_is_a_clear_error(tmp_path, tiny_bundle):
    from reviewlens.evaluation import evaluate_bundle

    path = write(tmp_path, "nikl-like.csv", "id,text,labels\n1,배터리가 오래가요,본품#품질 1\n"
                                            "2,브랜드가 좋아요,브랜드#일반 1\n")
    try:
        evaluate_bundle(tiny_bundle, path)
    except ReviewlensError as exc:
        assert "nikl-like.csv" in str(exc) and "본품#품질" in str(exc)
        return
    raise AssertionError("evaluated a bundle on data of another label schema without an error")


def test_bundle_whose_weights_belong_to_another_schema(tmp_path, tiny_bundle):
    import shutil

    from reviewlens.analyzer import ReviewAnalyzer

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "reviewlens.json").read_text(encoding="utf-8"))
    manifest["schema"]["keywords"] = manifest["schema"]["keywords"][:3]
    (bundle / "reviewlens.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ModelError, match="bundle"):
        ReviewAnalyzer.from_pretrained(bundle).analyze(["옷은 예쁘지만 배송은 늦어요"])


# -- property-based: anything loads or raises ReviewlensError -----------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["keywords", "levels", "aliases", "x"]), _JSON, max_size=4) | _JSON)
def test_schema_from_any_json_loads_or_raises_reviewlens_error(data):
    try:
        schema = LabelSchema.from_dict(data)
    except ReviewlensError:
        return
    assert LabelSchema.from_dict(schema.to_dict()) == schema


@settings(max_examples=150, deadline=None)
@given(pairs=st.lists(st.tuples(_JSON, _JSON), max_size=4), new=st.booleans(), resolve=st.booleans())
def test_validate_any_pairs_or_raise_reviewlens_error(pairs, new, resolve):
    schema = LabelSchema(["배송", "색상"])
    try:
        labels = schema.validate(pairs, allow_new_keywords=new, resolve_conflicts=resolve)
    except ReviewlensError:
        return
    assert set(labels) <= set(schema.keywords) and all(level in schema.levels for level in labels.values())


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_parse_growing_the_schema_round_trips_or_raises_reviewlens_error(completion):
    schema = LabelSchema(["배송"])
    try:
        labels = schema.parse(completion, allow_new_keywords=True)
    except ReviewlensError:
        assert schema.keywords == ["배송"]  # a failed parse adds nothing
        return
    assert schema.parse(schema.format(labels)) == labels


_COLUMN = st.one_of(
    st.lists(st.one_of(st.none(), st.text(max_size=8)), min_size=1, max_size=4),
    st.lists(st.one_of(st.none(), st.integers(-3, 3)), min_size=1, max_size=4),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=4),
    st.lists(st.lists(st.integers(0, 3), max_size=2), min_size=1, max_size=4),
    st.lists(st.booleans(), min_size=1, max_size=4),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(columns=st.dictionaries(st.sampled_from(["id", "text", "review", "labels", "shop", "category", "spans", "x"]),
                               _COLUMN, min_size=1, max_size=4), skip=st.booleans())
def test_any_parquet_table_loads_or_raises_reviewlens_error(tmp_path, columns, skip):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = min(len(values) for values in columns.values())
    path = tmp_path / "fuzz.parquet"
    pq.write_table(pa.table({name: values[:n] for name, values in columns.items()}), path)
    for read in (read_reviews, read_texts):
        try:
            loaded = read(path, skip_bad_rows=skip, rejects_path=tmp_path / "rejects.jsonl")
        except ReviewlensError:
            continue
        texts = loaded.texts if read is read_reviews else loaded[1]
        assert texts and all(isinstance(t, str) and t.strip() for t in texts)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")),
       suffix=st.sampled_from([".txt", ".csv", ".jsonl"]), skip=st.booleans())
def test_read_texts_of_any_bytes_loads_or_raises_reviewlens_error(tmp_path, data, suffix, skip):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        ids, texts = read_texts(path, skip_bad_rows=skip, rejects_path=tmp_path / "rejects.jsonl")
    except ReviewlensError:
        return
    assert texts and all(isinstance(t, str) and t.strip() for t in texts)
    assert ids is None or len(ids) == len(texts)
