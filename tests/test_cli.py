"""End to end through the command line on 200 real NIKL rows: train -> evaluate -> analyze."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from reviewlens.cli import app

runner = CliRunner()


def test_train_evaluate_analyze_on_real_rows(tiny_base, nikl_slice, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"pooling": "mean", "keyword_epochs": 2, "sentiment_epochs": 1,
                                      "learning_rate": 2e-3, "batch_size": 32, "early_stopping_patience": 0}),
                      encoding="utf-8")
    bundle = tmp_path / "bundle"
    result = runner.invoke(app, ["train", "--data", str(nikl_slice), "--model-out", str(bundle), "--config",
                                 str(config), "--base", str(tiny_base), "--seed", "7"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "reviewlens.json").read_text(encoding="utf-8"))
    assert manifest["schema"]["levels"] == [-1, 0, 1]
    assert "본품#품질" in manifest["schema"]["keywords"]
    assert set(manifest["thresholds"]) == set(manifest["schema"]["keywords"])
    assert manifest["config"]["seed"] == 7 and manifest["base_model"] == str(tiny_base)
    assert len(manifest["data_hash"]) == 64 and "transformers" in manifest["versions"]
    assert sorted(p.name for p in bundle.iterdir()) == ["keyword", "reviewlens.json", "sentiment"]
    chosen = manifest["metrics"]["clause_weight_pipeline_f1"]  # the clause weight is chosen on validation
    assert len(chosen) == 5 and manifest["clause_weight"] in [float(w) for w in chosen]
    assert manifest["metrics"]["validation"]["pipeline_f1"] == pytest.approx(chosen[str(manifest["clause_weight"])],
                                                                             abs=1e-4)

    result = runner.invoke(app, ["evaluate", "--model", str(bundle), "--data", str(nikl_slice), "--json",
                                 "--output", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("keywords", "sentiment", "pipeline"):
        assert {"precision", "recall", "f1"} <= set(report[key])
        assert 0.0 <= report[key]["f1"] <= 1.0
    assert {"micro", "macro", "samples", "본품#품질"} <= set(report["keywords"])
    assert {"micro", "macro", "-1", "0", "1"} <= set(report["sentiment"])
    from reviewlens.data import read_reviews

    gold_pairs = sum(len(r.labels) for r in read_reviews(nikl_slice))
    assert report["pipeline"]["support"] == gold_pairs > 0
    for name in ("report.json", "report.md", "confusion.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0

    texts = ["배송이 빨라요 품질도 좋아요", "디자인이 예뻐요"]
    result = runner.invoke(app, ["analyze", "--model", str(bundle), *texts, "--format", "json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [r["text"] for r in out] == texts
    for r in out:
        assert set(r) == {"text", "completion", "keywords"}
        for k in r["keywords"]:
            assert k["keyword"] in manifest["schema"]["keywords"] and k["level"] in (-1, 0, 1)

    # a file in, CSV out, ids kept, nothing dropped
    inp = tmp_path / "in.csv"
    inp.write_text("id,text\na1,배송이 빨라요\na2,색이 예뻐요\na3,😀\n", encoding="utf-8")
    result = runner.invoke(app, ["analyze", "--model", str(bundle), "--input", str(inp), "--output",
                                 str(tmp_path / "out.csv"), "--format", "csv", "--no-highlights"])
    assert result.exit_code == 0, result.output
    import pandas as pd

    df = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert df["id"].tolist() == ["a1", "a2", "a3"] and df.loc[2, "completion"] == ""


def test_bad_data_file_names_file_row_and_field(tmp_path, tiny_base):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text,labels\n1,좋아요,디자인 1\n2,,배송 1\n3,별로,디자인 9\n", encoding="utf-8")
    result = runner.invoke(app, ["train", "--data", str(bad), "--model-out", str(tmp_path / "m"),
                                 "--base", str(tiny_base)])
    assert result.exit_code == 2
    assert "bad.csv" in result.output and "row 2" in result.output and "row 3" in result.output
    assert "'text'" in result.output and "'labels'" in result.output
    assert not (tmp_path / "m").exists()


def test_missing_model_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["analyze", "--model", str(tmp_path / "nope"), "좋아요"])
    assert result.exit_code == 2 and "not a reviewlens bundle" in result.output


def test_a_review_file_given_as_a_review_is_refused(tmp_path):
    reviews = tmp_path / "reviews.csv"
    reviews.write_text("id,review\n1,옷은 예쁘지만 배송은 늦어요\n", encoding="utf-8")
    result = runner.invoke(app, ["analyze", "--model", str(tmp_path / "nope"), str(reviews)])
    assert result.exit_code == 2
    assert "is a file, not a review" in result.output and f"--input {reviews}" in result.output


def test_calibrate_refits_a_bundle_on_validation_data(tiny_bundle, tmp_path):
    import shutil

    from reviewlens.clause_sentiment import CLAUSE_WEIGHTS
    from conftest import EXAMPLES

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    data = EXAMPLES / "fashion_reviews.csv"
    result = runner.invoke(app, ["calibrate", "--model", str(bundle), "--data", str(data), "--clause-weight", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "reviewlens.json").read_text(encoding="utf-8"))
    assert manifest["clause_weight"] == 1.0 and 0 <= manifest["metrics"]["validation"]["pipeline_f1"] <= 1

    result = runner.invoke(app, ["calibrate", "--model", str(bundle), "--data", str(data)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "reviewlens.json").read_text(encoding="utf-8"))
    assert manifest["clause_weight"] in CLAUSE_WEIGHTS
    best = max(manifest["metrics"]["clause_weight_pipeline_f1"].values())
    assert manifest["metrics"]["clause_weight_pipeline_f1"][str(manifest["clause_weight"])] == best

    before = (bundle / "reviewlens.json").read_bytes()
    result = runner.invoke(app, ["calibrate", "--model", str(bundle), "--data", str(data), "--clause-weight", "2"])
    assert result.exit_code != 0 and "clause_weight must be between 0 and 1" in result.output
    assert (bundle / "reviewlens.json").read_bytes() == before  # a refused run leaves the bundle as it was
