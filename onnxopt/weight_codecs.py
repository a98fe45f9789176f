"""The encoders of ``weight_formats``: weight -> ``Encoded``, with or without calibration statistics.

Every encoder takes the float weight as stored, its output-channel axis and its input axis (the one blocks run along
and the layer's inputs enter by), and optionally the Hessian of the layer's inputs, H = sum x x^T over calibration
rows, in the order of ``to_2d``'s columns (for a Conv, im2col order: input channel, then kernel rows, then columns).

- ``int8`` / ``int4`` (affine): scales and zero points from the weight (round to nearest, RTN); symmetric formats use
  the sign-aware scale of onnxruntime's 4-bit quantizer (the element of largest magnitude lands exactly on the most
  negative code, so all 16 / 256 levels are used); asymmetric ones span [min(w, 0), max(w, 0)];
- with H and rounding ``gptq`` or ``auto``: the same grid, values chosen by GPTQ (Frantar et al. 2022): columns in
  order of decreasing H diagonal, each one rounded and its error spread over the columns not yet rounded through the
  inverse Hessian's Cholesky factor, in lazy batches of 128 columns, dampening 1% of the mean diagonal;
- ``ternary`` (TWN) and ``binary`` (XNOR): thresholds and alpha as in the papers; with H, alpha per channel is refit
  by least squares on the layer's output, alpha = <W h, T h> / <T h, T h> summed over calibration rows, i.e.
  (w H t) / (t H t) (kept as the paper's when the fit is not positive);
- ``pow2``: nearest of 0, +-2^(kmax-6) .. +-2^kmax per channel (kmax = round(log2 max|w|)); GPTQ as for int4;
- ``kmeans:K``: exact 1-D Lloyd iterations over the sorted weights (linear initialisation between min and max, as
  Deep Compression found best), nearest centroid; GPTQ against the centroids with H.
"""

from __future__ import annotations

import numpy as np

from onnxopt.weight_formats import INT2, INT_TYPES, UINT4, Encoded, WeightSpec, expand

GPTQ_BLOCK = 128
GPTQ_DAMP = 0.01
KMEANS_ITERS = 50
POW2_LEVELS = 7  # exponents kmax-6 .. kmax
POW2_CODEBOOK = np.array([0.0] + [2.0 ** (i - 7) for i in range(1, 8)] + [0.0] + [-(2.0 ** (i - 15)) for i in
                                                                                 range(9, 16)], dtype=np.float32)


def to_2d(a: np.ndarray, out_axis: int) -> np.ndarray:
    """[outputs, inputs]: the output-channel axis first, the rest flattened in order."""
    return np.moveaxis(np.asarray(a), out_axis, 0).reshape(a.shape[out_axis], -1)


def from_2d(m: np.ndarray, shape: tuple[int, ...], out_axis: int) -> np.ndarray:
    moved = (shape[out_axis], *[d for i, d in enumerate(shape) if i != out_axis])
    return np.moveaxis(m.reshape(moved), 0, out_axis)


def encode(w: np.ndarray, spec: WeightSpec, out_axis: int, in_axis: int, hessian: np.ndarray | None = None
           ) -> Encoded:
    """``w`` in ``spec``'s format. ``hessian``: [inputs, inputs] of the layer (None: no calibration statistics)."""
    w = np.asarray(w, dtype=np.float32)
    if spec.kind in ("int8", "int4"):
        return _affine(w, spec, out_axis, in_axis, hessian)
    if spec.kind in ("ternary", "binary"):
        return _ternary(w, spec, out_axis, hessian)
    if spec.kind == "pow2":
        return _pow2(w, spec, out_axis, hessian)
    return _kmeans(w, spec, out_axis, hessian)


def _use_gptq(spec: WeightSpec, hessian: np.ndarray | None) -> bool:
    return hessian is not None and spec.rounding in ("auto", "gptq")


# ---------------------------------------------------------------------------------------------------- affine


