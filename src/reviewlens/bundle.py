"""ModelBundle: a trained system as one directory.

```
bundle/
  reviewlens.json   schema, thresholds, clause weight, templates, base model, versions, data hash, metrics
  keyword/          the keyword classifier and its tokenizer
  sentiment/        the sentiment classifier and its tokenizer
```
Writes are atomic: the bundle is written next to its destination and renamed into place.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import shutil
import sys
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
    clause_weight: float = 0.0
    """How much a keyword's level listens to its own clause rather than the whole review (see
    ``reviewlens.clause_sentiment``); 0 reads the whole review only."""
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
        recover(path)
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise ModelError(f"{path}: not a reviewlens bundle ({MANIFEST} is missing). Train one with "
                             "`reviewlens train` or pass the directory that holds reviewlens.json.")
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelError(f"{manifest}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, path=path)

    def check_heads(self) -> None:
        """Raise ModelError when a model's outputs (``head.json`` labels) differ from the manifest's schema."""
        expected = {"keyword": list(self.schema.keywords), "sentiment": self.schema.level_names()}
        for sub, labels in expected.items():
            head_file = self.path / sub / "head.json" if self.path else None
            if head_file is None or not head_file.is_file():
                continue
            try:
                head = json.loads(head_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ModelError(f"{head_file}: not valid JSON ({exc})") from exc
            found = [str(x) for x in head.get("labels") or []]
            if found and found != labels:
                raise ModelError(
                    f"bundle {self.path}: the {sub} model predicts {len(found)} labels {found[:6]}... but "
                    f"reviewlens.json lists {len(labels)} {labels[:6]}...; the manifest belongs to another model. "
                    "Use the manifest that was saved with these weights (or retrain).")

    def save(self, path: str | Path, writers: Mapping[str, Callable[[Path], None]]) -> Path:
        """Write the manifest and each ``writers[subdir](dir)`` into ``path``, atomically."""
        path = Path(path)
        tmp = staging_dir(path)
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


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def staging_dir(dest: Path) -> Path:
    """A fresh hidden directory beside ``dest`` to build its replacement in; stale ones of dead writers go."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover(dest)
    for stale in dest.parent.glob(f".{dest.name}.*.tmp"):
        pid = stale.name[len(dest.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a bundle is meant to be read by others
    return tmp


def recover(dest: Path) -> None:
    """Put back ``dest`` when a writer was killed between the two renames of the non-atomic fallback."""
    old = None if dest.exists() else next(iter(sorted(dest.parent.glob(f".{dest.name}.old-*"))), None)
    if old is not None:
        os.replace(old, dest)


def replace_dir(new: Path, dest: Path) -> None:
    """Move the complete directory ``new`` to ``dest``.

    An existing ``dest`` is exchanged with ``new`` in one atomic step where the OS can (Linux), so a reader or
    a crash sees the old bundle or the new one, never none. Elsewhere two renames are used, and a crash between
    them is repaired by ``recover`` on the next load or save.
    """
    if dest.exists():
        if _exchange(new, dest):
            shutil.rmtree(new, ignore_errors=True)  # now holds the old bundle
            return
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
