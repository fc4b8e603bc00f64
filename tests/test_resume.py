"""Crash safety: `reviewlens train --resume` after `kill -9`, and writes that a kill cannot half-finish."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from reviewlens.bundle import ModelBundle
from reviewlens.data import atomic_write_text, read_reviews, train_validation_split
from reviewlens.errors import ReviewlensError
from reviewlens.training import TrainConfig, last_checkpoint, train

from conftest import EXAMPLES

ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
           TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
_EPOCH = re.compile(r"'epoch': '?([0-9.]+)'?")


def _training_files(tmp_path, tiny_base):
    """Four copies of the example reviews (about 250 rows) and a tiny config logging every step."""
    lines = (EXAMPLES / "fashion_reviews.csv").read_text(encoding="utf-8").strip().splitlines()
    header, rows = lines[0], lines[1:]
    assert header.startswith("id,")
    data = tmp_path / "reviews.csv"
    data.write_text("\n".join([header] + [f"c{n}-{row}" for n in range(4) for row in rows]) + "\n", encoding="utf-8")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "base": str(tiny_base), "pooling": "mean", "keyword_epochs": 2, "sentiment_epochs": 3, "batch_size": 8,
        "learning_rate": 0.002, "early_stopping_patience": 0, "logging_steps": 1, "seed": 0}), encoding="utf-8")
    return data, config


def _train_cmd(data, config, out, *extra):
    return [sys.executable, "-m", "reviewlens.cli", "train", "--data", str(data), "--model-out", str(out),
            "--config", str(config), *extra]


def _kill_mid_epoch(cmd, stage_dir: Path, timeout: float = 240.0) -> float:
    """Run ``cmd``; once a checkpoint of ``stage_dir`` is complete, SIGKILL it in the middle of the next epoch.

    Returns the epoch (from the Trainer's step log) at which it was killed.
    """
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    epochs: list[float] = []

    def read() -> None:
        for line in iter(proc.stdout.readline, b""):
            epochs.extend(float(e) for e in _EPOCH.findall(line.decode("utf-8", "replace")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            checkpoint = last_checkpoint(stage_dir)
            if checkpoint is not None:
                saved = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["epoch"]
                seen = len(epochs)
                while time.monotonic() < deadline and proc.poll() is None:
                    later = [e for e in epochs[seen:] if saved < e < saved + 1 and not e.is_integer()]
                    if later:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                        return later[0]
                    time.sleep(0.01)
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=5)
    pytest.fail(f"the run ended (code {proc.returncode}) before it could be killed mid-epoch")


def test_resume_after_kill_reaches_the_uninterrupted_metrics(tmp_path, tiny_base):
    data, config = _training_files(tmp_path, tiny_base)
    full, killed = tmp_path / "full", tmp_path / "killed"
    # the uninterrupted run trains beside the killed one (one thread each)
    reference_log = open(tmp_path / "reference.log", "wb")  # a file, not a pipe: progress bars would fill a pipe
    reference = subprocess.Popen(_train_cmd(data, config, full), env=ENV, stdout=reference_log,
                                 stderr=subprocess.STDOUT)
    checkpoints = tmp_path / "killed.checkpoints"
    epoch = _kill_mid_epoch(_train_cmd(data, config, killed), checkpoints / "sentiment")
    assert not epoch.is_integer()
    assert not killed.exists()  # killed before any bundle was written
    assert (checkpoints / "keyword" / "final.safetensors").is_file()  # the first stage had finished

    resumed = subprocess.run(_train_cmd(data, config, killed, "--resume"), env=ENV, capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and "finished in the interrupted run" in resumed.stderr
    reference.wait(timeout=240)
    reference_log.close()
    assert reference.returncode == 0, (tmp_path / "reference.log").read_text(errors="replace")[-2000:]

    a, b = ModelBundle.load(full), ModelBundle.load(killed)
    assert a.schema == b.schema
    metrics_a, metrics_b = a.metrics["validation"], b.metrics["validation"]
    assert metrics_a.keys() == metrics_b.keys()
    for name in metrics_a:
        assert metrics_b[name] == pytest.approx(metrics_a[name], abs=1e-6), name
    assert b.thresholds.keys() == a.thresholds.keys()
    for keyword in a.thresholds:
        assert b.thresholds[keyword] == pytest.approx(a.thresholds[keyword], abs=1e-6)
    assert not checkpoints.exists()  # removed once the bundle is written


def test_resume_refuses_checkpoints_of_another_schema(tmp_path, tiny_base):
    from reviewlens.training import _prepare_checkpoints, _run_info

    config = TrainConfig(base=str(tiny_base), checkpoint_dir=str(tmp_path / "ck"))
    first = read_reviews(EXAMPLES / "fashion_reviews.csv")
    other = tmp_path / "other.csv"
    other.write_text("id,text,labels\n1,배송이 빨라요,배송 1\n2,색이 예뻐요,색상 2\n3,가격이 싸요,가격 1\n"
                     "4,배송 느려요,배송 -1\n", encoding="utf-8")
    part, held_out = train_validation_split(first, config.validation_size, config.seed)  # as train() splits
    _prepare_checkpoints(Path(config.checkpoint_dir), _run_info(part, held_out, config), resume=False)
    with pytest.raises(ReviewlensError, match="another label schema") as info:
        train(read_reviews(other), tmp_path / "model", config, resume=True)
    assert "ck" in str(info.value) and "without --resume" in str(info.value)
    assert not (tmp_path / "model").exists()

    changed = TrainConfig(base=str(tiny_base), checkpoint_dir=str(tmp_path / "ck"), learning_rate=1e-3)
    with pytest.raises(ReviewlensError, match="learning_rate"):
        train(first, tmp_path / "model", changed, resume=True)


def test_checkpoint_dir_that_is_not_ours_is_never_deleted(tmp_path, tiny_base):
    precious = tmp_path / "model.checkpoints"
    precious.mkdir()
    (precious / "thesis.txt").write_text("not a checkpoint", encoding="utf-8")
    dataset = read_reviews(EXAMPLES / "fashion_reviews.csv")
    with pytest.raises(ReviewlensError, match="not a reviewlens checkpoint directory"):
        train(dataset, tmp_path / "model", TrainConfig(base=str(tiny_base)))
    assert (precious / "thesis.txt").read_text(encoding="utf-8") == "not a checkpoint"


def test_last_checkpoint_skips_half_written_ones(tmp_path):
    for step, complete in ((7, True), (14, True), (21, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-14")
    assert last_checkpoint(tmp_path / "missing") is None


# -- atomic writes ------------------------------------------------------------------------------------------


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_failing_bundle_write_leaves_the_old_bundle(tmp_path, tiny_bundle):
    bundle_dir = tmp_path / "models" / "bundle"
    shutil.copytree(tiny_bundle, bundle_dir)
    before = _digest(bundle_dir)
    bundle = ModelBundle.load(bundle_dir)
    bundle.thresholds = {k: 0.01 for k in bundle.schema.keywords}

    def broken(directory: Path) -> None:
        (directory / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        bundle.save(bundle_dir, {"keyword": broken})
    assert _digest(bundle_dir) == before
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["bundle"]  # the temp dir is cleaned up


KILLED_SAVE = """
import sys, time
from pathlib import Path
from reviewlens.bundle import ModelBundle

bundle = ModelBundle.load(sys.argv[1])

def slow(directory):
    (directory / "model.safetensors").write_bytes(b"half written")
    Path(sys.argv[2]).write_text("writing")
    time.sleep(120)

bundle.save(sys.argv[1], {"keyword": slow, "sentiment": slow})
"""

KILLED_WRITE = """
import os, sys, time
from pathlib import Path
from reviewlens.data import read_reviews, write_reviews

def stuck(fd):  # the temp file holds every byte; the kill comes before the rename
    Path(sys.argv[3]).write_text("writing")
    time.sleep(120)

os.fsync = stuck
write_reviews(read_reviews(sys.argv[1]), sys.argv[2])
"""


def _run_until_killed(tmp_path, script: str, *args: str) -> None:
    ready = tmp_path / "ready"
    path = tmp_path / "script.py"
    path.write_text(script, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(path), *args, str(ready)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timed out"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_a_killed_bundle_write_leaves_the_old_bundle(tmp_path, tiny_bundle):
    bundle_dir = tmp_path / "models" / "bundle"
    shutil.copytree(tiny_bundle, bundle_dir)
    before = _digest(bundle_dir)
    _run_until_killed(tmp_path, KILLED_SAVE, str(bundle_dir))
    assert _digest(bundle_dir) == before
    assert ModelBundle.load(bundle_dir).schema.keywords  # still a loadable bundle
    # what the kill left is a hidden temp dir beside it, never a mix inside it
    leftovers = [p.name for p in bundle_dir.parent.iterdir() if p.name != "bundle"]
    assert all(name.startswith(".bundle.") and name.endswith(".tmp") for name in leftovers)
    # the next save clears what a dead writer left behind
    ModelBundle.load(bundle_dir).save(bundle_dir, {})
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["bundle"]


def test_a_bundle_moved_aside_by_a_killed_swap_is_put_back(tmp_path, tiny_bundle):
    """Where the OS has no atomic exchange, a kill between the two renames leaves the old bundle aside: the
    next load puts it back."""
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, tmp_path / ".bundle.old-4242")
    assert not bundle_dir.exists()
    assert ModelBundle.load(bundle_dir).schema.keywords
    assert bundle_dir.is_dir() and not (tmp_path / ".bundle.old-4242").exists()


def test_replacing_a_bundle_swaps_it_whole(tmp_path):
    from reviewlens.bundle import replace_dir

    dest, new = tmp_path / "dest", tmp_path / "new"
    dest.mkdir()
    (dest / "a").write_text("old")
    new.mkdir()
    (new / "b").write_text("new")
    replace_dir(new, dest)
    assert [p.name for p in dest.iterdir()] == ["b"] and not new.exists()


def test_a_killed_file_write_leaves_the_old_file(tmp_path):
    source = tmp_path / "source.csv"
    shutil.copy(EXAMPLES / "fashion_reviews.csv", source)
    target = tmp_path / "out" / "reviews.csv"
    target.parent.mkdir()
    target.write_text("id,text,labels\nold,예전 파일,\n", encoding="utf-8")
    _run_until_killed(tmp_path, KILLED_WRITE, str(source), str(target))
    assert target.read_text(encoding="utf-8") == "id,text,labels\nold,예전 파일,\n"
    temps = [p for p in target.parent.iterdir() if p != target]
    assert len(temps) == 1 and temps[0].name.startswith(".reviews.csv.")  # complete, but never renamed
    assert len(read_reviews(temps[0], format="csv")) == len(read_reviews(source))


def test_an_exception_during_a_file_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    atomic_write_text(target, '{"old": true}')

    def refuse(*_):
        raise OSError("no space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="no space"):
        atomic_write_text(target, '{"new": true}')
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def _probabilities(bundle_dir: Path, texts: list[str]):
    from reviewlens.analyzer import ReviewAnalyzer

    analyzer = ReviewAnalyzer.from_pretrained(bundle_dir)
    return analyzer.keyword_probabilities(texts), analyzer.scorer.sentiment_probs(texts, ["디자인"] * len(texts))


def test_init_from_warm_starts_both_models_from_a_bundle(tiny_bundle, tiny_base, tmp_path):
    """With a learning rate of 0 a warm-started bundle predicts exactly what its starting bundle does; a
    fresh one does not. Then a real warm start trains on."""
    data = read_reviews(EXAMPLES / "fashion_reviews.csv", schema=ModelBundle.load(tiny_bundle).schema)
    texts = ["옷은 예쁘지만 배송은 늦어요", "색이 정말 이뻐요"]
    start_kw, start_st = _probabilities(tiny_bundle, texts)
    frozen = dict(base=str(tiny_base), pooling="mean", sentiment_pooling="mean_keyword", keyword_epochs=1,
                  sentiment_epochs=1, learning_rate=0.0, batch_size=16, early_stopping_patience=0, seed=0)
    train(data, tmp_path / "warm", TrainConfig(**frozen, init_from=str(tiny_bundle)))
    warm_kw, warm_st = _probabilities(tmp_path / "warm", texts)
    assert warm_kw == pytest.approx(start_kw, abs=1e-5) and warm_st == pytest.approx(start_st, abs=1e-5)
    train(data, tmp_path / "fresh", TrainConfig(**frozen))
    fresh_kw, _ = _probabilities(tmp_path / "fresh", texts)
    assert abs(fresh_kw - start_kw).max() > 1e-3
    trained = train(data, tmp_path / "more", TrainConfig(**{**frozen, "learning_rate": 2e-3},
                                                         init_from=str(tiny_bundle)))
    assert trained.config["init_from"] == str(tiny_bundle)
    assert abs(_probabilities(tmp_path / "more", texts)[0] - start_kw).max() > 1e-4
    # 0 epochs keeps a model as it starts: here the keyword model, while the sentiment model trains on
    train(data, tmp_path / "sentiment-only", TrainConfig(**{**frozen, "learning_rate": 2e-3, "keyword_epochs": 0},
                                                         init_from=str(tiny_bundle)))
    kept_kw, trained_st = _probabilities(tmp_path / "sentiment-only", texts)
    assert kept_kw == pytest.approx(start_kw, abs=1e-5) and abs(trained_st - start_st).max() > 1e-4
    with pytest.raises(ReviewlensError, match="keyword_epochs is 0: nothing to train"):
        train(data, tmp_path / "nothing", TrainConfig(**{**frozen, "keyword_epochs": 0}))
    with pytest.raises(ReviewlensError, match="no review has gold mention spans"):  # a CSV has none
        train(data, tmp_path / "spans", TrainConfig(**frozen, span_examples=True))


def test_init_from_refuses_another_label_schema(tiny_bundle, tiny_base, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("id,text,labels\n" + "".join(f"{n},배송이 빨라요 {n},배송 1\n{n}b,냄새가 나요 {n},냄새 -1\n"
                                                 for n in range(6)), encoding="utf-8")
    data = read_reviews(other)
    config = TrainConfig(base=str(tiny_base), pooling="mean", sentiment_pooling="mean_keyword",
                         init_from=str(tiny_bundle))
    with pytest.raises(ReviewlensError, match="keywords .* differ"):
        train(data, tmp_path / "out", config)
    assert not (tmp_path / "out").exists()
