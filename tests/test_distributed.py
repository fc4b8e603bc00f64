"""The Ray engine: a local 2-CPU Ray cluster with 2 actors on the tiny bundle, against the local path."""

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reviewlens.analyzer import analysis_rows
from reviewlens.cli import app
from reviewlens.distributed import actor_cpus, analyze_with_ray, expand_inputs, plan_outputs
from reviewlens.errors import ReviewlensError

from conftest import EXAMPLES


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'reviewlens[ray]'")
    pytest.importorskip("ray.data", reason="ray[data] is not installed: pip install 'reviewlens[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def _local_rows(model, path):
    """What the local path (``reviewlens analyze --format csv``) writes for ``path``."""
    from reviewlens.analyzer import ReviewAnalyzer
    from reviewlens.data import read_texts

    ids, texts = read_texts(path)
    return analysis_rows(ReviewAnalyzer.from_pretrained(model).analyze(texts, ids=ids))


def _probabilities(row):
    return [(k["keyword"], k["probability"], k["level"]) for k in json.loads(row["keywords"])]


def test_ray_engine_matches_the_local_path_and_resumes_by_file(tmp_path, tiny_bundle, ray_local):
    import pyarrow as pa
    import pyarrow.parquet as pq

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    shutil.copy(EXAMPLES / "fashion_reviews.csv", inputs / "a.csv")
    (inputs / "b.txt").write_text("색이 정말 이뻐요\n배송이 늦어요\n😀😀👍\n", encoding="utf-8")  # no ids; emoji only
    (inputs / "c.csv").write_bytes("id,text\n007,사이즈가 커요 핏은 예뻐요\n".encode("cp949"))
    (inputs / "bad.csv").write_text("id,body\n1,좋아요\n", encoding="utf-8")
    (inputs / "done.csv").write_text("id,text\nd1,이미 분석한 리뷰\n", encoding="utf-8")
    # an earlier run finished done.csv and was killed while it wrote a.csv
    pq.write_table(pa.table({"id": ["d1"], "text": ["이미 분석한 리뷰"], "completion": [""], "keywords": ["[]"]}),
                   out / "done.parquet")
    done_before = (out / "done.parquet").read_bytes()
    (out / ".a.parquet.12345.tmp").write_bytes(b"PAR1 half written")

    report = analyze_with_ray(tiny_bundle, inputs, out, num_workers=2, batch_size=8, rows_per_block=8)

    status = {Path(f.source).name: f.status for f in report.files}
    assert status == {"a.csv": "done", "b.txt": "done", "c.csv": "done", "bad.csv": "failed", "done.csv": "skipped"}
    (failed,) = report.by_status("failed")
    assert "bad.csv" in failed.error and "no text column" in failed.error
    with pytest.raises(ReviewlensError, match="bad.csv"):
        report.raise_for_failures()
    n_a = len((EXAMPLES / "fashion_reviews.csv").read_text(encoding="utf-8").strip().splitlines()) - 1
    assert report.rows == n_a + 3 + 1
    # which of the 2 actors gets the blocks is Ray's scheduling (the first one up may take them all): per actor
    # "node:pid", at most the pool's size
    assert 1 <= len(report.rows_per_worker) <= 2, report.rows_per_worker
    assert all(re.fullmatch(r".+:\d+", worker) for worker in report.rows_per_worker)
    assert sum(report.rows_per_worker.values()) == report.rows
    # the stale temp file is gone, the unreadable file has no output, the finished one is untouched
    assert sorted(p.name for p in out.iterdir()) == ["a.parquet", "b.parquet", "c.parquet", "done.parquet"]
    assert (out / "done.parquet").read_bytes() == done_before

    for name in ("a.csv", "b.txt", "c.csv"):
        table = pq.read_table(out / f"{Path(name).stem}.parquet")
        assert table.column_names == ["id", "text", "completion", "keywords"]
        assert table.schema.metadata[b"reviewlens.source"].decode() == str((inputs / name).resolve())
        got, expected = table.to_pylist(), _local_rows(tiny_bundle, inputs / name)
        assert [(r["id"], r["text"], r["completion"]) for r in got] == \
               [(r["id"], r["text"], r["completion"]) for r in expected]
        for g, e in zip(got, expected):
            assert [(k, level) for k, _, level in _probabilities(g)] == [(k, level) for k, _, level in _probabilities(e)]
            assert [p for _, p, _ in _probabilities(g)] == pytest.approx([p for _, p, _ in _probabilities(e)], abs=1e-4)
    c_rows = pq.read_table(out / "c.parquet").to_pylist()
    assert c_rows[0]["id"] == "007"  # ids stay strings, as the local readers keep them
    assert pq.read_table(out / "b.parquet").column("id").to_pylist() == ["", "", ""]
    assert any(json.loads(r["keywords"]) for r in pq.read_table(out / "a.parquet").to_pylist())

    # fix the bad file and rerun: only it is analysed, every finished output is left as it was
    (inputs / "bad.csv").write_text("id,text\n1,좋아요\n", encoding="utf-8")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = analyze_with_ray(tiny_bundle, inputs, out, num_workers=1, batch_size=8)
    assert {Path(f.source).name: f.status for f in again.files} == {
        "a.csv": "skipped", "b.txt": "skipped", "c.csv": "skipped", "done.csv": "skipped", "bad.csv": "done"}
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "bad.parquet"} == before
    assert pq.read_table(out / "bad.parquet").column("id").to_pylist() == ["1"]
    again.raise_for_failures()


