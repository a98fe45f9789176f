"""Plain numpy versions of the jitted NN loops: any spatial rank, used for rank > 3 and as test oracles."""

from __future__ import annotations

import itertools

import numpy as np


def _window_slices(k_off, strides, dilations, out_shape):
    return tuple(slice(o * d, o * d + (n - 1) * s + 1, s)
                 for o, s, d, n in zip(k_off, strides, dilations, out_shape, strict=False))


def im2col_nd(x, kernel, strides, dilations, pads_begin, pads_end, out_shape):
    """x: (C, *spatial) -> (C*prod(kernel), prod(out_shape)), rows ordered (c, k0, k1, ...)."""
    C = x.shape[0]
    xp = np.pad(x, [(0, 0)] + [(b, e) for b, e in zip(pads_begin, pads_end, strict=False)])
    # windows may run past the end pads (never happens for valid shapes, but keep it safe)
    need = [(n - 1) * s + (k - 1) * d + 1 for n, s, k, d in zip(out_shape, strides, kernel, dilations, strict=False)]
    extra = [max(0, nd - xs) for nd, xs in zip(need, xp.shape[1:], strict=False)]
    if any(extra):
        xp = np.pad(xp, [(0, 0)] + [(0, e) for e in extra])
    ksize = int(np.prod(kernel))
    cols = np.empty((C, ksize, int(np.prod(out_shape))), dtype=x.dtype)
    for i, k_off in enumerate(itertools.product(*[range(k) for k in kernel])):
        sl = _window_slices(k_off, strides, dilations, out_shape)
        cols[:, i, :] = xp[(slice(None),) + sl].reshape(C, -1)
    return cols.reshape(C * ksize, -1)


def col2im_nd(cols, M, out_shape, kernel, strides, dilations, pads_begin, in_shape):
    """Transpose of im2col_nd: cols (M*prod(kernel), prod(in_shape)) -> (M, *out_shape)."""
    full = [max((n - 1) * s + (k - 1) * d + 1, o + b) for n, s, k, d, o, b in
            zip(in_shape, strides, kernel, dilations, out_shape, pads_begin, strict=False)]
    buf = np.zeros((M, *full), dtype=cols.dtype)
    ksize = int(np.prod(kernel))
    c3 = cols.reshape(M, ksize, *in_shape)
    for i, k_off in enumerate(itertools.product(*[range(k) for k in kernel])):
        sl = _window_slices(k_off, strides, dilations, in_shape)
        buf[(slice(None),) + sl] += c3[:, i]
    crop = tuple(slice(b, b + o) for b, o in zip(pads_begin, out_shape, strict=False))
    return buf[(slice(None),) + crop]


def depthwise_nd(xp, w, mult, strides, dilations, out_shape):
    """xp: padded (C, *spatial); w: (C*mult, *kernel) -> (C*mult, *out_shape)."""
    M = w.shape[0]
    out = np.zeros((M, *out_shape), dtype=xp.dtype)
    src = np.repeat(xp, mult, axis=0)
    for k_off in itertools.product(*[range(k) for k in w.shape[1:]]):
        sl = _window_slices(k_off, strides, dilations, out_shape)
        wv = w[(slice(None),) + k_off].reshape((M,) + (1,) * len(out_shape))
        out += wv * src[(slice(None),) + sl]
    return out


def pad_phases_np(x, ph, pw, sh, sw, Hq, Wq):
    """Numpy twin of ``_nn_jit.pad_phases``: (C, H, W) -> (C, sh, sw, Hq, Wq)."""
    C, H, W = x.shape
    buf = np.zeros((C, max(sh * Hq, H + ph), max(sw * Wq, W + pw)), dtype=x.dtype)
    buf[:, ph:ph + H, pw:pw + W] = x
    buf = buf[:, :sh * Hq, :sw * Wq]
    return np.ascontiguousarray(buf.reshape(C, Hq, sh, Wq, sw).transpose(0, 2, 4, 1, 3))


def batchnorm_np(x, scale, bias, mean, var, epsilon):
    """Numpy twin of ``_nn_jit.batchnorm``: x (N, C, S) in inference mode."""
    t = x.dtype.type
    a = (scale / np.sqrt(var + t(epsilon))).astype(x.dtype)
    b = (bias - mean * a).astype(x.dtype)
    return x * a[None, :, None] + b[None, :, None]


def pool_nd(x, mode, p, kernel, strides, dilations, pads_begin, pads_end, out_shape):
    """x: (NC, *spatial). mode 0 max, 1 avg counting pads, 2 avg without pads, 3 Lp. No indices."""
    nd = len(kernel)
    need = [(n - 1) * s + (k - 1) * d + 1 for n, s, k, d in zip(out_shape, strides, kernel, dilations, strict=False)]
    tail = [max(0, nd_ - (xs + b)) for nd_, xs, b in zip(need, x.shape[1:], pads_begin, strict=False)]
    padw = [(0, 0)] + [(b, t) for b, t in zip(pads_begin, tail, strict=False)]
    inside = np.pad(np.ones(x.shape[1:], dtype=bool), padw[1:])
    # positions inside the declared pads (for count_include_pad) but not the ceil_mode overhang
    declared = np.zeros(inside.shape, dtype=bool)
    declared[tuple(slice(0, b + xs + e) for b, xs, e in zip(pads_begin, x.shape[1:], pads_end, strict=False))] = True
    fill = -np.inf if mode == 0 else 0.0
    xp = np.pad(x.astype(np.float64), padw, constant_values=fill)
    out = np.full((x.shape[0], *out_shape), -np.inf if mode == 0 else 0.0)
    cnt = np.zeros(out_shape)
    cntpad = np.zeros(out_shape)
    for k_off in itertools.product(*[range(k) for k in kernel]):
        sl = _window_slices(k_off, strides, dilations, out_shape)
        v = xp[(slice(None),) + sl]
        if mode == 0:
            out = np.maximum(out, v)
        elif mode == 3:
            out += np.abs(v) ** p
        else:
            out += v
        cnt += inside[sl]
        cntpad += declared[sl]
    if mode == 1:
        out = out / cntpad
    elif mode == 2:
        out = out / cnt
    elif mode == 3:
        out = out ** (1.0 / p)
    del nd
    return out.astype(x.dtype)


def requantize_np(acc, mult, zp, lo, hi):
    """Numpy twin of ``_nn_jit.requantize``."""
    v = np.rint(acc.astype(np.float32) * mult.astype(np.float32)[:, None]).astype(np.float64) + zp[:, None]
    return np.clip(v, lo, hi).astype(np.int32)
