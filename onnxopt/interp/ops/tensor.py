"""Shape and data-movement kernels: reshape, slicing, gathers and scatters, casts, padding, resize, ..."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxopt.interp.registry import kernel


def _ints(a) -> list[int]:
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ---------------------------------------------------------------- constants and casts


@kernel("Constant", since=1)
def Constant(value=None, value_float=None, value_floats=None, value_int=None, value_ints=None, value_string=None,
             value_strings=None, sparse_value=None):
    if value is not None:
        return value
    if sparse_value is not None:
        return sparse_value
    if value_float is not None:
        return np.array(value_float, dtype=np.float32)
    if value_floats is not None:
        return np.array(value_floats, dtype=np.float32)
    if value_int is not None:
        return np.array(value_int, dtype=np.int64)
    if value_ints is not None:
        return np.array(value_ints, dtype=np.int64)
    if value_string is not None:
        return np.array(value_string, dtype=object)
    if value_strings is not None:
        return np.array(value_strings, dtype=object)
    raise ValueError("Constant node has no value attribute")


@kernel("ConstantOfShape", since=9)
def ConstantOfShape(shape, value=None):
    v = np.zeros(1, dtype=np.float32) if value is None else value
    return np.full(tuple(_ints(shape)), v.reshape(-1)[0], dtype=v.dtype)


_FLOAT8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ, onnx.TensorProto.FLOAT8E5M2,
           onnx.TensorProto.FLOAT8E5M2FNUZ}


def _cast(x: np.ndarray, to: int, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    if to == onnx.TensorProto.STRING:
        if x.dtype.kind == "f":
            return np.array([str(np.float32(v)) if x.dtype == np.float32 else str(v) for v in x.reshape(-1)],
                            dtype=object).reshape(x.shape)
        return x.astype(np.str_).astype(object)
    dtype = helper.tensor_dtype_to_np_dtype(to)
    if x.dtype == object:  # strings to numbers
        return np.array([float(v) for v in x.reshape(-1)]).astype(dtype).reshape(x.shape)
    if to in _FLOAT8 and saturate:
        return numpy_helper.saturate_cast(x, dtype)
    if to == getattr(onnx.TensorProto, "FLOAT8E8M0", -1):
        return numpy_helper.to_float8e8m0(x, saturate, round_mode).astype(dtype)
    return x.astype(dtype, copy=False)


@kernel("Cast", since=1)
def Cast(x, to, saturate=1, round_mode="up"):
    return _cast(x, to, saturate, round_mode)


@kernel("CastLike", since=15)
def CastLike(x, target_type, saturate=1, round_mode="up"):
    to = helper.np_dtype_to_tensor_dtype(target_type.dtype) if target_type.dtype != object else onnx.TensorProto.STRING
    return _cast(x, to, saturate, round_mode)


@kernel("Identity", since=1)
def Identity(x):
    return x


@kernel("Dropout", since=1)
def Dropout(data, ratio=None, training_mode=None, seed=None, is_test=None):
    if isinstance(ratio, np.ndarray):
        ratio = float(ratio)
    train = training_mode is not None and bool(training_mode)
    if not train or not ratio:
        return data, np.ones(data.shape, dtype=bool)
    mask = np.random.RandomState(seed).uniform(0, 1.0, data.shape) >= ratio
    return (mask * data / (1 - ratio)).astype(data.dtype), mask


@kernel("Dropout", since=12)
def Dropout_12(data, ratio=None, training_mode=None, seed=None):
    return Dropout(data, 0.5 if ratio is None else ratio, training_mode, seed)


# ---------------------------------------------------------------- shapes


@kernel("Shape", since=1)
def Shape(data, start=0, end=None):
    return np.array(data.shape[start:end], dtype=np.int64)


@kernel("Size", since=1)
def Size(data):
    return np.array(data.size, dtype=np.int64)


@kernel("Reshape", since=1)
def Reshape_1(data, shape=()):
    return Reshape(data, np.array(shape, dtype=np.int64))


@kernel("Reshape", since=5)
def Reshape(data, shape, allowzero=0):
    new = _ints(shape)
    if not allowzero:
        new = [data.shape[i] if d == 0 else d for i, d in enumerate(new)]
    return data.reshape(new)


@kernel("Flatten", since=1)
def Flatten(x, axis=1):
    axis = _axis(axis, x.ndim)
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@kernel("Transpose", since=1)
def Transpose(data, perm=None):
    return np.transpose(data, perm)


@kernel("Squeeze", since=1)
def Squeeze_1(data, axes=None):
    return Squeeze(data, None if axes is None else np.array(axes))


@kernel("Squeeze", since=13)
def Squeeze(data, axes=None):
    if axes is None:
        return np.squeeze(data)
    return np.squeeze(data, axis=tuple(_axis(a, data.ndim) for a in _ints(axes)))


@kernel("Unsqueeze", since=1)
def Unsqueeze_1(data, axes=()):
    return Unsqueeze(data, np.array(axes))


@kernel("Unsqueeze", since=13)
def Unsqueeze(data, axes):
    rank = data.ndim + len(_ints(axes))
    shape = list(data.shape)
    for a in sorted(_axis(a, rank) for a in _ints(axes)):
        shape.insert(a, 1)
    return data.reshape(shape)


@kernel("Expand", since=8)
def Expand(x, shape):
    return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(shape)))).copy()


@kernel("Tile", since=6)
def Tile(x, repeats):
    return np.tile(x, _ints(repeats))


@kernel("Concat", since=1)
def Concat(*inputs, axis=1):
    return np.concatenate(inputs, axis=axis)


def _split_sizes(dim: int, split, n: int, num_outputs=None) -> list[int]:
    if split is not None and len(_ints(split)):
        return _ints(split)
    if num_outputs is not None:
        size = -(-dim // num_outputs)
        return [min(size, dim - i * size) for i in range(num_outputs)]
    return [dim // n] * n


def _split(x, sizes, axis):
    cuts = np.cumsum(sizes)[:-1]
    return tuple(np.split(x, cuts, axis=axis))


@kernel("Split", since=1, context=True)
def Split_1(ctx, x, split_in=None, axis=0, split=None):
    return _split(x, _split_sizes(x.shape[axis], split if split_in is None else split_in, len(ctx.node.output)), axis)


@kernel("Split", since=13, context=True)
def Split(ctx, x, split=None, axis=0, num_outputs=None):
    return _split(x, _split_sizes(x.shape[axis], split, len(ctx.node.output), num_outputs), axis)


@kernel("Slice", since=1)
def Slice_1(data, axes=None, ends=(), starts=()):
    return Slice(data, np.array(starts), np.array(ends), None if axes is None else np.array(axes))


@kernel("Slice", since=10)
def Slice(data, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else [_axis(a, data.ndim) for a in _ints(axes)]
    steps = [1] * len(starts) if steps is None else _ints(steps)
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
        index[a] = slice(s, e, st)
    return data[tuple(index)]


@kernel("Pad", since=2)
def Pad_2(data, mode="constant", pads=(), value=0.0):
    return Pad(data, np.array(pads), np.array(value, dtype=data.dtype), None, mode=mode)


@kernel("Pad", since=11)
def Pad(data, pads, constant_value=None, axes=None, mode="constant"):
    rank = data.ndim
    axes = list(range(rank)) if axes is None else [_axis(a, rank) for a in _ints(axes)]
    p = _ints(pads)
    n = len(axes)
    width = [[0, 0] for _ in range(rank)]
    for i, a in enumerate(axes):
        width[a] = [p[i], p[i + n]]
    crop = tuple(slice(-b if b < 0 else 0, (data.shape[k] + e) if e < 0 else None) for k, (b, e) in enumerate(width))
    data = data[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in width]
    if mode == "constant":
        cv = 0 if constant_value is None or constant_value.size == 0 else constant_value.reshape(-1)[0]
        return np.pad(data, width, mode="constant", constant_values=cv)
    return np.pad(data, width, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])


@kernel("Range", since=11)
def Range(start, limit, delta):
    s, lim, d = (v.reshape(-1)[0] for v in (start, limit, delta))
    return np.arange(s, lim, d).astype(start.dtype, copy=False)


@kernel("EyeLike", since=9)
def EyeLike(x, dtype=None, k=0):
    dt = x.dtype if dtype is None else helper.tensor_dtype_to_np_dtype(dtype)
    return np.eye(x.shape[0], x.shape[1], k=k, dtype=dt)


@kernel("Trilu", since=14)
def Trilu(x, k=None, upper=1):
    kk = 0 if k is None else int(k)
    return np.triu(x, kk) if upper else np.tril(x, kk)


# ---------------------------------------------------------------- gathers and scatters


@kernel("Gather", since=1)
def Gather(data, indices, axis=0):
    return np.take(data, indices.astype(np.int64, copy=False), axis=axis)


def _norm_idx(indices: np.ndarray, dim) -> np.ndarray:
    indices = indices.astype(np.int64, copy=False)
    return np.where(indices < 0, indices + dim, indices)


@kernel("GatherElements", since=11)
def GatherElements(data, indices, axis=0):
    axis = _axis(axis, data.ndim)
    return np.take_along_axis(data, _norm_idx(indices, data.shape[axis]), axis=axis)


@kernel("GatherND", since=11)
def GatherND(data, indices, batch_dims=0):
    indices = indices.astype(np.int64, copy=False)
    b = batch_dims
    batch_shape = data.shape[:b]
    nb = math.prod(batch_shape)
    k = indices.shape[-1]
    d = data.reshape((nb,) + data.shape[b:])
    idx = indices.reshape((nb, -1, k))
    idx = np.where(idx < 0, idx + np.array(data.shape[b:b + k]), idx)
    out = [d[i][tuple(idx[i].T)] for i in range(nb)]
    res = np.stack(out) if out else np.empty((0,) + data.shape[b + k:], data.dtype)
    return res.reshape(indices.shape[:-1] + data.shape[b + k:])


_REDUCE = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


@kernel("ScatterND", since=11)
def ScatterND(data, indices, updates, reduction="none"):
    out = data.copy()
    k = indices.shape[-1]
    idx = _norm_idx(indices, np.array(data.shape[:k])).reshape(-1, k)
    upd = updates.reshape((idx.shape[0],) + data.shape[k:])
    if reduction == "none":
        for i in range(idx.shape[0]):
            out[tuple(idx[i])] = upd[i]
    else:
        _REDUCE[reduction].at(out, tuple(idx.T), upd)
    return out


@kernel("ScatterElements", since=11)
def ScatterElements(data, indices, updates, axis=0, reduction="none"):
    axis = _axis(axis, data.ndim)
    out = data.copy()
    idx = list(np.indices(indices.shape, sparse=True))
    idx[axis] = _norm_idx(indices, data.shape[axis])
    idx = tuple(idx)
    if reduction == "none":
        out[idx] = updates
    else:
        _REDUCE[reduction].at(out, idx, updates)
    return out


@kernel("Scatter", since=9)
def Scatter(data, indices, updates, axis=0):
    return ScatterElements(data, indices, updates, axis=axis)


@kernel("Compress", since=9)
def Compress(x, condition, axis=None):
    return np.compress(condition.astype(bool), x, axis=axis)


@kernel("NonZero", since=9)
def NonZero(x):
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


@kernel("TopK", since=1)
def TopK_1(x, axis=-1, k=1):
    return TopK(x, np.array([k]), axis=axis)


@kernel("TopK", since=10)
def TopK(x, k, axis=-1, largest=1, sorted=1):  # noqa: A002 - spec attribute name
    kk = _ints(k)[0]
    key = x.astype(np.int64) if x.dtype.kind == "u" and x.dtype.itemsize < 8 else x
    if largest:
        key = -key.astype(np.float64) if key.dtype.kind == "u" else -key
    order = np.argsort(key, axis=axis, kind="stable")
    idx = np.take(order, np.arange(kk), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


@kernel("OneHot", since=9)
def OneHot(indices, depth, values, axis=-1):
    d = int(np.asarray(depth).reshape(-1)[0])
    ind = np.asarray(indices).astype(np.int64)
    ind = np.where(ind < 0, ind + d, ind)
    rank = ind.ndim + 1
    axis = _axis(axis, rank)
    hot = np.expand_dims(ind, axis) == np.arange(d).reshape([d if i == axis else 1 for i in range(rank)])
    return np.where(hot, values[1], values[0]).astype(values.dtype)


@kernel("Unique", since=11)
def Unique(x, axis=None, sorted=1):  # noqa: A002 - spec attribute name
    y, idx, inv, cnt = np.unique(x, return_index=True, return_inverse=True, return_counts=True, axis=axis)
    inv = inv.reshape(-1)
    if not sorted:
        order = np.argsort(idx, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        y = np.take(y, order, axis=0 if axis is None else axis)
        idx, cnt, inv = idx[order], cnt[order], rank[inv]
    return y, idx.astype(np.int64), inv.astype(np.int64), cnt.astype(np.int64)


# ---------------------------------------------------------------- depth/space


@kernel("DepthToSpace", since=1)
def DepthToSpace(x, blocksize, mode="DCR"):
    n, c, h, w = x.shape
    b = blocksize
    if mode == "DCR":
        t = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(n, c // (b * b), h * b, w * b)


@kernel("SpaceToDepth", since=1)
def SpaceToDepth(x, blocksize, mode="DCR"):
    n, c, h, w = x.shape
    b = blocksize
    t = x.reshape(n, c, h // b, b, w // b, b)
    t = t.transpose(0, 3, 5, 1, 2, 4) if mode == "DCR" else t.transpose(0, 1, 3, 5, 2, 4)
    return t.reshape(n, c * b * b, h // b, w // b)

