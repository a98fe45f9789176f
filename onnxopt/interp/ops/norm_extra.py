"""Normalizations beyond nn.py: RMSNormalization, LpNormalization and MeanVarianceNormalization.

Reductions run in float32 for narrow float types (float16, bfloat16) and in the input's own type otherwise,
as LayerNormalization in :mod:`onnxopt.interp.ops.nn` does; results are cast back to the input's dtype.
"""

from __future__ import annotations

import numpy as np

from onnxopt.interp.registry import kernel


def _wide(x: np.ndarray) -> np.ndarray:
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


@kernel("RMSNormalization", since=23)
def RMSNormalization(X, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    axis = axis % X.ndim
    ax = tuple(range(axis, X.ndim))
    xf = X.astype(np.float32) if stash_type == 1 and X.dtype != np.float64 else _wide(X)
    ms = np.mean(xf * xf, axis=ax, keepdims=True)
    normalized = (xf / np.sqrt(ms + np.asarray(epsilon, dtype=xf.dtype))).astype(X.dtype)
    return (_wide(normalized) * _wide(scale)).astype(X.dtype)


@kernel("LpNormalization", since=1)
def LpNormalization(X, *, axis=-1, p=2):
    if p not in (1, 2):
        raise ValueError(f"LpNormalization supports p=1 or p=2, got p={p}")
    x = _wide(X)
    if p == 1:
        norm = np.abs(x).sum(axis=axis, keepdims=True)
    else:
        norm = np.sqrt((x * x).sum(axis=axis, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(norm == 0, np.zeros((), x.dtype), x / norm)
    return y.astype(X.dtype)


@kernel("MeanVarianceNormalization", since=9)
def MeanVarianceNormalization(X, *, axes=(0, 2, 3)):
    # the spec's function body: (X - E[X]) / (sqrt(E[X^2] - E[X]^2) + 1e-9)
    x = _wide(X)
    ax = tuple(int(a) for a in axes)
    mean = x.mean(axis=ax, keepdims=True)
    var = np.maximum((x * x).mean(axis=ax, keepdims=True) - mean * mean, 0)  # rounding can dip below 0
    y = (x - mean) / (np.sqrt(var) + np.asarray(1e-9, dtype=x.dtype))
    return y.astype(X.dtype)
