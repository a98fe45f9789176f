"""Numba-jitted hot loops of the NN kernels (conv im2col / col2im, depthwise conv, pooling, requantize).

Every jitted function here works on 3-D spatial data (1-D and 2-D callers add unit dims) and has a plain
numpy counterpart in :mod:`onnxopt.interp.ops._nn_np`; the tests compare the two.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def im2col3d(x, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw, od, oh, ow):  # pragma: no cover - jitted
    """x: (C, D, H, W) -> cols (C*kd*kh*kw, od*oh*ow), zeros where the window reads padding."""
    C, D, H, W = x.shape
    cols = np.zeros((C * kd * kh * kw, od * oh * ow), dtype=x.dtype)
    for c in range(C):
        for a in range(kd):
            for b in range(kh):
                for e in range(kw):
                    row = ((c * kd + a) * kh + b) * kw + e
                    for z in range(od):
                        iz = z * sd - pd + a * dd
                        if iz < 0 or iz >= D:
                            continue
                        for y in range(oh):
                            iy = y * sh - ph + b * dh
                            if iy < 0 or iy >= H:
                                continue
                            base = (z * oh + y) * ow
                            ix0 = -pw + e * dw
                            for xo in range(ow):
                                ix = ix0 + xo * sw
                                if 0 <= ix < W:
                                    cols[row, base + xo] = x[c, iz, iy, ix]
    return cols


@numba.njit(cache=True, nogil=True)
def col2im3d(cols, M, D, H, W, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw, idd, ih, iw):  # pragma: no cover
    """Transpose of im2col: cols (M*kd*kh*kw, idd*ih*iw) scattered-added into out (M, D, H, W)."""
    out = np.zeros((M, D, H, W), dtype=cols.dtype)
    for m in range(M):
        for a in range(kd):
            for b in range(kh):
                for e in range(kw):
                    row = ((m * kd + a) * kh + b) * kw + e
                    for z in range(idd):
                        oz = z * sd - pd + a * dd
                        if oz < 0 or oz >= D:
                            continue
                        for y in range(ih):
                            oy = y * sh - ph + b * dh
                            if oy < 0 or oy >= H:
                                continue
                            base = (z * ih + y) * iw
                            for xi in range(iw):
                                ox = xi * sw - pw + e * dw
                                if 0 <= ox < W:
                                    out[m, oz, oy, ox] += cols[row, base + xi]
    return out


@numba.njit(cache=True, nogil=True)
def pad_phases(x, ph, pw, sh, sw, Hq, Wq):  # pragma: no cover - jitted
    """x: (C, H, W) -> (C, sh, sw, Hq, Wq): x zero padded by ``ph`` rows / ``pw`` columns in front and split into
    stride phases, padded element ``[c, i*sh + rp, j*sw + cp]`` at ``[c, rp, cp, i, j]`` (the rest dropped)."""  # noqa: D205
    C, H, W = x.shape
    out = np.empty((C, sh, sw, Hq, Wq), dtype=x.dtype)  # only the padding is zeroed: no second pass over the data
    zero = x.dtype.type(0)
    for c in range(C):
        for rp in range(sh):
            for i in range(Hq):
                xi = i * sh + rp - ph
                for cp in range(sw):
                    dst = out[c, rp, cp, i]
                    if xi < 0 or xi >= H:
                        for t in range(Wq):
                            dst[t] = zero
                        continue
                    j0 = (cp - pw) % sw  # first input column whose padded column is in phase cp
                    q0 = min((j0 + pw) // sw, Wq)
                    n = max(0, min((W - j0 + sw - 1) // sw, Wq - q0))
                    for t in range(q0):
                        dst[t] = zero
                    for t in range(q0 + n, Wq):
                        dst[t] = zero
                    d2 = dst[q0:]
                    src = x[c, xi, j0:]
                    if sw == 1:
                        for t in range(n):
                            d2[t] = src[t]
                    else:
                        for t in range(n):
                            d2[t] = src[np.uint64(t * sw)]  # unsigned: no negative-index wraparound test
    return out


@numba.njit(cache=True, nogil=True)
def depthwise2d(xq, w, bias, mult, dh, dw, out):  # pragma: no cover - jitted
    """Depthwise conv into ``out`` (C*mult, oh, ow) from ``xq`` = ``pad_phases(...)`` (C, sh, sw, Hq, Wq);
    w: (C*mult, kh, kw); bias: (C*mult,). Output channel m reads channel m//mult.

    In the phase layout every tap reads a plane at unit steps: ``out[y, x] += w * plane[y + ri, x + cj]``. Small
    outputs run each tap as one pass over the whole plane computed Wq wide (columns past ow read the next row,
    or the spare row pad_phases must leave, and are dropped); large ones one row at a time. Both vectorize."""  # noqa: D205
    M, kh, kw = w.shape
    oh, ow = out.shape[1], out.shape[2]
    C, sh, sw, Hq, Wq = xq.shape
    if oh * Wq <= 2048:
        flat = xq.reshape(-1)
        n = oh * Wq
        wide = np.empty(n, dtype=out.dtype)
        for m in range(M):
            c = m // mult
            b0 = bias[m]
            for i in range(n):
                wide[i] = b0
            for b in range(kh):
                rp, ri = (b * dh) % sh, (b * dh) // sh
                for e in range(kw):
                    cp, cj = (e * dw) % sw, (e * dw) // sw
                    src = flat[(((c * sh + rp) * sw + cp) * Hq + ri) * Wq + cj:]
                    wv = w[m, b, e]
                    for i in range(n):
                        wide[i] += wv * src[i]
            for y in range(oh):
                orow = out[m, y]
                wrow = wide[y * Wq:]
                for xo in range(ow):
                    orow[xo] = wrow[xo]
        return out
    acc = np.empty(ow, dtype=out.dtype)
    for m in range(M):
        c = m // mult
        b0 = bias[m]
        for y in range(oh):
            for xo in range(ow):
                acc[xo] = b0
            for b in range(kh):
                rp, ri = (b * dh) % sh, (b * dh) // sh
                for e in range(kw):
                    cp, cj = (e * dw) % sw, (e * dw) // sw
                    src = xq[c, rp, cp, y + ri, cj:]  # sliced: a plain counter index vectorizes (no gather)
                    wv = w[m, b, e]
                    for xo in range(ow):
                        acc[xo] += wv * src[xo]
            orow = out[m, y]
            for xo in range(ow):
                orow[xo] = acc[xo]
    return out


@numba.njit(cache=True, nogil=True)
def batchnorm(x, scale, bias, mean, var, eps):  # pragma: no cover - jitted
    """Inference BatchNormalization in one pass: x (N, C, S); parameters (C,) and ``eps`` of x's dtype."""
    N, C, S = x.shape
    out = np.empty((N, C, S), dtype=x.dtype)
    for c in range(C):
        a = scale[c] / np.sqrt(var[c] + eps)
        b = bias[c] - mean[c] * a
        for n in range(N):
            src = x[n, c]
            dst = out[n, c]
            for i in range(S):
                dst[i] = src[i] * a + b
    return out


