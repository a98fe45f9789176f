"""Model zoo for tests and benchmarks: synthetic builders (`zoo`), pinned real models (`fetch`) and labelled
data for them (`datasets`, needs Pillow).

Names are imported lazily so that ``python -m onnxopt.models.zoo`` / ``.fetch`` run their module once, not twice.
``onnxopt.models.fetch`` is the fetcher module; call ``onnxopt.models.fetch.fetch(name)``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ZOO": "zoo", "build": "zoo", "sample_inputs": "zoo",
    "PINS": "fetch", "FILES": "fetch", "fetch_file": "fetch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
