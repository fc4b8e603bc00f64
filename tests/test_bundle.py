"""Bundle layout, atomic writes, manifest round trip and the push_to_hub call."""

import json

import pytest

from reviewlens.bundle import MANIFEST, ModelBundle, replace_dir
from reviewlens.errors import ModelError
from reviewlens.schema import LabelSchema


def _writer(content: str):
    def write(directory):
        (directory / "weights.bin").write_text(content, encoding="utf-8")
    return write


def test_manifest_round_trip(tmp_path):
    bundle = ModelBundle(schema=LabelSchema(["디자인", "배송"], levels=[-1, 0, 1], aliases={"착화감": "디자인"}),
                         thresholds={"디자인": 0.4, "배송": 0.6}, base_model="tiny", data_hash="ab" * 32)
    bundle.save(tmp_path / "b", {"keyword": _writer("k"), "sentiment": _writer("s")})
    loaded = ModelBundle.load(tmp_path / "b")
    assert loaded.schema.keywords == ["디자인", "배송"] and loaded.schema.levels == [-1, 0, 1]
    assert loaded.schema.aliases == {"착화감": "디자인"}
    assert loaded.thresholds == {"디자인": 0.4, "배송": 0.6}
    assert loaded.templates["sentiment"] == "###입력: {review}\n###키워드: {keyword}"
    assert "torch" in loaded.versions and loaded.path == tmp_path / "b"


def test_failed_save_leaves_the_old_bundle_intact(tmp_path):
    dest = tmp_path / "b"
    ModelBundle(schema=LabelSchema(["a"])).save(dest, {"keyword": _writer("old")})

    def broken(directory):
        (directory / "weights.bin").write_text("half", encoding="utf-8")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ModelBundle(schema=LabelSchema(["b"])).save(dest, {"keyword": broken})
    assert (dest / "keyword" / "weights.bin").read_text(encoding="utf-8") == "old"
    assert ModelBundle.load(dest).schema.keywords == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary folder left behind


def test_replace_dir_swaps_complete_directories(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "x").write_text("1")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "y").write_text("2")
    replace_dir(tmp_path / "new", tmp_path / "dest")
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_not_a_bundle_and_bad_json_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="not a reviewlens bundle"):
        ModelBundle.load(tmp_path)
    (tmp_path / MANIFEST).write_text("{", encoding="utf-8")
    with pytest.raises(ModelError, match="not valid JSON"):
        ModelBundle.load(tmp_path)


def test_newer_format_is_refused(tmp_path):
    ModelBundle(schema=LabelSchema(["a"])).save(tmp_path / "b", {})
    data = json.loads((tmp_path / "b" / MANIFEST).read_text(encoding="utf-8"))
    data["format_version"] = 99
    (tmp_path / "b" / MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ModelError, match="newer"):
        ModelBundle.load(tmp_path / "b")


def test_push_to_hub_uploads_the_bundle_folder(tiny_bundle, monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private, exist_ok):
            calls["create"] = (repo_id, private, exist_ok)

        def upload_folder(self, folder_path, repo_id, commit_message):
            from pathlib import Path

            calls["files"] = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
            calls["repo"] = repo_id
            return type("Info", (), {"commit_url": f"https://hf.co/{repo_id}/commit/1"})()

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = ModelBundle.load(tiny_bundle).push_to_hub("me/lens", token="t")
    assert url.endswith("/commit/1") and calls["create"] == ("me/lens", True, True) and calls["repo"] == "me/lens"
    assert "reviewlens.json" in calls["files"]
    assert any(f.startswith("keyword/") and f.endswith("head.json") for f in calls["files"])
    assert any(f.startswith("sentiment/") and f.endswith(".safetensors") for f in calls["files"])
