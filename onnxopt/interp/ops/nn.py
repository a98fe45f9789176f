"""NN kernels: Conv, ConvTranspose, pooling and normalizations.

Conv is im2col (jitted, rank <= 3) + one BLAS matmul per group; depthwise 1-D/2-D conv is a direct jitted loop;
pooling is one jitted loop (rank <= 3). Spatial ranks above 3 use the plain numpy versions in ``_nn_np``.
"""

from __future__ import annotations

import math

import numpy as np

from onnxopt.interp.ops import _nn_jit as J
from onnxopt.interp.ops import _nn_np as P
from onnxopt.interp.registry import kernel


def _same_pads(in_shape, kernel_shape, strides, dilations, auto_pad):
    begin, end = [], []
    for n, k, s, d in zip(in_shape, kernel_shape, strides, dilations, strict=False):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small = total // 2
        if auto_pad == "SAME_UPPER":
            begin.append(small)
            end.append(total - small)
        else:
            begin.append(total - small)
            end.append(small)
    return begin, end


def conv_geometry(in_shape, kernel_shape, strides, dilations, pads, auto_pad):
    """(pads_begin, pads_end, out_shape) of a convolution, following the ONNX spec for ``auto_pad``."""
    nd = len(in_shape)
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pb, pe = _same_pads(in_shape, kernel_shape, strides, dilations, auto_pad)
    elif auto_pad == "VALID":
        pb, pe = [0] * nd, [0] * nd
    else:
        pads = list(pads or [0] * (2 * nd))
        pb, pe = pads[:nd], pads[nd:]
    out = [(n + b + e - ((k - 1) * d + 1)) // s + 1
           for n, b, e, k, s, d in zip(in_shape, pb, pe, kernel_shape, strides, dilations, strict=False)]
    return pb, pe, out, strides, dilations


def _f32(x):
    """Numba and BLAS run float32/float64 only: float16, bfloat16 and friends compute in float32."""
    return x if x.dtype in (np.float32, np.float64) or x.dtype.kind in "iu" else x.astype(np.float32)


def _as3(vals, fill):
    vals = list(vals)
    return [fill] * (3 - len(vals)) + vals


def _im2col(x, kshape, strides, dilations, pb, pe, out):
    """x: (C, *spatial) -> cols; jitted for rank <= 3."""
    nd = len(kshape)
    if nd <= 3:
        x3 = x.reshape((x.shape[0],) + (1,) * (3 - nd) + x.shape[1:])
        k, s, d, p, o = _as3(kshape, 1), _as3(strides, 1), _as3(dilations, 1), _as3(pb, 0), _as3(out, 1)
        return J.im2col3d(np.ascontiguousarray(x3), *k, *s, *d, *p, *o)
    return P.im2col_nd(x, kshape, strides, dilations, pb, pe, out)


