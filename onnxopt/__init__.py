"""onnxopt: an ONNX graph-rewriting compiler for deployment.

``onnxopt.optimize(model, target=..., calibration=..., budget=..., output=..., **options) -> OptimizeResult`` is the
library's entry point (``onnxopt.api``); the typed option classes live in ``onnxopt.options``. Both are imported
on first use, so ``import onnxopt`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "optimize": "onnxopt.api",
    "OptimizeResult": "onnxopt.api",
    "OptimizeOptions": "onnxopt.options",
    "CalibrationOptions": "onnxopt.options",
    "QuantizationOptions": "onnxopt.options",
    "PruningOptions": "onnxopt.options",
    "RecoveryOptions": "onnxopt.options",
    "VerificationOptions": "onnxopt.options",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxopt' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
