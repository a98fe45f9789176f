"""Detection and spatial-resampling kernels: NonMaxSuppression, RoiAlign, GridSample, AffineGrid, Col2Im,
MaxUnpool and CenterCropPad.

All are vectorised numpy (NonMaxSuppression loops over candidates in score order, one IoU row per step); Col2Im
reuses the jitted col2im of ConvTranspose. Semantics follow the ONNX spec and, where the spec is silent, its
reference implementation (``onnx/reference/ops``), which the backend node tests were generated from.
"""  # noqa: D205

from __future__ import annotations

import itertools

import numpy as np

from onnxopt.interp.ops import _nn_jit as J
from onnxopt.interp.ops import _nn_np as P
from onnxopt.interp.registry import kernel

# ------------------------------------------------------------------ NonMaxSuppression


def _corners(boxes: np.ndarray, center_point_box: int):
    """(x_min, y_min, x_max, y_max) of every box, as the spec reads either box format."""
    b = boxes.astype(np.float64)
    if center_point_box:
        xc, yc, w, h = b[:, 0], b[:, 1], b[:, 2] / 2, b[:, 3] / 2
        return xc - w, yc - h, xc + w, yc + h
    return (np.minimum(b[:, 1], b[:, 3]), np.minimum(b[:, 0], b[:, 2]),
            np.maximum(b[:, 1], b[:, 3]), np.maximum(b[:, 0], b[:, 2]))


