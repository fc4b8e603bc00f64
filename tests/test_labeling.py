"""merge_labels: labeled batches back into the training data, by id, never dropping a row."""

from __future__ import annotations

import json

import pytest

from reviewlens.data import read_reviews
from reviewlens.errors import DataError, ReviewlensError
from reviewlens.labeling import MergeConflictError, merge_label_files, write_table

BASE = """id,text,labels,shop,category
1,옷은 예쁘지만 배송은 늦어요,"디자인 1, 배송 -1",몰1,원피스
2,색이 정말 이뻐요,색상 2,몰2,원피스
3,품질이 좀 떨어지지만 가격이 싸니까,"품질 -1, 가격 1",몰1,하의
4,사이즈 딱 맞아요,,몰1,상의
"""


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def _batch(tmp_path, rows: str):
    header = "rank,id,text,labels,model_labels,strategy,score,shop,category\n"
    return _write(tmp_path / "batch.csv", header + rows)


def test_merge_adds_fills_and_keeps_every_base_row(tmp_path):
    base = _write(tmp_path / "train.csv", BASE)
    batch = _batch(tmp_path, '1,10,배송 빨라요,배송 1,배송 1,keyword-boundary,0.9,몰3,상의\n'
                             '2,4,사이즈 딱 맞아요,품질 1,,random,0.1,몰1,상의\n'
                             '3,2,색이 정말 이뻐요,색상 2,색상 1,random,0.2,몰2,원피스\n'
                             '4,11,아직 안 입어봤어요,,디자인 1,outliers,0.5,,\n')
    out = tmp_path / "train2.csv"
    report = merge_label_files(base, batch, out)
    merged = read_reviews(out)
    assert [r.id for r in merged] == ["1", "2", "3", "4", "10"]
    labels = {r.id: r.labels for r in merged}
    assert labels["4"] == {"품질": 1} and labels["10"] == {"배송": 1} and labels["1"] == {"디자인": 1, "배송": -1}
    assert report.counts() == {"added": 1, "filled": 1, "unchanged": 1, "skipped": 1}
    assert report.base_rows == 4 and report.output_rows == 5
    # three rows carried a suggestion; on row 2 (id 2) the labeler changed 색상 1 to 색상 2, on id 11 cleared it
    assert report.prefilled == 3 and report.corrected == 2
    assert "1 added" in report.summary() and "corrected 2 of 3" in report.summary()
    assert [r.shop for r in merged][-1] == "몰3"


def test_conflicts_are_refused_unless_a_side_is_preferred(tmp_path):
    base = _write(tmp_path / "train.csv", BASE)
    batch = _batch(tmp_path, '1,1,옷은 예쁘지만 배송은 늦어요,"디자인 1, 배송 -2",,random,0.1,,\n'
                             '2,3,다른 텍스트,"품질 -1, 가격 1",,random,0.1,,\n')
    out = tmp_path / "train2.csv"
    with pytest.raises(MergeConflictError) as info:
        merge_label_files(base, batch, out)
    message = str(info.value)
    assert "2 review(s) conflict" in message and "id 1: labels '디자인 1, 배송 -1' in base" in message
    assert "id 3: text" in message and "--prefer" in message
    assert not out.exists()

    report = merge_label_files(base, batch, out, prefer="labeled")
    merged = {r.id: r for r in read_reviews(out)}
    assert merged["1"].labels == {"디자인": 1, "배송": -2} and merged["3"].text == "다른 텍스트"
    assert report.counts() == {"updated": 2} and len(merged) == 4

    report = merge_label_files(base, batch, out, prefer="base")
    merged = {r.id: r for r in read_reviews(out)}
    assert merged["1"].labels == {"디자인": 1, "배송": -1} and merged["3"].text.startswith("품질이")
    assert report.counts() == {"kept": 2}


def test_unknown_keywords_in_the_batch_are_errors_unless_allowed(tmp_path):
    base = _write(tmp_path / "train.csv", BASE)
    batch = _batch(tmp_path, '1,12,실밥이 나와요,마감처리 -1,,random,0.1,,\n')
    with pytest.raises(DataError, match="unknown keyword '마감처리'"):
        merge_label_files(base, batch, tmp_path / "out.csv")
    merge_label_files(base, batch, tmp_path / "out.jsonl", allow_new_keywords=True)
    merged = read_reviews(tmp_path / "out.jsonl")
    assert merged.reviews[-1].labels == {"마감처리": -1} and "마감처리" in merged.schema.keywords


def test_merge_into_nikl_data_keeps_its_levels(tmp_path, nikl_slice):
    base = read_reviews(nikl_slice)
    first = base.reviews[0]
    keyword = next(iter(first.labels))
    batch = tmp_path / "batch.jsonl"
    rows = [{"id": first.id, "text": first.text, "labels": f"{keyword} 1"},
            {"id": "new-1", "text": "배터리가 오래가요", "labels": "본품#품질 1"}]
    batch.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    report = merge_label_files(nikl_slice, batch, tmp_path / "merged.csv", prefer="labeled")
    merged = read_reviews(tmp_path / "merged.csv", levels=[-1, 0, 1])
    assert len(merged) == len(base) + 1
    assert merged.reviews[0].labels == {keyword: 1}
    assert report.counts()["added"] == 1
    with pytest.raises(ReviewlensError, match="prefer must be"):
        from reviewlens.labeling import merge_labels

        merge_labels(base, base, prefer="newest")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_write_table_formats_round_trip(tmp_path, suffix):
    import pandas as pd

    rows = [{"id": "a", "text": "쉼표, 그리고 \"따옴표\"", "score": 0.5}, {"id": "b", "text": "줄\n바꿈", "score": None}]
    path = write_table(rows, tmp_path / f"t{suffix}", ["id", "text", "score"])
    frame = {".csv": lambda p: pd.read_csv(p, keep_default_na=False), ".parquet": pd.read_parquet,
             ".jsonl": lambda p: pd.read_json(p, lines=True)}[suffix](path)
    assert list(frame["id"]) == ["a", "b"] and list(frame["text"]) == [r["text"] for r in rows]
    with pytest.raises(ReviewlensError, match="unknown file type"):
        write_table(rows, tmp_path / "t.xlsx", ["id"])
