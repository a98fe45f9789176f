"""Assorted kernels: CumProd, ReverseSequence and Det."""

from __future__ import annotations

import numpy as np

from onnxopt.interp.registry import kernel


def _axis_of(axis: np.ndarray, rank: int) -> int:
    a = np.asarray(axis).reshape(-1)
    if a.size != 1:
        raise ValueError(f"axis must hold one value, got shape {np.shape(axis)}")
    return int(a[0]) % max(rank, 1)


@kernel("CumProd", since=26)
def CumProd(x, axis, *, exclusive=0, reverse=0):
    ax = _axis_of(axis, x.ndim)
    if reverse:
        x = np.flip(x, axis=ax)
    if exclusive:
        res = np.ones_like(x)
        head = [slice(None)] * x.ndim
        tail = [slice(None)] * x.ndim
        head[ax], tail[ax] = slice(0, -1), slice(1, None)
        np.cumprod(x[tuple(head)], axis=ax, dtype=x.dtype, out=res[tuple(tail)])
    else:
        res = np.cumprod(x, axis=ax, dtype=x.dtype)
    if reverse:
        res = np.flip(res, axis=ax)
    return np.ascontiguousarray(res)


@kernel("ReverseSequence", since=10)
def ReverseSequence(data, sequence_lens, *, batch_axis=1, time_axis=0):
    d = np.moveaxis(data, (batch_axis, time_axis), (0, 1))
    B, T = d.shape[:2]
    lens = np.asarray(sequence_lens, dtype=np.int64).reshape(-1)
    if lens.shape[0] != B or (lens < 0).any() or (lens > T).any():
        raise ValueError(f"sequence_lens {lens.tolist()} must hold {B} lengths in [0, {T}]")
    t = np.arange(T)[None, :]
    src = np.where(t < lens[:, None], lens[:, None] - 1 - t, t)
    out = d[np.arange(B)[:, None], src]
    return np.ascontiguousarray(np.moveaxis(out, (0, 1), (batch_axis, time_axis)))


@kernel("Det", since=11)
def Det(X):
    x = X if X.dtype in (np.float32, np.float64) else X.astype(np.float32)
    return np.asarray(np.linalg.det(x)).astype(X.dtype)
