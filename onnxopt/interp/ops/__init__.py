"""Kernel modules, one per op family; importing this package registers every kernel."""

import importlib

from onnxopt.interp.ops import control_flow, elementwise, resize, tensor  # noqa: F401

# Numeric kernels written in parallel (part B); plain imports once they all exist.
for _name in ("nn", "linalg", "reduce", "quant"):
    try:
        importlib.import_module(f"onnxopt.interp.ops.{_name}")
    except ImportError as _e:  # pragma: no cover - only while a module is missing
        if _e.name != f"onnxopt.interp.ops.{_name}":
            raise