def _depthwise(xn, w, bias, pb, out, strides, dilations, y):
    """Depthwise 1-D/2-D conv of one image ``xn`` (C, *sp) into ``y`` (M, *out), bias fused."""
    M, C = w.shape[0], xn.shape[0]
    if len(out) == 1:
        xn, w = xn[:, None, :], w[:, :, None, :]
        pb, out, strides, dilations = [0, pb[0]], [1, out[0]], [1, strides[0]], [1, dilations[0]]
    (kh, kw), (sh, sw), (dh, dw) = w.shape[2:], strides, dilations
    Hq = out[0] + (kh - 1) * dh // sh + 1  # rows and columns past these are never read, but for a spare row
    Wq = out[1] + (kw - 1) * dw // sw
    if sh == sw == 1:  # numpy pads faster at unit stride
        xq = P.pad_phases_np(xn, pb[0], pb[1], 1, 1, Hq, Wq)
    else:
        xq = J.pad_phases(np.ascontiguousarray(xn), pb[0], pb[1], sh, sw, Hq, Wq)
    b = np.zeros(M, y.dtype) if bias is None else np.ascontiguousarray(bias, dtype=y.dtype)
    J.depthwise2d(xq, np.ascontiguousarray(w.reshape(M, kh, kw)), b, M // C, dh, dw, y.reshape(M, *out))


def conv_core(x, w, group, pb, pe, out, strides, dilations, bias=None):
    """Convolution; ``x`` (N, C, *sp) and ``w`` (M, C/group, *k) of the same (numeric) dtype, optional ``bias`` (M,)."""
    N, C = x.shape[:2]
    M = w.shape[0]
    kshape = list(w.shape[2:])
    nd = len(kshape)
    cg, mg = C // group, M // group
    npix = int(np.prod(out))
    y = np.empty((N, M, npix), dtype=np.result_type(x.dtype, w.dtype))
    depthwise = group == C and group > 1 and nd <= 2 and w.shape[1] == 1
    pointwise = all(k == 1 for k in kshape) and not any(pb) and not any(pe) and all(s == 1 for s in strides)
    for n in range(N):
        xn = x[n]
        if depthwise:
            _depthwise(xn, w, bias, pb, out, strides, dilations, y[n])
            continue
        if pointwise:
            cols = xn.reshape(C, -1)
            if cols.shape[1] != npix:  # strided 1x1 without pads
                cols = xn[(slice(None),) + tuple(slice(None, None, s) for s in strides)].reshape(C, -1)
        else:
            cols = _im2col(xn, kshape, strides, dilations, pb, pe, out)
        ksz = cols.shape[0] // C
        for g in range(group):
            wg = w[g * mg:(g + 1) * mg].reshape(mg, -1)
            np.matmul(wg, cols[g * cg * ksz:(g + 1) * cg * ksz], out=y[n, g * mg:(g + 1) * mg])
        if bias is not None:
            y[n] += bias.reshape(-1, 1).astype(y.dtype, copy=False)
    return y.reshape(N, M, *out)


@kernel("Conv", since=1)
def Conv(X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    kshape = list(W.shape[2:])
    pb, pe, out, s, d = conv_geometry(X.shape[2:], kshape, strides, dilations, pads, auto_pad)
    x = _f32(X)
    y = conv_core(x, W.astype(x.dtype, copy=False), group, pb, pe, out, s, d, B)
    return y.astype(X.dtype, copy=False)


@kernel("ConvTranspose", since=1)
def ConvTranspose(X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                  output_padding=None, output_shape=None, pads=None, strides=None):
    if _f32(X) is not X:
        args = dict(auto_pad=auto_pad, dilations=dilations, group=group, output_padding=output_padding,
                    output_shape=output_shape, pads=pads, strides=strides)
        return ConvTranspose(_f32(X), _f32(W), None if B is None else _f32(B), **args).astype(X.dtype)
    N, C = X.shape[:2]
    in_sp = list(X.shape[2:])
    nd = len(in_sp)
    kshape = list(W.shape[2:])
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    opad = list(output_padding or [0] * nd)
    ek = [(k - 1) * d + 1 for k, d in zip(kshape, dilations, strict=False)]
    if output_shape is not None and len(output_shape) == nd + 2:
        output_shape = list(output_shape)[2:]
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = list(output_shape) if output_shape is not None else [n * s for n, s in zip(in_sp, strides, strict=False)]
        total = [s * (n - 1) + op + e - o for s, n, op, e, o in zip(strides, in_sp, opad, ek, out, strict=False)]
        if auto_pad == "SAME_UPPER":
            pb = [t // 2 for t in total]
        else:
            pb = [t - t // 2 for t in total]
    else:
        p = list(pads or [0] * (2 * nd)) if auto_pad != "VALID" else [0] * (2 * nd)
        pb, pe = p[:nd], p[nd:]
        out = [s * (n - 1) + op + e - b - f
               for s, n, op, e, b, f in zip(strides, in_sp, opad, ek, pb, pe, strict=False)]
    mg = W.shape[1]
    M = mg * group
    cg = C // group
    ksz = int(np.prod(kshape))
    W = W.astype(X.dtype, copy=False)
    y = np.zeros((N, M, *out), dtype=X.dtype)
    for n in range(N):
        xn = X[n].reshape(C, -1)
        for g in range(group):
            wg = W[g * cg:(g + 1) * cg].reshape(cg, mg * ksz)
            cols = wg.T @ xn[g * cg:(g + 1) * cg]
            if nd <= 3:
                o3, i3 = _as3(out, 1), _as3(in_sp, 1)
                res = J.col2im3d(np.ascontiguousarray(cols), mg, *o3, *_as3(kshape, 1), *_as3(strides, 1),
                                 *_as3(dilations, 1), *_as3(pb, 0), *i3)
                y[n, g * mg:(g + 1) * mg] = res.reshape(mg, *out)
            else:
                y[n, g * mg:(g + 1) * mg] = P.col2im_nd(cols, mg, out, kshape, strides, dilations, pb, in_sp)
    if B is not None:
        y += B.reshape((1, -1) + (1,) * nd).astype(y.dtype)
    return y


def pool_geometry(in_shape, kshape, strides, dilations, pads, auto_pad, ceil_mode):
    nd = len(in_shape)
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    ek = [(k - 1) * d + 1 for k, d in zip(kshape, dilations, strict=False)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pb, pe = _same_pads(in_shape, kshape, strides, dilations, auto_pad)
        out = [-(-n // s) for n, s in zip(in_shape, strides, strict=False)]
        return pb, pe, out, strides, dilations
    if auto_pad == "VALID":
        pb, pe = [0] * nd, [0] * nd
    else:
        p = list(pads or [0] * (2 * nd))
        pb, pe = p[:nd], p[nd:]
    out = []
    for n, b, e, k, s in zip(in_shape, pb, pe, ek, strides, strict=False):
        span = n + b + e - k
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= n + b:
            o -= 1
        out.append(o)
    return pb, pe, out, strides, dilations


def _pool(X, mode, p, kshape, strides, dilations, pads, auto_pad, ceil_mode, storage_order=0, want_idx=False):
    N, C = X.shape[:2]
    sp = list(X.shape[2:])
    nd = len(sp)
    pb, pe, out, s, d = pool_geometry(sp, kshape, strides, dilations, pads, auto_pad, ceil_mode)
    if _f32(X) is not X:
        res = _pool(_f32(X), mode, p, kshape, strides, dilations, pads, auto_pad, ceil_mode, storage_order, want_idx)
        return (res[0].astype(X.dtype), res[1]) if want_idx else res.astype(X.dtype)
    xf = X.reshape(N * C, *sp)
    if nd <= 3:
        x3 = np.ascontiguousarray(xf.reshape((N * C,) + (1,) * (3 - nd) + tuple(sp)))
        y, idx = J.pool3d(x3, mode, float(p), *_as3(kshape, 1), *_as3(s, 1), *_as3(d, 1), *_as3(pb, 0),
                          *_as3(pe, 0), *_as3(out, 1), bool(storage_order))
        y = y.reshape(N, C, *out)
        return (y, idx.reshape(N, C, *out)) if want_idx else y
    if want_idx:
        raise NotImplementedError("MaxPool indices output for spatial rank > 3")
    return P.pool_nd(xf, mode, p, kshape, s, d, pb, pe, out).reshape(N, C, *out)


def max_pool(X, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None, storage_order=0,
             strides=None, with_indices=True):
    """MaxPool; (Y, Indices) when ``with_indices`` (spatial rank <= 3), else Y through a faster 1-D/2-D loop."""
    nd = X.ndim - 2
    if with_indices and nd <= 3:
        return _pool(X, 0, 0, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, storage_order, True)
    if nd > 2 or X.dtype not in (np.float32, np.float64):
        return _pool(X, 0, 0, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    N, C = X.shape[:2]
    sp = list(X.shape[2:])
    pb, pe, out, s, d = pool_geometry(sp, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    k2, s2, d2, pb2, o2 = _as3(kernel_shape, 1)[1:], _as3(s, 1)[1:], _as3(d, 1)[1:], _as3(pb, 0)[1:], _as3(out, 1)[1:]
    x3 = X.reshape(N * C, *([1] * (2 - nd) + sp))
    need = [(o - 1) * st + (k - 1) * dl + 1 for o, st, k, dl in zip(o2, s2, k2, d2, strict=True)]
    tail = [max(0, nn_ - (n + b)) for nn_, n, b in zip(need, x3.shape[1:], pb2, strict=True)]
    xp = np.pad(x3, [(0, 0)] + [(b, t) for b, t in zip(pb2, tail, strict=True)], constant_values=-np.inf)
    return J.maxpool2d(xp, *k2, *s2, *d2, *o2).reshape(N, C, *out)


@kernel("MaxPool", since=1, context=True)
def MaxPool(ctx, X, **attrs):
    """Indices are computed only when the node has the second output."""
    return max_pool(X, with_indices=len(ctx.node.output) > 1 and bool(ctx.node.output[1]), **attrs)


@kernel("AveragePool", since=1)
def AveragePool(X, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None,
                pads=None, strides=None):
    return _pool(X, 1 if count_include_pad else 2, 0, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)


@kernel("LpPool", since=1)
def LpPool(X, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, p=2, pads=None, strides=None):
    return _pool(X, 3, p, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)


@kernel("GlobalAveragePool", since=1)
def GlobalAveragePool(X):
    return X.mean(axis=tuple(range(2, X.ndim)), keepdims=True, dtype=np.float64).astype(X.dtype)


@kernel("GlobalMaxPool", since=1)
def GlobalMaxPool(X):
    return X.max(axis=tuple(range(2, X.ndim)), keepdims=True)


@kernel("GlobalLpPool", since=2)
def GlobalLpPool(X, *, p=2):
    ax = tuple(range(2, X.ndim))
    return (np.sum(np.abs(X.astype(np.float64)) ** p, axis=ax, keepdims=True) ** (1.0 / p)).astype(X.dtype)


def _ch(v, nd):
    return v.reshape((1, -1) + (1,) * nd)


@kernel("BatchNormalization", since=1)
def BatchNormalization(X, scale, B, mean, var, *, epsilon=1e-5, momentum=0.9, training_mode=0, is_test=0,
                       spatial=1, consumed_inputs=None):
    nd = X.ndim - 2
    if training_mode:
        ax = (0,) + tuple(range(2, X.ndim))
        cm, cv = X.mean(axis=ax), X.var(axis=ax)
        y = (X - _ch(cm, nd)) / np.sqrt(_ch(cv, nd) + epsilon) * _ch(scale, nd) + _ch(B, nd)
        rm = mean * momentum + cm * (1 - momentum)
        rv = var * momentum + cv * (1 - momentum)
        return y.astype(X.dtype), rm.astype(mean.dtype), rv.astype(var.dtype)
    if X.dtype in (np.float32, np.float64) and X.ndim >= 2:
        p = [np.ascontiguousarray(v, dtype=X.dtype) for v in (scale, B, mean, var)]
        x3 = np.ascontiguousarray(X).reshape(X.shape[0], X.shape[1], -1)
        return J.batchnorm(x3, *p, X.dtype.type(epsilon)).reshape(X.shape)
    a = (scale / np.sqrt(var.astype(np.float32) + np.float32(epsilon))).astype(X.dtype)
    b = (B - mean * a).astype(X.dtype)
    y = X * _ch(a, nd)
    y += _ch(b, nd)
    return y


@kernel("InstanceNormalization", since=1)
def InstanceNormalization(X, scale, B, *, epsilon=1e-5):
    nd = X.ndim - 2
    ax = tuple(range(2, X.ndim))
    m = X.mean(axis=ax, keepdims=True)
    v = ((X - m) ** 2).mean(axis=ax, keepdims=True)
    return ((X - m) / np.sqrt(v + epsilon) * _ch(scale, nd) + _ch(B, nd)).astype(X.dtype)


@kernel("LayerNormalization", since=17)
def LayerNormalization(X, Scale, B=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    axis = axis % X.ndim
    ax = tuple(range(axis, X.ndim))
    xf = X.astype(np.float32) if stash_type == 1 and X.dtype != np.float64 else X
    m = xf.mean(axis=ax, keepdims=True)
    d = xf - m
    inv = 1.0 / np.sqrt((d * d).mean(axis=ax, keepdims=True) + np.asarray(epsilon, dtype=xf.dtype))
    y = d * inv * Scale
    if B is not None:
        y = y + B
    return y.astype(X.dtype), m.astype(xf.dtype), inv.astype(xf.dtype)


@kernel("GroupNormalization", since=18)
def GroupNormalization(X, scale, bias, *, epsilon=1e-5, num_groups=1, stash_type=1):
    N, C = X.shape[:2]
    xf = X.astype(np.float32) if stash_type == 1 and X.dtype != np.float64 else X
    g = xf.reshape(N, num_groups, -1)
    m = g.mean(axis=2, keepdims=True)
    v = ((g - m) ** 2).mean(axis=2, keepdims=True)
    y = ((g - m) / np.sqrt(v + epsilon)).reshape(X.shape)
    nd = X.ndim - 2
    if scale.shape[0] == C:  # opset 21: per channel
        y = y * _ch(scale, nd) + _ch(bias, nd)
    else:  # opset 18: per group
        y = y.reshape(N, num_groups, -1) * scale.reshape(1, -1, 1) + bias.reshape(1, -1, 1)
    return y.reshape(X.shape).astype(X.dtype)


@kernel("LRN", since=1)
def LRN(X, *, alpha=1e-4, beta=0.75, bias=1.0, size=1):
    C = X.shape[1]
    sq = X.astype(np.float64) ** 2
    lo, hi = (size - 1) // 2, math.ceil((size - 1) / 2)
    acc = np.zeros_like(sq)
    for c in range(C):
        acc[:, c] = sq[:, max(0, c - lo):min(C, c + hi + 1)].sum(axis=1)
    return (X / (bias + alpha / size * acc) ** beta).astype(X.dtype)
