import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reviewlens.errors import LabelError, ReviewlensError
from reviewlens.schema import DEFAULT_LEVELS, LabelSchema

SEED_KEYWORDS = ["배송", "가격", "디자인", "색상", "품질", "사이즈", "신축성", "마감처리", "착용감", "만족도",
                 "스타일", "소재", "핏", "길이", "두께"]


@pytest.fixture
def schema():
    return LabelSchema(SEED_KEYWORDS + ["제품 전체#일반"], aliases={"치수/사이즈": "사이즈", "착화감": "착용감"})


@pytest.mark.parametrize("completion, expected", [
    ("디자인 1, 배송 -1", {"디자인": 1, "배송": -1}),
    ("디자인1, 배송-1", {"디자인": 1, "배송": -1}),
    ("색상2", {"색상": 2}),
    ("만족도 0", {"만족도": 0}),
    ("스타일 1, 만족도 2, 신축성 2", {"스타일": 1, "만족도": 2, "신축성": 2}),
    ("디자인 +1，배송 −1", {"디자인": 1, "배송": -1}),
    ("디자인 1; 배송 -1\n색상 2", {"디자인": 1, "배송": -1, "색상": 2}),
    ("배송 - 1", {"배송": -1}),
    ("제품 전체#일반 1", {"제품 전체#일반": 1}),
    ("치수/사이즈 1, 착화감 -2", {"사이즈": 1, "착용감": -2}),
    ("디자인 1, 디자인 1", {"디자인": 1}),
    ("디자인 1, ", {"디자인": 1}),
    ("", {}),
    ("   \n ", {}),
])
def test_parse_accepts_every_form(schema, completion, expected):
    assert schema.parse(completion) == expected


def test_parse_returns_schema_order(schema):
    assert list(schema.parse("배송 -1, 디자인 1")) == ["배송", "디자인"]
    assert list(schema.parse("디자인 1, 배송 -1")) == ["배송", "디자인"]


@pytest.mark.parametrize("completion, why", [
    ("배숑 1", "unknown keyword"),
    ("디자인 3", "outside the levels"),
    ("디자인 1, 디자인 2", "two different levels"),
    ("사이즈 1, 치수/사이즈 -1", "two different levels"),
    ("좋아요", "has no level"),
    ("디자인 1.5", "whole number"),
    ("디자인 1 배송 -1", "comma missing"),
    ("-1", "no keyword"),
])
def test_parse_errors_name_row_source_and_text(schema, completion, why):
    with pytest.raises(LabelError) as info:
        schema.parse(completion, row=7, source="reviews.csv")
    message = str(info.value)
    assert why in message
    assert "row 7" in message and "reviews.csv" in message and repr(completion) in message
    assert info.value.row == 7 and info.value.text == completion
    assert isinstance(info.value, ReviewlensError)


def test_parse_reports_every_problem(schema):
    with pytest.raises(LabelError) as info:
        schema.parse("배숑 1, 디자인 9, 좋아요")
    message = str(info.value)
    assert "unknown keyword '배숑'" in message and "level 9" in message and "'좋아요' has no level" in message


def test_parse_rejects_non_strings(schema):
    with pytest.raises(LabelError):
        schema.parse(None)


def test_allow_new_keywords_grows_the_schema(schema):
    before = schema.num_keywords
    assert schema.parse("디자인 1, 주머니 -1", allow_new_keywords=True) == {"디자인": 1, "주머니": -1}
    assert schema.keywords[-1] == "주머니" and schema.num_keywords == before + 1
    assert schema.keyword_index("주머니") == before
    # a string with an error adds nothing
    with pytest.raises(LabelError):
        schema.parse("냄새 1, 디자인 7", allow_new_keywords=True)
    assert "냄새" not in schema.keywords


def test_aliases_fold(schema):
    assert schema.canonical(" 치수/사이즈 ") == "사이즈"
    assert schema.keyword_index("착화감") == schema.keyword_index("착용감")
    assert schema.format({"치수/사이즈": 1}) == "사이즈 1"


def test_lookups(schema):
    assert schema.keyword_index("배송") == 0
    assert schema.level_index(-2) == 0 and schema.level_index(2) == 4
    assert schema.level_names() == ["-2", "-1", "0", "1", "2"]
    assert schema.num_levels == 5 and schema.num_keywords == 16
    with pytest.raises(LabelError):
        schema.keyword_index("없는키워드")
    with pytest.raises(LabelError):
        schema.level_index(3)
    nikl = LabelSchema(["본품#품질"], levels=[1, -1, 0])
    assert nikl.levels == [-1, 0, 1] and nikl.level_names() == ["-1", "0", "1"]


