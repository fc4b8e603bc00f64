"""Which torch device inference runs on.

Training picks the GPU by itself (``Trainer``); inference (``analyze``, ``evaluate``, ``select``, ``audit``,
the offline-base embeddings) goes through ``resolve_device``, so "auto" means the same thing everywhere.
"""

from __future__ import annotations

from .errors import ReviewlensError

AUTO = "auto"


def resolve_device(device: str | None = AUTO) -> str:
    """"auto" (or None): "cuda" when torch sees a GPU, else "cpu". Any other torch device string is checked:
    asking for CUDA on a machine without it is an error that says so, not a crash deep inside a model call."""
    import torch

    name = (device or AUTO).strip().lower()
    if name == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ReviewlensError(f"device {device!r} is not a torch device (auto, cpu, cuda, cuda:1, mps)") from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ReviewlensError(f"device {device!r}: torch sees no CUDA GPU here (use --device cpu or auto)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ReviewlensError(f"device {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ReviewlensError(f"device {device!r}: torch sees no Apple GPU (MPS) here")
    return str(parsed)