def qrange(spec: WeightSpec) -> tuple[int, int]:
    bits = 8 if spec.kind == "int8" else 4
    return (0, 2**bits - 1) if spec.asym else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def affine_params(w: np.ndarray, spec: WeightSpec, out_axis: int, in_axis: int
                  ) -> tuple[np.ndarray, np.ndarray | None, int, int]:
    """(scale, zero point or None, DequantizeLinear axis, block size) of ``w`` in an affine ``spec``."""
    qmin, qmax = qrange(spec)
    if spec.block:
        m = np.moveaxis(w, in_axis, -1)
        pad = (-m.shape[-1]) % spec.block
        m = np.concatenate([m, np.zeros((*m.shape[:-1], pad), np.float32)], -1) if pad else m
        m = m.reshape(*m.shape[:-1], -1, spec.block)
        red, axis, block = -1, in_axis, spec.block
    else:
        m = np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1)
        red, axis, block = -1, out_axis, 0
    if spec.asym:
        lo, hi = np.minimum(m.min(red), 0.0), np.maximum(m.max(red), 0.0)
        scale = np.where(hi > lo, (hi - lo) / (qmax - qmin), 1.0).astype(np.float32)
        zp = np.clip(np.rint(qmin - lo / scale), qmin, qmax)
    else:  # sign-aware: the largest magnitude maps exactly onto qmin
        idx = np.argmax(np.abs(m), axis=red)
        vmax = np.take_along_axis(m, np.expand_dims(idx, red), red).squeeze(red)
        scale = np.where(vmax != 0, vmax / qmin, 1.0).astype(np.float32)
        zp = None
    if spec.block:
        scale = np.ascontiguousarray(np.moveaxis(scale, -1, in_axis))
        zp = None if zp is None else np.ascontiguousarray(np.moveaxis(zp, -1, in_axis))
    dtype = INT_TYPES[(spec.kind, spec.asym)]
    return scale, (None if zp is None else zp.astype(np.int64).astype(dtype)), axis, block


def _affine(w: np.ndarray, spec: WeightSpec, out_axis: int, in_axis: int, hessian: np.ndarray | None) -> Encoded:
    qmin, qmax = qrange(spec)
    scale, zp, axis, block = affine_params(w, spec, out_axis, in_axis)
    s_full = expand(scale, w.shape, axis, block).astype(np.float32)
    z_full = np.zeros(w.shape, np.float32) if zp is None else expand(zp, w.shape, axis, block).astype(np.float32)
    if _use_gptq(spec, hessian):
        s2, z2 = to_2d(s_full, out_axis).astype(np.float64), to_2d(z_full, out_axis).astype(np.float64)

        def quant(col: np.ndarray, i: int) -> np.ndarray:
            return (np.clip(np.rint(col / s2[:, i]) + z2[:, i], qmin, qmax) - z2[:, i]) * s2[:, i]

        wq = from_2d(gptq(to_2d(w, out_axis), hessian, quant), w.shape, out_axis)
    else:
        wq = w
    q = np.clip(np.rint(wq / s_full) + z_full, qmin, qmax)
    dtype = INT_TYPES[(spec.kind, spec.asym)]
    return Encoded(spec, q.astype(np.int64).astype(dtype), axis, scale, zp, block)


# ---------------------------------------------------------------------------------------------------- GPTQ


def gptq(w2: np.ndarray, hessian: np.ndarray, quant, block: int = GPTQ_BLOCK, damp: float = GPTQ_DAMP
         ) -> np.ndarray:
    """GPTQ rounding of ``w2`` [outputs, inputs] under ``hessian`` [inputs, inputs]: returns the dequantized weight.
    ``quant(column, input_index) -> dequantized column`` is the format's grid (round to nearest on it)."""
    w = np.array(w2, dtype=np.float64)
    h = np.array(hessian, dtype=np.float64)
    k = w.shape[1]
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    perm = np.argsort(-np.diag(h), kind="stable")  # act-order: the most active inputs first
    w, h = w[:, perm], h[np.ix_(perm, perm)]
    try:
        u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor of H^-1
    except np.linalg.LinAlgError:
        h[np.diag_indices(k)] += float(np.mean(np.diag(h)))
        u = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.zeros_like(w)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].copy()
        err = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = w1[:, j]
            qc = quant(col, int(perm[i1 + j]))
            q[:, i1 + j] = qc
            e = (col - qc) / u1[j, j]
            w1[:, j:] -= np.outer(e, u1[j, j:])
            err[:, j] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    out = np.empty_like(q)
    out[:, perm] = q
    return out


def output_error(w2: np.ndarray, wq2: np.ndarray, hessian: np.ndarray) -> float:
    """sum over calibration rows of ||(w - wq) x||^2, i.e. trace(D H D^T): the layer-output error of a rounding."""
    d = np.asarray(w2, np.float64) - np.asarray(wq2, np.float64)
    return float(np.einsum("ok,kl,ol->", d, np.asarray(hessian, np.float64), d))


# ---------------------------------------------------------------------------------------------------- ternary