def test_format(schema):
    assert schema.format({"배송": -1, "디자인": 1}) == "배송 -1, 디자인 1"
    assert schema.format({}) == ""
    with pytest.raises(LabelError):
        schema.format({"배숑": 1})
    with pytest.raises(LabelError):
        schema.format({"배송": 5})


def test_dict_round_trip(schema):
    again = LabelSchema.from_dict(schema.to_dict())
    assert again == schema and again.aliases == schema.aliases
    with pytest.raises(LabelError):
        LabelSchema.from_dict({"levels": [0, 1]})


@pytest.mark.parametrize("keywords", [["배송", "배송"], ["a,b"], [""], ["배송-"], [" 배송"], [1]])
def test_bad_keywords_are_refused(keywords):
    with pytest.raises(LabelError):
        LabelSchema(keywords)


def test_bad_levels_are_refused():
    with pytest.raises(LabelError):
        LabelSchema(["배송"], levels=[])
    with pytest.raises(LabelError):
        LabelSchema(["배송"], levels=[0, 1.5])


def test_infer_orders_by_frequency_then_first_appearance():
    schema = LabelSchema.infer(["배송 1", "디자인 1, 배송 -1", "색상 2", "디자인 -2", "가격 1"])
    assert schema.keywords == ["배송", "디자인", "색상", "가격"]
    assert schema.levels == list(DEFAULT_LEVELS)
    nikl = LabelSchema.infer(["본품#품질 1", "제품 전체#일반 -1"], levels=[-1, 0, 1])
    assert nikl.levels == [-1, 0, 1]
    with pytest.raises(LabelError):
        LabelSchema.infer(["본품#품질 2"], levels=[-1, 0, 1])


def test_validate_resolves_conflicts_by_majority_then_lowest_level(schema):
    assert schema.validate([("배송", 1), ("배송", 1), ("배송", -1)], resolve_conflicts=True) == {"배송": 1}
    assert schema.validate([("배송", 1), ("배송", -1)], resolve_conflicts=True) == {"배송": -1}
    assert schema.validate([("사이즈", 1), ("치수/사이즈", 0)], resolve_conflicts=True) == {"사이즈": 0}
    with pytest.raises(LabelError):
        schema.validate([("배송", 1), ("배송", -1)])


# keywords as users write them: Hangul words, optionally with a space, '/' or '#' inside
_hangul = st.text(alphabet=st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3), min_size=1, max_size=5)
_keyword = st.one_of(
    st.sampled_from(SEED_KEYWORDS),
    _hangul,
    st.builds(lambda a, sep, b: f"{a}{sep}{b}", _hangul, st.sampled_from([" ", "/", "#"]), _hangul),
    st.text(min_size=1, max_size=8).map(str.strip).filter(
        lambda k: k and not any(c in k for c in ",，;；\r\n") and k[-1] not in "+-\u2212"
        and all(c.isprintable() for c in k)),
)


@settings(max_examples=150, deadline=None)
@given(
    keywords=st.lists(_keyword, min_size=1, max_size=12, unique=True),
    levels=st.sampled_from([list(DEFAULT_LEVELS), [-1, 0, 1], [0, 1, 2, 3, 4]]),
    data=st.data(),
)
def test_format_parse_round_trip(keywords, levels, data):
    schema = LabelSchema(keywords, levels=levels)
    chosen = data.draw(st.lists(st.sampled_from(keywords), unique=True, max_size=len(keywords)))
    labels = {k: data.draw(st.sampled_from(levels)) for k in chosen}
    completion = schema.format(labels)
    assert schema.parse(completion) == labels
    assert list(schema.parse(completion)) == [k for k in keywords if k in labels]
    # the no-space form reads back too when keywords end in a letter
    if all(not k[-1].isdigit() for k in labels):
        compact = ",".join(f"{k}{v}" for k, v in labels.items())
        assert schema.parse(compact) == labels


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_parse_never_raises_anything_but_label_error(completion):
    schema = LabelSchema(SEED_KEYWORDS)
    try:
        labels = schema.parse(completion)
    except LabelError:
        return
    assert schema.parse(schema.format(labels)) == labels