def _suppressed_by(i: int, sel: np.ndarray, c, iou_threshold: float) -> bool:
    """Whether box ``i`` overlaps any box of ``sel`` by IoU strictly above the threshold."""
    x0, y0, x1, y1 = c
    ix = np.minimum(x1[i], x1[sel]) - np.maximum(x0[i], x0[sel])
    iy = np.minimum(y1[i], y1[sel]) - np.maximum(y0[i], y0[sel])
    inter = ix * iy
    a1 = (x1[i] - x0[i]) * (y1[i] - y0[i])
    a2 = (x1[sel] - x0[sel]) * (y1[sel] - y0[sel])
    union = a1 + a2 - inter
    ok = (ix > 0) & (iy > 0) & (inter > 0) & (a1 > 0) & (a2 > 0) & (union > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return bool(np.any(ok & (inter / np.where(ok, union, 1.0) > iou_threshold)))


@kernel("NonMaxSuppression", since=10)
def NonMaxSuppression(boxes, scores, max_output_boxes_per_class=None, iou_threshold=None, score_threshold=None,
                      *, center_point_box=0):
    def scalar(v, default):
        return default if v is None or np.size(v) == 0 else np.asarray(v).reshape(-1)[0]

    max_out = max(int(scalar(max_output_boxes_per_class, 0)), 0)
    iou_thr = float(scalar(iou_threshold, 0.0))
    score_thr = scalar(score_threshold, None)
    out = []
    for b in range(boxes.shape[0]):
        c = _corners(boxes[b], center_point_box)
        for k in range(scores.shape[1]):
            s = scores[b, k]
            cand = np.arange(s.shape[0]) if score_thr is None else np.flatnonzero(s > score_thr)
            cand = cand[np.argsort(-s[cand].astype(np.float64), kind="stable")]  # ties: lower index first
            sel: list[int] = []
            for i in cand:
                if len(sel) >= max_out:
                    break
                if not sel or not _suppressed_by(int(i), np.asarray(sel), c, iou_thr):
                    sel.append(int(i))
            out.extend((b, k, i) for i in sel)
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


# ------------------------------------------------------------------ RoiAlign


def _roi_axis(start, size, pooled, grid, extent):
    """Sample positions along one axis of one RoI: low/high indices, weights and in-range mask, (pooled*grid,)."""
    p = np.arange(pooled)[:, None]
    g = np.arange(grid)[None, :]
    v = (start + p * size / pooled + (g + 0.5) * size / pooled / grid).reshape(-1)
    valid = (v >= -1.0) & (v <= extent)
    v = np.maximum(v, 0.0)
    low = np.floor(v).astype(np.int64)
    at_end = low >= extent - 1
    low = np.where(at_end, extent - 1, low)
    high = np.where(at_end, extent - 1, low + 1)
    v = np.where(at_end, low.astype(np.float64), v)
    frac = v - low
    w_low, w_high = np.where(valid, 1.0 - frac, 0.0), np.where(valid, frac, 0.0)
    return low, high, w_low, w_high


def _roi_align(X, rois, batch_indices, mode, oh, ow, sampling_ratio, spatial_scale, half_pixel):
    R = rois.shape[0]
    _, C, H, W = X.shape
    Y = np.zeros((R, C, oh, ow), dtype=np.float64)
    offset = 0.5 if half_pixel else 0.0
    for r in range(R):
        x0, y0, x1, y1 = (float(v) * spatial_scale - offset for v in rois[r])
        rw, rh = x1 - x0, y1 - y0
        if not half_pixel:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        gh = int(sampling_ratio) if sampling_ratio > 0 else int(np.ceil(rh / oh))
        gw = int(sampling_ratio) if sampling_ratio > 0 else int(np.ceil(rw / ow))
        if gh <= 0 or gw <= 0:
            continue
        yl, yh, wyl, wyh = _roi_axis(y0, rh, oh, gh, H)
        xl, xh, wxl, wxh = _roi_axis(x0, rw, ow, gw, W)
        img = X[int(batch_indices[r])].astype(np.float64)
        terms = [img[:, ya][:, :, xa] * (wy[:, None] * wx[None, :])
                 for ya, wy in ((yl, wyl), (yh, wyh)) for xa, wx in ((xl, wxl), (xh, wxh))]
        if mode == "avg":
            v = (terms[0] + terms[1] + terms[2] + terms[3]).reshape(C, oh, gh, ow, gw)
            Y[r] = v.sum(axis=(2, 4)) / max(gh * gw, 1)
        else:  # max over the weighted corner values, as the reference and onnxruntime do
            v = np.maximum(np.maximum(terms[0], terms[1]), np.maximum(terms[2], terms[3]))
            Y[r] = v.reshape(C, oh, gh, ow, gw).max(axis=(2, 4))
    return Y.astype(X.dtype)


@kernel("RoiAlign", since=10)
def RoiAlign(X, rois, batch_indices, *, mode="avg", output_height=1, output_width=1, sampling_ratio=0,
             spatial_scale=1.0, coordinate_transformation_mode="output_half_pixel"):
    # opset 10 has no coordinate_transformation_mode; it behaves as "output_half_pixel"
    return _roi_align(X, rois, batch_indices, mode, output_height, output_width, sampling_ratio, spatial_scale,
                      coordinate_transformation_mode == "half_pixel")


@kernel("RoiAlign", since=16)
def RoiAlign16(X, rois, batch_indices, *, coordinate_transformation_mode="half_pixel", mode="avg",
               output_height=1, output_width=1, sampling_ratio=0, spatial_scale=1.0):
    return _roi_align(X, rois, batch_indices, mode, output_height, output_width, sampling_ratio, spatial_scale,
                      coordinate_transformation_mode == "half_pixel")


RoiAlign16.__name__ = "RoiAlign"

# ------------------------------------------------------------------ GridSample


def _reflect(x, lo, hi):
    """Reflect ``x`` by the nearer border until it lies within [lo, hi] (the reference's ``_gs_reflect``)."""
    rng = hi - lo
    if rng <= 0:
        return np.full_like(x, lo)
    below, above = x < lo, x > hi
    dx = np.where(below, lo - x, np.where(above, x - hi, 0.0))
    n = np.trunc(dx / rng)
    r = dx - n * rng
    even = n % 2 == 0
    return np.where(below, np.where(even, lo + r, hi - r), np.where(above, np.where(even, hi - r, lo + r), x))


def _cubic_coeffs(t):
    a = -0.75
    t = np.abs(t)
    return [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a]


def _grid_sample_one(img, x, dims, lo, hi, mode, padding_mode):
    """img (C, *dims), x (r, P) pixel coordinates -> (C, P)."""
    r, npts = x.shape
    C = img.shape[0]

    def index(i, d):  # integer index along dim d -> (index to read, in range)
        if padding_mode == "zeros":
            ok = (i >= 0) & (i < dims[d])
            return np.where(ok, i, 0), ok
        if padding_mode == "border":
            return np.clip(i, 0, dims[d] - 1), np.ones(i.shape, bool)
        return _reflect(i.astype(np.float64), lo[d], hi[d]).astype(np.int64), np.ones(i.shape, bool)

    if mode == "nearest":
        idx, oks = zip(*(index(x[d].astype(np.int64), d) for d in range(r)), strict=True)
        vals = img[(slice(None), *idx)]
        return np.where(np.logical_and.reduce(oks), vals, 0)
    base = np.floor(x)
    t = x - base
    base = base.astype(np.int64)
    if mode == "linear":
        offsets, coeffs = (0, 1), [[1 - t[d], t[d]] for d in range(r)]
    else:
        offsets, coeffs = (-1, 0, 1, 2), [_cubic_coeffs(t[d]) for d in range(r)]
    out = np.zeros((C, npts), dtype=np.float64)
    per_dim = [[index(base[d] + o, d) for o in offsets] for d in range(r)]
    for combo in itertools.product(range(len(offsets)), repeat=r):
        idx = [per_dim[d][k][0] for d, k in enumerate(combo)]
        ok = np.logical_and.reduce([per_dim[d][k][1] for d, k in enumerate(combo)])
        w = np.prod([coeffs[d][k] for d, k in enumerate(combo)], axis=0) * ok
        out += img[(slice(None), *idx)] * w
    return out


def _grid_sample(X, grid, mode, padding_mode, align_corners):
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    N, C = X.shape[:2]
    dims = X.shape[2:]
    r = len(dims)
    out_sp = grid.shape[1:-1]
    cdt = np.float64 if grid.dtype == np.float64 else np.float32
    size = np.asarray(dims, dtype=cdt)
    if align_corners:
        lo, hi = np.zeros(r), np.asarray(dims, np.float64) - 1.0
    else:
        lo, hi = np.full(r, -0.5), np.asarray(dims, np.float64) - 0.5
    Y = np.empty((N, C, int(np.prod(out_sp, dtype=np.int64))), dtype=X.dtype)
    for n in range(N):
        g = grid[n].reshape(-1, r)[:, ::-1].T.astype(cdt)  # (r, P), dim order of X
        sz = size[:, None]
        x = (g + 1) / 2 * (sz - 1) if align_corners else ((g + 1) * sz - 1) / 2
        x = x.astype(np.float64)
        if mode == "nearest":
            x = np.rint(x)
        for d in range(r):
            outside = (x[d] < lo[d]) | (x[d] > hi[d])
            if padding_mode == "border" and mode != "cubic":
                # cubic bounds each of its taps instead (torch.nn.functional.grid_sample, which the spec cites,
                # and onnxruntime); onnx's reference clamps the coordinate first, and differs near the border
                x[d] = np.where(outside, np.clip(x[d], 0, dims[d] - 1), x[d])
            elif padding_mode == "reflection":
                x[d] = np.where(outside, _reflect(x[d], lo[d], hi[d]), x[d])
        img = X[n] if mode == "nearest" else X[n].astype(np.float64)
        Y[n] = _grid_sample_one(img, x, dims, lo, hi, mode, padding_mode).astype(X.dtype)
    return Y.reshape(N, C, *out_sp)


@kernel("GridSample", since=16)
def GridSample(X, grid, *, align_corners=0, mode="bilinear", padding_mode="zeros"):
    return _grid_sample(X, grid, mode, padding_mode, align_corners)


@kernel("GridSample", since=20)
def GridSample20(X, grid, *, align_corners=0, mode="linear", padding_mode="zeros"):
    return _grid_sample(X, grid, mode, padding_mode, align_corners)


GridSample20.__name__ = "GridSample"

# ------------------------------------------------------------------ AffineGrid, Col2Im, MaxUnpool, CenterCropPad


@kernel("AffineGrid", since=20)
def AffineGrid(theta, size, *, align_corners=0):
    sp = [int(s) for s in np.asarray(size).reshape(-1)[2:]]
    N = theta.shape[0]
    axes = []
    for n in sp:
        if align_corners:
            axes.append(np.linspace(-1.0, 1.0, n))
        else:
            axes.append((np.arange(n) * 2.0 + 1.0) / n - 1.0)
    mesh = np.meshgrid(*axes, indexing="ij")  # dim order of the data: (D,) H, W
    homo = np.stack([*mesh[::-1], np.ones(sp)], axis=-1).reshape(-1, len(sp) + 1)  # (x, y, [z], 1)
    th = theta.astype(np.float64)
    grid = np.einsum("nij,pj->npi", th, homo)
    return grid.reshape(N, *sp, len(sp)).astype(theta.dtype)


@kernel("Col2Im", since=18)
def Col2Im(input, image_shape, block_shape, *, dilations=None, pads=None, strides=None):
    img = [int(v) for v in np.asarray(image_shape).reshape(-1)]
    blk = [int(v) for v in np.asarray(block_shape).reshape(-1)]
    nd = len(img)
    dilations = list(dilations or [1] * nd)
    strides = list(strides or [1] * nd)
    pads = list(pads or [0] * (2 * nd))
    pb, pe = pads[:nd], pads[nd:]
    blocks = [(n + b + e - ((k - 1) * d + 1)) // s + 1
              for n, b, e, k, d, s in zip(img, pb, pe, blk, dilations, strides, strict=True)]
    N, CK, L = input.shape
    ksz = int(np.prod(blk))
    if CK % ksz or L != int(np.prod(blocks)):
        raise ValueError(f"Col2Im input shape {input.shape} does not match block_shape {blk} and "
                         f"{blocks} sliding blocks")
    C = CK // ksz
    x = input if input.dtype in (np.float32, np.float64) else input.astype(np.float32)
    out = np.empty((N, C, *img), dtype=x.dtype)
    for n in range(N):
        cols = np.ascontiguousarray(x[n])
        if nd <= 3:
            def a3(v, fill):
                return [fill] * (3 - nd) + list(v)

            out[n] = J.col2im3d(cols, C, *a3(img, 1), *a3(blk, 1), *a3(strides, 1), *a3(dilations, 1),
                                *a3(pb, 0), *a3(blocks, 1)).reshape(C, *img)
        else:
            out[n] = P.col2im_nd(cols, C, img, blk, strides, dilations, pb, blocks)
    return out.astype(input.dtype, copy=False)


@kernel("MaxUnpool", since=9)
def MaxUnpool(X, I, output_shape=None, *, kernel_shape=None, pads=None, strides=None):  # noqa: E741
    nd = X.ndim - 2
    strides = list(strides or [1] * nd)
    pads = list(pads or [0] * (2 * nd))
    inferred = list(X.shape[:2]) + [(X.shape[2 + d] - 1) * strides[d] - (pads[d] + pads[nd + d]) + kernel_shape[d]
                                    for d in range(nd)]
    idx = np.asarray(I, dtype=np.int64).reshape(-1)
    size = int(np.prod(inferred))
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise ValueError(f"MaxUnpool indices must address the unpooled shape {inferred} inferred from "
                         f"kernel_shape/strides/pads (onnx reference semantics); got indices up to {idx.max()}")
    flat = np.zeros(size, dtype=X.dtype)
    flat[idx] = X.reshape(-1)
    y = flat.reshape(inferred)
    if output_shape is None:
        return y
    # The indices address the inferred shape and output_shape only pads it at the end: the reference and the
    # node test test_maxunpool_export_with_output_shape say so. (onnxruntime scatters into output_shape.)
    res = np.zeros([int(v) for v in np.asarray(output_shape).reshape(-1)], dtype=X.dtype)
    res[tuple(slice(0, s) for s in inferred)] = y
    return res


@kernel("CenterCropPad", since=18)
def CenterCropPad(input_data, shape, *, axes=None):
    rank = input_data.ndim
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    target = [int(v) for v in np.asarray(shape).reshape(-1)]
    src = [slice(None)] * rank
    dst = [slice(None)] * rank
    out_shape = list(input_data.shape)
    for a, t in zip(axes, target, strict=True):
        n = input_data.shape[a]
        out_shape[a] = t
        if t < n:  # crop: the extra element of an odd difference comes off the end
            start = (n - t) // 2
            src[a] = slice(start, start + t)
        elif t > n:  # pad: the extra element of an odd difference goes at the end
            start = (t - n) // 2
            dst[a] = slice(start, start + n)
    res = np.zeros(out_shape, dtype=input_data.dtype)
    res[tuple(dst)] = input_data[tuple(src)]
    return res