def test_inputs_from_files_directories_and_globs(tmp_path):
    (tmp_path / "x").mkdir()
    for name in ("a.csv", "b.jsonl", "c.parquet", "d.txt", "notes.md", ".hidden.csv"):
        (tmp_path / "x" / name).write_text("id,text\n1,a\n", encoding="utf-8")
    names = [p.name for p in expand_inputs(tmp_path / "x")]
    assert names == ["a.csv", "b.jsonl", "c.parquet", "d.txt"]
    assert [p.name for p in expand_inputs(str(tmp_path / "x" / "*.csv"))] == ["a.csv"]
    assert [p.name for p in expand_inputs([tmp_path / "x" / "a.csv", tmp_path / "x" / "a.csv"])] == ["a.csv"]
    with pytest.raises(ReviewlensError, match="no such file"):
        expand_inputs(tmp_path / "missing.csv")
    with pytest.raises(ReviewlensError, match="match"):
        expand_inputs(str(tmp_path / "x" / "*.xlsx"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReviewlensError, match="no review files"):
        expand_inputs(tmp_path / "empty")


def test_output_plan_refuses_collisions(tmp_path):
    out = tmp_path / "out"
    assert plan_outputs([tmp_path / "a.csv"], out) == {tmp_path / "a.csv": out / "a.parquet"}
    with pytest.raises(ReviewlensError, match="both be written"):
        plan_outputs([tmp_path / "a.csv", tmp_path / "a.jsonl"], out)
    with pytest.raises(ReviewlensError, match="replace the input"):
        plan_outputs([out / "a.parquet"], out)


def test_actors_leave_a_cpu_for_reading():
    assert actor_cpus(16, 4, 2.0) == 2.0
    assert actor_cpus(2, 2, 1.0) == 0.5  # 2 actors on a 2-CPU cluster would starve the read tasks
    assert actor_cpus(4, 2, 2.0) == 1.5
    with pytest.raises(ReviewlensError, match="CPU"):
        actor_cpus(1, 1, 1.0)


def test_cli_ray_engine_needs_input_and_output_dir(tmp_path, tiny_bundle):
    runner = CliRunner()
    result = runner.invoke(app, ["analyze", "--engine", "ray", "--model", str(tiny_bundle), "색이 예뻐요"])
    assert result.exit_code == 2 and "--input" in result.output and "--output" in result.output
    result = runner.invoke(app, ["analyze", "--engine", "spark", "색이 예뻐요"])
    assert result.exit_code == 2 and "local or ray" in result.output
