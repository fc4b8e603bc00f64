"""Serving: the REST API (``api.py``, FastAPI) and the Streamlit demo (``demo.py``); extra ``reviewlens[serve]``.

Nothing heavy is imported here, so ``import reviewlens.serve`` works without the extra installed.
"""

from __future__ import annotations

__all__ = ["create_app", "launch", "MicroBatcher"]


def __getattr__(name: str):
    if name in ("create_app", "MicroBatcher"):
        from . import api

        return getattr(api, name)
    if name == "launch":
        from .demo import launch

        return launch
    raise AttributeError(name)
