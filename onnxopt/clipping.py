"""How much of each quantized activation its chosen range clips, and the histograms a report draws.

Why: a quantized tensor loses accuracy in two ways, rounding inside its range and clipping outside it. The
calibration method trades one for the other (minmax clips nothing and rounds coarsely on long tails; entropy
and percentile clip the tail), and a user chasing lost accuracy needs to see, per tensor, the distribution
against the range that was chosen. Calibration keeps a coarse histogram per tensor (``TensorRange.histogram``);
this module turns it into report data:

- ``representable_range(entry)``: the float range ``[(qmin - zp) * scale, (qmax - zp) * scale]`` of a
  quantization-report tensor entry (``scale``, ``zero_point``, ``dtype``), what the int type can hold;
- ``clipped_fraction(histogram, low, high)``: the share of calibration values outside ``[low, high]`` (a bin
  partly outside counts pro rata);
- ``clipping_report(tensors, ranges, top)``: adds ``clipped`` to each activation entry and returns the
  ``histograms`` of the ``top`` most clipped tensors (ties: widest range over mean |x|, where minmax rounds
  worst): ``{tensor: {"lo", "hi", "counts", "low", "high", "clipped", "method", "shared"}}``: the histogram
  spans ``[lo, hi]``, the range judged is ``[low, high]``; a bounded size (``top`` x at most 64 counts) whatever
  the model. ``shared``: the tensor is quantized with another tensor's narrower range (a Conv output with the
  range of the Relu/Clip fused after it, whose clipping is that op's own); it is judged against its own
  calibrated range instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

TOP_HISTOGRAMS = 16

_INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767),
               "uint4": (0, 15), "int4": (-8, 7), "int32": (-(2 ** 31), 2 ** 31 - 1)}


def representable_range(entry: Mapping[str, Any]) -> tuple[float, float] | None:
    """The float range an activation's int type holds at its scale and zero point; None when not per tensor."""
    scale, zp, dtype = entry.get("scale"), entry.get("zero_point", 0), entry.get("dtype")
    if not isinstance(scale, (int, float)) or not isinstance(zp, (int, float)) or dtype not in _INT_RANGES:
        return None
    qmin, qmax = _INT_RANGES[str(dtype)]
    return float((qmin - zp) * scale), float((qmax - zp) * scale)


def clipped_fraction(histogram: tuple[float, float, tuple[int, ...]] | None, low: float, high: float) -> float | None:
    """Share of the histogram's values outside ``[low, high]``; None without a histogram."""
    if not histogram:
        return None
    lo, hi, counts = histogram
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total == 0 or hi <= lo:
        return 0.0
    edges = np.linspace(lo, hi, c.size + 1)
    width = edges[1] - edges[0]
    below = np.clip((low - edges[:-1]) / width, 0.0, 1.0)  # share of each bin under ``low``
    above = np.clip((edges[1:] - high) / width, 0.0, 1.0)
    return float(np.sum(c * np.minimum(below + above, 1.0)) / total)


def clipping_report(tensors: dict[str, dict[str, Any]], ranges: Mapping[str, Any], top: int = TOP_HISTOGRAMS
                    ) -> dict[str, dict[str, Any]]:
    """Add ``clipped`` to each activation entry of ``tensors`` that has a histogram in ``ranges`` (tensor ->
    TensorRange) and return the histograms of the ``top`` most clipped ones (see the module docstring)."""
    found: list[tuple[float, float, str, tuple[float, float], Any]] = []
    for name, entry in tensors.items():
        rng = ranges.get(name)
        hist = getattr(rng, "histogram", None)
        span = representable_range(entry) if entry.get("kind") == "activation" else None
        if hist is None or span is None:
            continue
        shared = _takes_another_range(entry, rng)
        if shared:  # clipping to the fused Relu/Clip's range is that op's own work: judge the tensor's own range
            span = (min(rng.threshold_low, 0.0), max(rng.threshold_high, 0.0))
        clipped = clipped_fraction(hist, *span)
        entry["clipped"] = round(float(clipped), 6)
        tail = (rng.max - rng.min) / rng.mean_abs if rng.mean_abs > 0 else 0.0
        found.append((clipped, tail, name, span, rng, shared))
    found.sort(key=lambda f: (-f[0], -f[1], f[2]))
    out: dict[str, dict[str, Any]] = {}
    for clipped, _, name, (low, high), rng, shared in found[:max(0, top)]:
        lo, hi, counts = rng.histogram
        out[name] = {"lo": lo, "hi": hi, "counts": list(counts), "low": low, "high": high,
                     "clipped": round(float(clipped), 6), "method": rng.method, "shared": shared}
    return out


def _takes_another_range(entry: Mapping[str, Any], rng: Any) -> bool:
    """Whether the tensor's quantization range is narrower than its own calibrated range: it then takes the range
    of another tensor (a Conv output taking the range of the Relu/Clip fused after it); a group otherwise spans
    the union of its members' ranges."""
    lo, hi = entry.get("min"), entry.get("max")
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)):
        return False
    slack = 1e-6 * max(abs(rng.threshold_low), abs(rng.threshold_high), 1e-30)
    return lo > min(rng.threshold_low, 0.0) + slack or hi < max(rng.threshold_high, 0.0) - slack
