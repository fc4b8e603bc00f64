"""`reviewlens train` unchanged under `torchrun --nproc_per_node 2` (DDP, gloo on CPU)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import EXAMPLES

# Runs the real CLI in each torchrun process, then records the process group it trained in.
SCRIPT = """
import json, os, sys
from pathlib import Path

import torch.distributed as dist

from reviewlens.cli import app

code = app(sys.argv[1:], standalone_mode=False)  # None when the command succeeds, its exit code when it fails
info = {"code": code or 0, "initialized": dist.is_initialized()}
if dist.is_initialized():
    info.update(rank=dist.get_rank(), world_size=dist.get_world_size(), backend=dist.get_backend())
Path(os.environ["DDP_REPORT_DIR"], f"rank{os.environ['RANK']}.json").write_text(json.dumps(info))
"""


def test_train_under_torchrun_two_processes(tmp_path, tiny_base):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    from reviewlens.analyzer import ReviewAnalyzer
    from reviewlens.bundle import ModelBundle
    from reviewlens.data import read_reviews

    data = tmp_path / "reviews.csv"
    shutil.copy(EXAMPLES / "fashion_reviews.csv", data)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "base": str(tiny_base), "pooling": "mean", "keyword_epochs": 2, "sentiment_epochs": 2, "batch_size": 8,
        "learning_rate": 0.002, "early_stopping_patience": 0, "seed": 0}), encoding="utf-8")
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT, encoding="utf-8")
    reports = tmp_path / "ranks"
    reports.mkdir()
    out = tmp_path / "models" / "bundle"
    env = dict(os.environ, DDP_REPORT_DIR=str(reports), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "train", "--data", str(data), "--model-out", str(out), "--config", str(config)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    ranks = sorted((json.loads(p.read_text()) for p in reports.glob("rank*.json")), key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["code"] == 0 and r["initialized"] and r["world_size"] == 2 and r["backend"] == "gloo"
               for r in ranks), ranks

    bundle = ModelBundle.load(out)
    schema = read_reviews(data, require_labels=True).schema
    assert bundle.schema.keywords == schema.keywords and bundle.schema.levels == schema.levels
    assert set(bundle.metrics["validation"]) >= {"keyword_micro_f1", "sentiment_macro_f1", "pipeline_f1"}
    assert (out / "keyword" / "head.json").is_file() and (out / "sentiment" / "head.json").is_file()
    # one writer: no half-written bundle or second temp dir beside it, and the checkpoints are cleaned up
    assert [p.name for p in out.parent.iterdir()] == ["bundle"]
    results = ReviewAnalyzer.from_pretrained(out).analyze(["옷은 예쁘지만 배송은 늦어요", "색이 정말 이뻐요"])
    assert len(results) == 2
    assert all(k.keyword in schema.keywords and k.level in schema.levels for r in results for k in r.keywords)
