"""Reductions, ArgMax/ArgMin, CumSum and the softmax family.

Reductions take ``axes`` as an attribute before opset 18 (ReduceSum: 13) and as an optional input after.
Softmax/LogSoftmax/Hardmax before opset 13 coerce the input to 2-D at ``axis``; from 13 on they act on one axis.
"""

from __future__ import annotations

import numpy as np

from onnxopt.interp.registry import kernel


def _axes(data, axes, noop_with_empty_axes):
    if axes is None or len(np.atleast_1d(axes)) == 0:
        return None if not noop_with_empty_axes else ()
    return tuple(int(a) % max(data.ndim, 1) for a in np.atleast_1d(axes))


def _identity(op, dtype):
    if op == "max":
        return -np.inf if np.issubdtype(dtype, np.floating) else (
            np.iinfo(dtype).min if np.issubdtype(dtype, np.integer) else False)
    if op == "min":
        return np.inf if np.issubdtype(dtype, np.floating) else (
            np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else True)
    return None


def _reduce(op, data, axes, keepdims, noop):
    ax = _axes(data, axes, noop)
    if ax == ():
        return data
    kd = bool(keepdims)
    x = data
    if op == "sum":
        r = np.sum(x, axis=ax, keepdims=kd)
    elif op == "mean":
        r = np.mean(x, axis=ax, keepdims=kd)
    elif op in ("max", "min"):
        fn = np.max if op == "max" else np.min
        r = fn(x, axis=ax, keepdims=kd, initial=_identity(op, x.dtype)) if x.size == 0 else fn(x, axis=ax, keepdims=kd)
    elif op == "prod":
        r = np.prod(x, axis=ax, keepdims=kd)
    elif op == "l1":
        r = np.sum(np.abs(x), axis=ax, keepdims=kd)
    elif op == "l2":
        r = np.sqrt(np.sum(np.square(x.astype(np.float64) if x.dtype.kind in "iu" else x), axis=ax, keepdims=kd))
    elif op == "logsum":
        r = np.log(np.sum(x, axis=ax, keepdims=kd))
    elif op == "sumsquare":
        r = np.sum(np.square(x), axis=ax, keepdims=kd)
    elif op == "logsumexp":
        if x.size == 0:
            r = np.log(np.sum(np.exp(x), axis=ax, keepdims=kd))
        else:
            m = np.max(x, axis=ax, keepdims=True)
            m = np.where(np.isfinite(m), m, 0)
            r = np.log(np.sum(np.exp(x - m), axis=ax, keepdims=True)) + m
            if not kd:
                r = np.squeeze(r, axis=ax if ax is not None else None)
    else:  # pragma: no cover
        raise ValueError(op)
    return np.asarray(r).astype(data.dtype, copy=False)


_OPS = {"ReduceSum": ("sum", 13), "ReduceMean": ("mean", 18), "ReduceMax": ("max", 18), "ReduceMin": ("min", 18),
        "ReduceProd": ("prod", 18), "ReduceL1": ("l1", 18), "ReduceL2": ("l2", 18), "ReduceLogSum": ("logsum", 18),
        "ReduceLogSumExp": ("logsumexp", 18), "ReduceSumSquare": ("sumsquare", 18)}


def _make(op_type, op, since_input):
    def with_attr(data, *, axes=None, keepdims=1, noop_with_empty_axes=0):
        return _reduce(op, data, axes, keepdims, noop_with_empty_axes)

    def with_input(data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        return _reduce(op, data, axes, keepdims, noop_with_empty_axes)

    with_attr.__name__ = with_attr.__qualname__ = op_type
    with_input.__name__ = with_input.__qualname__ = op_type
    kernel(op_type, since=1)(with_attr)
    kernel(op_type, since=since_input)(with_input)
    return with_attr, with_input


REDUCE_KERNELS = {name: _make(name, op, since) for name, (op, since) in _OPS.items()}


def _arg(fn, data, axis, keepdims, select_last_index):
    if select_last_index:
        flipped = np.flip(data, axis=axis)
        r = data.shape[axis] - 1 - fn(flipped, axis=axis)
    else:
        r = fn(data, axis=axis)
    if keepdims:
        r = np.expand_dims(r, axis)
    return np.asarray(r, dtype=np.int64)


@kernel("ArgMax", since=1)
def ArgMax(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(np.argmax, data, axis, keepdims, select_last_index)


@kernel("ArgMin", since=1)
def ArgMin(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(np.argmin, data, axis, keepdims, select_last_index)


@kernel("CumSum", since=11)
def CumSum(x, axis, *, exclusive=0, reverse=0):
    ax = int(np.asarray(axis).reshape(-1)[0])
    y = np.flip(x, ax) if reverse else x
    c = np.cumsum(y, axis=ax, dtype=x.dtype)
    if exclusive:
        c = c - y
    return np.ascontiguousarray(np.flip(c, ax) if reverse else c)


def _softmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def _logsoftmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    d = x - m
    return d - np.log(np.sum(np.exp(d), axis=axis, keepdims=True))


def _hardmax(x, axis):
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)
    y = np.zeros_like(x)
    np.put_along_axis(y, idx, 1, axis=axis)
    return y


def _flat2d(fn, x, axis):
    axis = axis % max(x.ndim, 1)
    lead = int(np.prod(x.shape[:axis]))
    return fn(x.reshape(lead, -1), 1).reshape(x.shape)


@kernel("Softmax", since=1)
def Softmax_1(x, *, axis=1):
    return _flat2d(_softmax, x, axis)


@kernel("Softmax", since=13)
def Softmax(x, *, axis=-1):
    return _softmax(x, axis)


@kernel("LogSoftmax", since=1)
def LogSoftmax_1(x, *, axis=1):
    return _flat2d(_logsoftmax, x, axis)


@kernel("LogSoftmax", since=13)
def LogSoftmax(x, *, axis=-1):
    return _logsoftmax(x, axis)


@kernel("Hardmax", since=1)
def Hardmax_1(x, *, axis=1):
    return _flat2d(_hardmax, x, axis)


@kernel("Hardmax", since=13)
def Hardmax(x, *, axis=-1):
    return _hardmax(x, axis)
