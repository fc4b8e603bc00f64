"""ModelBundle: a trained system as one directory.

```
bundle/
  reviewlens.json   schema, thresholds, templates, base model, versions, data hash, metrics
  keyword/          the keyword classifier and its tokenizer
  sentiment/        the sentiment classifier and its tokenizer
```
Writes are atomic: the bundle is written next to its destination and renamed into place.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import ModelError
from .schema import LabelSchema
from .tasks import TEMPLATES

MANIFEST = "reviewlens.json"
FORMAT_VERSION = 1
DEFAULT_BUNDLE = Path(os.environ.get("REVIEWLENS_DEFAULT_BUNDLE",
                                     Path(__file__).resolve().parents[2] / "models" / "default"))
"""The bundled default model (a checkout's ``models/default``, or ``$REVIEWLENS_DEFAULT_BUNDLE``), used when a
command gets no ``--model``."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries a bundle depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("reviewlens", "torch", "transformers", "tokenizers", "peft", "onnxruntime"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


@dataclass
class ModelBundle:
    """Everything about a trained system except the weights, plus where they are."""

    schema: LabelSchema
    thresholds: dict[str, float] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=lambda: dict(TEMPLATES))
    base_model: str = ""
    kind: str = "classifier"
    backend: str = "torch"
    metrics: dict = field(default_factory=dict)
    data_hash: str = ""
    versions: dict[str, str] = field(default_factory=library_versions)
    config: dict = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    path: Path | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("path")
        data["schema"] = self.schema.to_dict()
        return {"format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: Mapping, path: Path | None = None) -> "ModelBundle":
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ModelError(f"{path}: bundle format {version} is newer than this reviewlens reads ({FORMAT_VERSION})")
        known = {f for f in cls.__dataclass_fields__ if f != "path"}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["schema"] = LabelSchema.from_dict(data["schema"])
        return cls(**kwargs, path=path)

    @classmethod
    def load(cls, path: str | Path) -> "ModelBundle":
        """Read a bundle's manifest (the weights load lazily, through the analyzer)."""
        path = Path(path)
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise ModelError(f"{path}: not a reviewlens bundle ({MANIFEST} is missing). Train one with "
                             "`reviewlens train` or pass the directory that holds reviewlens.json.")
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelError(f"{manifest}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, path=path)

    def save(self, path: str | Path, writers: Mapping[str, Callable[[Path], None]]) -> Path:
        """Write the manifest and each ``writers[subdir](dir)`` into ``path``, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a bundle is meant to be read by others
        try:
            for sub, write in writers.items():
                (tmp / sub).mkdir(parents=True, exist_ok=True)
                write(tmp / sub)
            (tmp / MANIFEST).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2), encoding="utf-8")
            replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = path
        return path

    def write_manifest(self) -> None:
        """Rewrite reviewlens.json of a saved bundle (after adding metrics, say), atomically."""
        from .data import atomic_write_text

        if self.path is None:
            raise ModelError("this bundle has not been saved yet")
        atomic_write_text(self.path / MANIFEST, json.dumps(self.to_dict(), ensure_ascii=False, indent=2))

    def push_to_hub(self, repo_id: str, *, private: bool = True, token: str | None = None,
                    commit_message: str = "Upload reviewlens bundle") -> str:
        """Upload the bundle directory to the Hugging Face Hub; returns the commit URL."""
        from huggingface_hub import HfApi

        if self.path is None:
            raise ModelError("save the bundle before pushing it")
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(self.path), repo_id=repo_id, commit_message=commit_message)
        return str(getattr(info, "commit_url", info))


def replace_dir(new: Path, dest: Path) -> None:
    """Move ``new`` to ``dest``; an existing ``dest`` is swapped out only once ``new`` is complete."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        try:
            os.replace(new, dest)
        except BaseException:
            os.replace(old, dest)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dest)


def resolve_bundle_path(path: str | Path | None) -> Path:
    """The given bundle path, or the default bundle when none is given."""
    if path is None:
        if not (DEFAULT_BUNDLE / MANIFEST).is_file():
            raise ModelError(f"no --model given and the default bundle is missing at {DEFAULT_BUNDLE}; "
                             "train one with `reviewlens train` and pass --model DIR")
        return DEFAULT_BUNDLE
    return Path(path)