def _ternary(w: np.ndarray, spec: WeightSpec, out_axis: int, hessian: np.ndarray | None) -> Encoded:
    w2 = to_2d(w, out_axis).astype(np.float64)
    a = np.abs(w2)
    if spec.kind == "ternary":
        delta = 0.7 * a.mean(1, keepdims=True)
        t = np.sign(w2) * (a > delta)
        count = (a > delta).sum(1)
        alpha = np.where(count > 0, (a * (a > delta)).sum(1) / np.maximum(count, 1), 1.0)
    else:
        t = np.where(w2 >= 0, 1.0, -1.0)
        alpha = a.mean(1)
        alpha = np.where(alpha > 0, alpha, 1.0)
    if hessian is not None and spec.rounding != "rtn":
        h = np.asarray(hessian, np.float64)
        num = ((w2 @ h) * t).sum(1)
        den = ((t @ h) * t).sum(1)
        fit = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        alpha = np.where((den > 0) & (fit > 0) & np.isfinite(fit), fit, alpha)
    values = from_2d(t, w.shape, out_axis).astype(np.int8).astype(INT2)
    return Encoded(spec, values, out_axis, alpha.astype(np.float32))


# ---------------------------------------------------------------------------------------------------- codebooks


def nearest(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index into ascending ``grid`` of the nearest entry to each value (ties to the lower entry)."""
    mids = (grid[:-1] + grid[1:]) / 2
    return np.searchsorted(mids, values, side="right") if grid.size > 1 else np.zeros(np.shape(values), np.int64)


def _codebook_gptq(w: np.ndarray, out_axis: int, hessian: np.ndarray, grid: np.ndarray, scale2: np.ndarray
                   ) -> np.ndarray:
    """GPTQ against ``grid`` (ascending) times a per-output ``scale2``: the dequantized weight in ``w``'s layout."""
    def quant(col: np.ndarray, i: int) -> np.ndarray:
        return grid[nearest(col / scale2, grid)] * scale2

    return from_2d(gptq(to_2d(w, out_axis), hessian, quant), w.shape, out_axis)


def _pow2(w: np.ndarray, spec: WeightSpec, out_axis: int, hessian: np.ndarray | None) -> Encoded:
    w2 = to_2d(w, out_axis).astype(np.float64)
    amax = np.abs(w2).max(1)
    kmax = np.where(amax > 0, np.rint(np.log2(np.where(amax > 0, amax, 1.0))), 0.0)
    scale = np.exp2(kmax).astype(np.float32)  # exact powers of two
    order = np.argsort(POW2_CODEBOOK, kind="stable")
    grid = POW2_CODEBOOK[order].astype(np.float64)
    s_full = expand(scale, w.shape, out_axis, 0).astype(np.float64)
    wq = _codebook_gptq(w, out_axis, hessian, grid, scale.astype(np.float64)) if _use_gptq(spec, hessian) else w
    idx = order[nearest(wq / s_full, grid)]
    return Encoded(spec, idx.astype(np.uint8).astype(UINT4), out_axis, scale, codebook=POW2_CODEBOOK.copy())


def kmeans_1d(values: np.ndarray, k: int, iters: int = KMEANS_ITERS) -> np.ndarray:
    """Ascending centroids of 1-D k-means over ``values`` (Lloyd, linear initialisation, exact on sorted data)."""
    v = np.sort(np.asarray(values, np.float64).ravel())
    if v.size == 0:
        return np.zeros(k, np.float32)
    c = np.linspace(v[0], v[-1], k)
    cs = np.concatenate([[0.0], np.cumsum(v)])
    for _ in range(iters):
        edges = np.concatenate([[0], np.searchsorted(v, (c[:-1] + c[1:]) / 2), [v.size]])
        n = np.diff(edges)
        new = np.where(n > 0, (cs[edges[1:]] - cs[edges[:-1]]) / np.maximum(n, 1), c)
        new = np.sort(new)
        if np.array_equal(new, c):
            break
        c = new
    return c.astype(np.float32)


def _kmeans(w: np.ndarray, spec: WeightSpec, out_axis: int, hessian: np.ndarray | None) -> Encoded:
    cb = kmeans_1d(w, spec.k)
    grid = cb.astype(np.float64)
    ones = np.ones(w.shape[out_axis], np.float64)
    wq = _codebook_gptq(w, out_axis, hessian, grid, ones) if _use_gptq(spec, hessian) else w
    idx = nearest(np.asarray(wq, np.float64), grid)
    dtype = UINT4 if spec.k <= 16 else np.dtype(np.uint8)
    return Encoded(spec, idx.astype(np.uint8).astype(dtype), out_axis, codebook=cb)


__all__ = ["encode", "from_2d", "gptq", "kmeans_1d", "nearest", "output_error", "to_2d"]