@numba.njit(cache=True, nogil=True)
def maxpool2d(xp, kh, kw, sh, sw, dh, dw, oh, ow):  # pragma: no cover - jitted
    """xp: (NC, Hp, Wp) padded with -inf (ceil_mode overhang included) -> (NC, oh, ow); no indices."""
    NC = xp.shape[0]
    out = np.full((NC, oh, ow), -np.inf, dtype=xp.dtype)
    for n in range(NC):
        for y in range(oh):
            orow = out[n, y]
            for b in range(kh):
                for e in range(kw):
                    srow = xp[n, y * sh + b * dh, e * dw:]
                    if sw != 1:
                        srow = srow[::sw]
                    for xo in range(ow):
                        v = srow[xo]
                        if v > orow[xo]:
                            orow[xo] = v
    return out


@numba.njit(cache=True, nogil=True)
def pool3d(x, mode, p, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw, ed, eh, ew, od, oh, ow, col_major):
    """Pooling over x: (NC, D, H, W). mode 0 max (also returns indices), 1 average counting the pads,
    2 average without pads, 3 Lp with exponent p. ``e*`` are the end pads (for count_include_pad)."""  # noqa: D205
    NC, D, H, W = x.shape
    out = np.zeros((NC, od, oh, ow), dtype=x.dtype)
    idx = np.zeros((NC, od, oh, ow), dtype=np.int64) if mode == 0 else np.zeros((1, 1, 1, 1), dtype=np.int64)
    for n in range(NC):
        for z in range(od):
            for y in range(oh):
                for xo in range(ow):
                    best = -np.inf
                    bi = -1
                    acc = 0.0
                    cnt = 0
                    cntpad = 0
                    for a in range(kd):
                        iz = z * sd - pd + a * dd
                        if iz < -pd or iz >= D + ed:
                            continue
                        for b in range(kh):
                            iy = y * sh - ph + b * dh
                            if iy < -ph or iy >= H + eh:
                                continue
                            for e in range(kw):
                                ix = xo * sw - pw + e * dw
                                if ix < -pw or ix >= W + ew:
                                    continue
                                cntpad += 1
                                if iz < 0 or iz >= D or iy < 0 or iy >= H or ix < 0 or ix >= W:
                                    continue
                                v = x[n, iz, iy, ix]
                                cnt += 1
                                if mode == 0:
                                    if v > best or bi < 0:
                                        best = v
                                        if col_major:
                                            bi = ((ix * H + iy) * D + iz)
                                        else:
                                            bi = ((iz * H + iy) * W + ix)
                                elif mode == 3:
                                    acc += abs(v) ** p
                                else:
                                    acc += v
                    if mode == 0:
                        out[n, z, y, xo] = best
                        idx[n, z, y, xo] = n * D * H * W + bi
                    elif mode == 1:
                        out[n, z, y, xo] = acc / cntpad if cntpad > 0 else 0.0
                    elif mode == 2:
                        out[n, z, y, xo] = acc / cnt if cnt > 0 else 0.0
                    else:
                        out[n, z, y, xo] = acc ** (1.0 / p)
    return out, idx


@numba.njit(cache=True, nogil=True)
def requantize(acc, mult, zp, lo, hi):  # pragma: no cover - jitted
    """y = clip(rint(float32(acc) * mult) + zp, lo, hi) with ``mult``/``zp`` per row of acc (M, P): int32 out."""
    M, P = acc.shape
    out = np.empty((M, P), dtype=np.int32)
    for m in range(M):
        s = mult[m]
        z = zp[m]
        for j in range(P):
            v = np.rint(np.float32(acc[m, j]) * s) + z
            if v < lo:
                v = lo
            elif v > hi:
                v = hi
            out[m, j] = np.int32(v)
    return out
