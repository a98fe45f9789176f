"""Resize (opsets 10, 11, 13, 18, 19) and Upsample: nearest, linear and cubic, separable per axis.

Each resized axis gets a 1-D sampling plan computed from the spec's coordinate transformation: an index
per output position (nearest) or a dense weight matrix (linear/cubic, with antialias and exclude_outside),
applied axis after axis. tf_crop_and_resize positions outside the input take ``extrapolation_value``.
"""

from __future__ import annotations

import math

import numpy as np

from onnxopt.interp.registry import kernel


def _original_coords(mode: str, out_len: int, in_len: int, scale: float, roi_start: float, roi_end: float):
    x = np.arange(out_len, dtype=np.float64)
    out_f = in_len * scale  # the spec's length_resized: a float when scales are given
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out_len / out_f
        center = in_len / 2
        offset = center * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_f > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * (in_len - 1) / (out_f - 1) if out_f > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_crop_and_resize":
        if out_f > 1:
            return roi_start * (in_len - 1) + x * (roi_end - roi_start) * (in_len - 1) / (out_f - 1)
        return np.full_like(x, 0.5 * (roi_start + roi_end) * (in_len - 1))
    raise ValueError(f"Resize: unknown coordinate_transformation_mode {mode!r}")


def _nearest(x: np.ndarray, nearest_mode: str) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        r = np.where(x == np.floor(x) + 0.5, np.floor(x), np.round(x))
    elif nearest_mode == "round_prefer_ceil":
        r = np.where(x == np.floor(x) + 0.5, np.ceil(x), np.round(x))
    elif nearest_mode == "floor":
        r = np.floor(x)
    elif nearest_mode == "ceil":
        r = np.ceil(x)
    else:
        raise ValueError(f"Resize: unknown nearest_mode {nearest_mode!r}")
    return r.astype(np.int64)


def _cubic(d: np.ndarray, a: float) -> np.ndarray:
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _weights(x, in_len, mode, scale, antialias, cubic_a, exclude_outside) -> np.ndarray:
    """Dense (out_len, in_len) interpolation matrix for linear or cubic sampling at coordinates ``x``."""
    radius = 1 if mode == "linear" else 2
    s = min(scale, 1.0) if antialias else 1.0
    i_start = math.floor(-radius / s) + 1
    offsets = np.arange(i_start, 2 - i_start)
    x0 = np.floor(x)
    taps = x0[:, None] + offsets[None, :]
    d = s * (taps - x[:, None])
    w = np.maximum(0.0, 1 - np.abs(d)) if mode == "linear" else _cubic(d, cubic_a)
    inside = (taps >= 0) & (taps <= in_len - 1)
    if exclude_outside:
        w = np.where(inside, w, 0.0)
    if antialias or exclude_outside:
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1, total)
    idx = np.clip(taps, 0, in_len - 1).astype(np.int64)
    m = np.zeros((x.size, in_len))
    np.add.at(m, (np.repeat(np.arange(x.size), idx.shape[1]), idx.reshape(-1)), w.reshape(-1))
    return m


def _resize(x, scales, sizes, roi, *, mode="nearest", coordinate_transformation_mode="half_pixel",
            cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, nearest_mode="round_prefer_floor",
            antialias=0, axes=None, keep_aspect_ratio_policy="stretch"):
    rank = x.ndim
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    in_shape = [x.shape[a] for a in axes]
    if sizes is not None:
        sz = [int(v) for v in sizes.reshape(-1)]
        sc = [o / i for o, i in zip(sz, in_shape, strict=False)]
        if keep_aspect_ratio_policy != "stretch":
            s = min(sc) if keep_aspect_ratio_policy == "not_larger" else max(sc)
            sc = [s] * len(sc)
            sz = [int(np.round(s * i)) for i in in_shape]
    else:
        sc = [float(v) for v in scales.reshape(-1)]
        sz = [int(math.floor(i * s)) for i, s in zip(in_shape, sc, strict=False)]
    roi_v = None if roi is None or roi.size == 0 else [float(v) for v in roi.reshape(-1)]
    out = x
    outside = None
    n = len(axes)
    for k, a in enumerate(axes):
        in_len, out_len, scale = in_shape[k], sz[k], sc[k]
        if in_len == out_len and scale == 1.0 and coordinate_transformation_mode != "tf_crop_and_resize":
            continue
        r0, r1 = (roi_v[k], roi_v[k + n]) if roi_v is not None and len(roi_v) == 2 * n else (0.0, 1.0)
        if roi_v is not None and len(roi_v) == 2 * rank:
            r0, r1 = roi_v[a], roi_v[a + rank]
        coords = _original_coords(coordinate_transformation_mode, out_len, in_len, scale, r0, r1)
        if coordinate_transformation_mode == "tf_crop_and_resize":
            bad = (coords < 0) | (coords > in_len - 1)
            shape = [1] * rank
            shape[a] = out_len
            bad = bad.reshape(shape)
            outside = bad if outside is None else (outside | bad)
        if mode == "nearest":
            idx = np.clip(_nearest(coords, nearest_mode), 0, in_len - 1)
            out = np.take(out, idx, axis=a)
        else:
            m = _weights(coords, in_len, mode, scale, antialias, cubic_coeff_a, exclude_outside)
            moved = np.moveaxis(out, a, -1)
            out = np.moveaxis(moved.astype(np.float64) @ m.T, -1, a)
    if outside is not None:
        out = np.where(outside, extrapolation_value, out)
    return np.ascontiguousarray(out).astype(x.dtype, copy=False)


def _present(t):
    return None if t is None or t.size == 0 else t


@kernel("Resize", since=10)
def Resize_10(x, scales, mode="nearest"):
    return _resize(x, scales, None, None, mode=mode, coordinate_transformation_mode="asymmetric",
                   nearest_mode="floor")


@kernel("Resize", since=11)
def Resize(x, roi=None, scales=None, sizes=None, **attrs):
    return _resize(x, _present(scales), _present(sizes), roi, **attrs)


@kernel("Upsample", since=7)
def Upsample(x, scales_in=None, mode="nearest", scales=None):
    sc = np.asarray(scales if scales_in is None else scales_in, dtype=np.float64)
    return _resize(x, sc, None, None, mode="linear" if mode in ("linear", "bilinear") else mode,
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")
