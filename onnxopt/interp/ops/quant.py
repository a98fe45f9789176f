"""Quantization kernels, bit-exact to the ONNX spec: round half to even, saturation, int32 accumulation.

QuantizeLinear / DequantizeLinear cover opsets 10 through 25 with one kernel each: per-tensor, per-axis and
blocked (``block_size``) scales; int8, uint8, int16, uint16, int32 (dequantize), int4/uint4/int2/uint2 and the
float8/float4 types as the ``ml_dtypes`` numpy dtypes that ``onnx.numpy_helper`` uses for them.
Integer convolutions and matmuls accumulate exactly: the products of 8/16-bit integers are summed in float64
through BLAS (exact below 2**53), then wrapped to int32.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx import helper

from onnxopt.interp.ops import _nn_jit as J
from onnxopt.interp.ops.nn import conv_core, conv_geometry
from onnxopt.interp.registry import kernel

_F8 = {np.dtype(t) for t in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2,
                              ml_dtypes.float8_e5m2fnuz, ml_dtypes.float4_e2m1fn)}


def qrange(dtype) -> tuple[int, int]:
    """(min, max) of an integer quantized dtype, the 4- and 2-bit ml_dtypes ones included."""
    info = ml_dtypes.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def _bcast(p, x, axis, block_size):
    p = np.asarray(p)
    if block_size and block_size > 0:
        axis = axis % x.ndim
        full = np.repeat(p, block_size, axis=axis)
        return np.take(full, np.arange(x.shape[axis]), axis=axis)
    if p.size == 1:
        return p.reshape(())
    if p.ndim == 1:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        return p.reshape(shape)
    return p


def _out_dtype(zp, output_dtype):
    if zp is not None:
        return zp.dtype
    if output_dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(output_dtype))
    return np.dtype(np.uint8)


def _to_int(v, dtype):
    """float array of already rounded values -> saturated ``dtype``."""
    lo, hi = qrange(dtype)
    v = np.clip(v, lo, hi)
    if np.dtype(dtype).itemsize == 1 and np.dtype(dtype).name in ("int4", "uint4", "int2", "uint2"):
        base = np.int8 if lo < 0 else np.uint8
        return v.astype(base).astype(dtype)
    return v.astype(dtype)


@kernel("QuantizeLinear", since=10)
def QuantizeLinear(x, y_scale, y_zero_point=None, *, axis=1, saturate=1, block_size=0, output_dtype=0, precision=0):
    dt = _out_dtype(y_zero_point, output_dtype)
    xf = x.astype(np.float32, copy=False)
    s = _bcast(y_scale, x, axis, block_size).astype(np.float32)
    q = xf / s
    if dt in _F8:
        if y_zero_point is not None:
            q = q + _bcast(y_zero_point, x, axis, block_size).astype(np.float32)
        if saturate:
            fmax = float(ml_dtypes.finfo(dt).max)
            q = np.clip(q, -fmax, fmax)
        return q.astype(dt)
    q = np.rint(q)
    if y_zero_point is not None:
        q = q + _bcast(y_zero_point, x, axis, block_size).astype(np.float32)
    return _to_int(q, dt)


@kernel("DequantizeLinear", since=10)
def DequantizeLinear(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    s = _bcast(x_scale, x, axis, block_size)
    if x.dtype in _F8:
        v = x.astype(np.float32)
        if x_zero_point is not None:
            v = v - _bcast(x_zero_point, x, axis, block_size).astype(np.float32)
    else:
        v = x.astype(np.int64)
        if x_zero_point is not None:
            v = v - _bcast(x_zero_point, x, axis, block_size).astype(np.int64)
        v = v.astype(np.float32)
    y = v * s.astype(np.float32)
    out = np.dtype(helper.tensor_dtype_to_np_dtype(output_dtype)) if output_dtype else np.asarray(x_scale).dtype
    return y.astype(out)


@kernel("DynamicQuantizeLinear", since=11)
def DynamicQuantizeLinear(x):
    xf = x.astype(np.float32, copy=False)
    lo = np.float32(min(0.0, float(xf.min()) if xf.size else 0.0))
    hi = np.float32(max(0.0, float(xf.max()) if xf.size else 0.0))
    scale = np.float32((hi - lo) / np.float32(255))
    if scale == 0:
        return np.zeros(x.shape, np.uint8), np.array(scale, np.float32), np.array(0, np.uint8)
    zp = np.clip(np.rint(np.float32(0) - lo / scale), 0, 255)
    y = np.clip(np.rint(xf / scale) + zp, 0, 255).astype(np.uint8)
    return y, np.array(scale, np.float32), np.array(zp, np.uint8)


def _centered(v, zp, axis_len=None, axis=0):
    """int values minus zero point (per tensor, or per index of ``axis``) as float64 (exact)."""
    v = v.astype(np.float64)
    if zp is None:
        return v
    z = np.asarray(zp).astype(np.float64)
    if z.size == 1:
        return v - z.reshape(())
    shape = [1] * v.ndim
    shape[axis] = -1
    return v - z.reshape(shape)


def _int_conv(x, w, x_zp, w_zp, group, auto_pad, dilations, pads, strides):
    xc = _centered(x, x_zp)
    wc = _centered(w, w_zp, axis=0)
    pb, pe, out, s, d = conv_geometry(x.shape[2:], list(w.shape[2:]), strides, dilations, pads, auto_pad)
    acc = conv_core(xc, wc, group, pb, pe, out, s, d)
    return np.rint(acc).astype(np.int64).astype(np.int32)


@kernel("ConvInteger", since=10)
def ConvInteger(x, w, x_zero_point=None, w_zero_point=None, *, auto_pad="NOTSET", dilations=None, group=1,
                kernel_shape=None, pads=None, strides=None):
    return _int_conv(x, w, x_zero_point, w_zero_point, group, auto_pad, dilations, pads, strides)


def _requant(acc, mult, zp, dtype, axis):
    """acc int (any shape), ``mult``/``zp`` per tensor or per index of ``axis`` -> dtype (jitted core)."""
    lo, hi = qrange(dtype)
    shape = acc.shape
    a = np.moveaxis(acc, axis, 0)
    moved = a.shape
    a2 = np.ascontiguousarray(a.reshape(moved[0], -1))
    m = np.broadcast_to(np.asarray(mult, np.float32).reshape(-1), (moved[0],)).copy()
    z = np.broadcast_to(np.asarray(zp, np.float64).reshape(-1), (moved[0],)).copy()
    y = J.requantize(a2, m, z, float(lo), float(hi)).reshape(moved)
    return np.moveaxis(y, 0, axis).reshape(shape).astype(dtype)


def _mult(a_scale, b_scale, y_scale):
    a = np.asarray(a_scale, np.float32).reshape(-1)
    b = np.asarray(b_scale, np.float32).reshape(-1)
    return (a * b) / np.asarray(y_scale, np.float32).reshape(-1)


@kernel("QLinearConv", since=10)
def QLinearConv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B=None, *,
                auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    acc = _int_conv(x, w, x_zero_point, w_zero_point, group, auto_pad, dilations, pads, strides)
    if B is not None:
        acc = acc + B.astype(np.int32).reshape((1, -1) + (1,) * (x.ndim - 2))
    return _requant(acc, _mult(x_scale, w_scale, y_scale), y_zero_point, np.asarray(y_zero_point).dtype, 1)


def _int_matmul(a, b, a_zp, b_zp):
    ac = _centered(a, a_zp, axis=a.ndim - 2) if a.ndim >= 2 else _centered(a, a_zp)
    bc = _centered(b, b_zp, axis=b.ndim - 1)
    return np.rint(np.matmul(ac, bc)).astype(np.int64).astype(np.int32)


@kernel("MatMulInteger", since=10)
def MatMulInteger(A, B, a_zero_point=None, b_zero_point=None):
    return _int_matmul(A, B, a_zero_point, b_zero_point)


@kernel("QLinearMatMul", since=10)
def QLinearMatMul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    acc = _int_matmul(a, b, a_zero_point, b_zero_point)
    m = _mult(a_scale, b_scale, y_scale)
    if np.asarray(a_scale).size > 1 and m.size > 1 and np.asarray(b_scale).size == 1:
        axis = acc.ndim - 2  # per-row
    else:
        axis = acc.ndim - 1  # per-column (or per tensor)
    return _requant(acc, m, y_zero_point, np.asarray(y_zero_point).dtype, axis)
