"""Per-tensor collectors: fold each sample's tensor into running statistics and drop it.

A collector has ``update(x)`` and ``result() -> TensorRange``. All of them keep constant memory (running
extremes and sums, optionally per-channel extremes, optionally one streaming histogram), and give the same
result for the same stream of arrays.

``TensorRange`` carries both forms a quantizer needs: an asymmetric range ``(threshold_low,
threshold_high)`` (always inside the observed ``[min, max]``) and a symmetric absolute ``threshold``. What
they mean per method:

- ``minmax``: the observed min and max (or their moving averages over updates, with
  ``averaging_constant``); ``threshold = max(|low|, |high|)``.
- ``percentile``: ``threshold`` is the ``percentile`` of ``|x|`` (default 99.999 as onnxruntime), and
  ``(low, high) = (max(min, -t), min(max, t))``; with ``symmetric=False`` low and high are the
  ``(100 - p) / 2`` and ``100 - (100 - p) / 2`` percentiles of ``x`` and ``threshold = max(|low|, |high|)``.
  Accurate to one histogram bin (conservatively rounded outward).
- ``entropy``: TensorRT's KL search on the histogram of ``|x|`` (``bins`` 2048, ``levels`` 128, from bin
  ``start_bin`` 128); low/high as for percentile.
- ``mse``: the |x| threshold minimising the expected squared quantization error with ``levels`` steps
  (default 127, symmetric int8); low/high as for percentile.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from onnxopt.calibration.entropy import StreamingHistogram, entropy_search, mse_search, scan

__all__ = [
    "METHODS",
    "Collector",
    "Entropy",
    "MinMax",
    "Mse",
    "Percentile",
    "RunningStats",
    "TensorRange",
    "derive",
    "histogram_summary",
    "make_collector",
]

METHODS = ("minmax", "percentile", "entropy", "mse")
SUMMARY_BINS = 64  # TensorRange.histogram: few enough bins that a report can carry many tensors


def histogram_summary(hist: StreamingHistogram, bins: int = SUMMARY_BINS
                      ) -> tuple[float, float, tuple[int, ...]] | None:
    """The occupied part of ``hist`` in at most ``bins`` equal bins (neighbours merged, edges kept exact)."""
    counts, edges = hist.signed()
    nz = np.flatnonzero(counts)
    if nz.size == 0 or hist.range == 0.0:
        return None
    first, span = int(nz[0]), int(nz[-1]) + 1 - int(nz[0])
    k = -(-span // bins)  # original bins per summary bin
    n = -(-span // k)
    part = np.zeros(n * k, dtype=np.int64)
    got = counts[first:first + n * k]
    part[:got.size] = got
    width = float(edges[1] - edges[0])
    return float(edges[first]), float(edges[first]) + n * k * width, tuple(int(c) for c in part.reshape(n, k).sum(1))


@dataclass(frozen=True, eq=False)
class TensorRange:
    """What calibration learned about one tensor (floats are Python floats)."""

    min: float  # observed minimum over all finite values
    max: float  # observed maximum
    threshold_low: float  # the method's asymmetric range, inside [min, max]
    threshold_high: float
    threshold: float  # the method's symmetric |x| threshold
    method: str
    count: int = 0  # finite values seen
    updates: int = 0  # arrays folded in (samples, or loop iterations inside subgraphs)
    mean_abs: float = 0.0
    nonfinite: int = 0  # NaN / inf values skipped
    channel_axis: int | None = None
    channel_min: np.ndarray | None = field(default=None, repr=False)
    channel_max: np.ndarray | None = field(default=None, repr=False)
    # (lo, hi, counts): x over [lo, hi] in len(counts) equal bins, when a histogram was kept (histogram methods,
    # or calibrate(summary_bins=...)); the HTML report draws it against the chosen range
    histogram: tuple[float, float, tuple[int, ...]] | None = field(default=None, repr=False)

    @property
    def channel_absmax(self) -> np.ndarray | None:
        if self.channel_min is None or self.channel_max is None:
            return None
        return np.maximum(np.abs(self.channel_min), np.abs(self.channel_max))

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("channel_min", "channel_max"):
            if d[k] is not None:
                d[k] = d[k].tolist()
        return d


@runtime_checkable
class Collector(Protocol):
    def update(self, x: np.ndarray) -> None: ...

    def result(self) -> TensorRange: ...


def _flat_float(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32 if a.dtype.itemsize <= 4 else np.float64)
    return np.ascontiguousarray(a).reshape(-1)


class RunningStats:
    """Everything the collectors share: extremes, counts, mean |x|, optional EMA, per-channel, histogram."""

    def __init__(
        self,
        *,
        histogram_bins: int | None = None,
        averaging_constant: float | None = None,
        channel_axis: int | None = None,
    ):
        if averaging_constant is not None and not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.min = np.inf
        self.max = -np.inf
        self.sum_abs = 0.0
        self.count = 0
        self.nonfinite = 0
        self.updates = 0
        self.averaging_constant = averaging_constant
        self.avg_min: float | None = None
        self.avg_max: float | None = None
        self.channel_axis = channel_axis
        self.channel_min: np.ndarray | None = None
        self.channel_max: np.ndarray | None = None
        self.hist = StreamingHistogram(histogram_bins) if histogram_bins else None

    def update(self, x: np.ndarray) -> None:
        flat = _flat_float(x)
        mn, mx, sabs, bad = scan(flat)
        self.updates += 1
        self.nonfinite += bad
        finite = flat.size - bad
        if finite == 0:
            return
        self.fold(finite, sabs, mn, mx)
        if self.channel_axis is not None:
            self._update_channels(np.asarray(x))
        if self.hist is not None:
            self.hist.update(flat, max(abs(mn), abs(mx)), bad > 0)

    def fold(self, count: int, sum_abs: float, mn: float, mx: float) -> None:
        """Fold the reductions of ``count`` (> 0) finite values: extremes, counts, mean |x| and the EMA.

        ``update`` calls it after reducing an array; the onnxruntime engine, which reduces on the device side,
        calls it directly (``updates`` is the caller's to count)."""
        self.count += count
        self.sum_abs += sum_abs
        self.min = min(self.min, mn)
        self.max = max(self.max, mx)
        c = self.averaging_constant
        if c is not None:
            self.avg_min = mn if self.avg_min is None else self.avg_min + c * (mn - self.avg_min)
            self.avg_max = mx if self.avg_max is None else self.avg_max + c * (mx - self.avg_max)

    def fold_channels(self, cmin: np.ndarray, cmax: np.ndarray) -> None:
        """Fold per-channel extremes (NaN where a channel had no finite value) into the running ones."""
        if self.channel_min is None:
            self.channel_min, self.channel_max = cmin, cmax
        elif self.channel_min.shape != cmin.shape:
            raise ValueError(f"channel count changed between samples on axis {self.channel_axis}: "
                             f"{self.channel_min.size} -> {cmin.size}")
        else:
            self.channel_min = np.fmin(self.channel_min, cmin)
            self.channel_max = np.fmax(self.channel_max, cmax)

    def _update_channels(self, x: np.ndarray) -> None:
        axis = self.channel_axis
        if not -x.ndim <= axis < x.ndim:
            raise ValueError(f"channel axis {axis} is out of range for a tensor of shape {list(x.shape)}")
        per = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1).astype(np.float64)
        per = np.where(np.isfinite(per), per, np.nan)
        with warnings.catch_warnings():  # a channel with no finite value stays NaN; fold_channels skips it
            warnings.simplefilter("ignore", RuntimeWarning)
            cmin = np.nanmin(per, axis=1) if per.shape[1] else np.full(per.shape[0], np.nan)
            cmax = np.nanmax(per, axis=1) if per.shape[1] else np.full(per.shape[0], np.nan)
        self.fold_channels(cmin, cmax)

    # -- results -----------------------------------------------------------------------------------
    def _base(self, method: str, low: float, high: float, threshold: float) -> TensorRange:
        if self.count == 0:
            lo = hi = 0.0
            low = high = threshold = 0.0
        else:
            lo, hi = float(self.min), float(self.max)
        return TensorRange(
            min=lo, max=hi, threshold_low=float(low), threshold_high=float(high), threshold=float(threshold),
            method=method, count=self.count, updates=self.updates,
            mean_abs=self.sum_abs / self.count if self.count else 0.0, nonfinite=self.nonfinite,
            channel_axis=self.channel_axis, channel_min=self.channel_min, channel_max=self.channel_max,
            histogram=None if self.hist is None or self.count == 0 else histogram_summary(self.hist),
        )

    def _symmetric(self, method: str, t: float) -> TensorRange:
        t = min(float(t), max(abs(self.min), abs(self.max))) if self.count else 0.0
        low = max(float(self.min), -t) if self.count else 0.0
        high = min(float(self.max), t) if self.count else 0.0
        return self._base(method, low, high, t)

    def minmax(self) -> TensorRange:
        if self.count == 0:
            return self._base("minmax", 0.0, 0.0, 0.0)
        if self.averaging_constant is not None:
            low, high = float(self.avg_min), float(self.avg_max)
        else:
            low, high = float(self.min), float(self.max)
        return self._base("minmax", low, high, max(abs(low), abs(high)))

    def _need_hist(self) -> StreamingHistogram:
        if self.hist is None:
            raise ValueError("this method needs a histogram: create RunningStats with histogram_bins")
        return self.hist

    def percentile(self, percentile: float = 99.999, symmetric: bool = True) -> TensorRange:
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        h = self._need_hist()
        if self.count == 0 or h.range == 0.0:
            return self._base("percentile", 0.0, 0.0, 0.0)
        w = h.width
        if symmetric:
            counts = h.absolute()
            cdf = np.cumsum(counts) / counts.sum()
            idx = min(int(np.searchsorted(cdf, percentile / 100.0)), counts.size - 1)
            return self._symmetric("percentile", (idx + 1) * w)
        counts, edges = h.signed()
        cdf = np.cumsum(counts) / counts.sum()
        cut = (100.0 - percentile) / 200.0
        lo_idx = min(int(np.searchsorted(cdf, cut)), counts.size - 1)
        hi_idx = min(int(np.searchsorted(cdf, 1.0 - cut)), counts.size - 1)
        low = max(float(edges[lo_idx]), float(self.min))
        high = min(float(edges[hi_idx + 1]), float(self.max))
        return self._base("percentile", low, high, max(abs(low), abs(high)))

    def entropy(self, levels: int = 128, start_bin: int = 128) -> TensorRange:
        h = self._need_hist()
        if self.count == 0 or h.range == 0.0:
            return self._base("entropy", 0.0, 0.0, 0.0)
        i, _ = entropy_search(h.absolute(), start=start_bin, levels=levels)
        return self._symmetric("entropy", i * h.width)

    def mse(self, levels: int = 127) -> TensorRange:
        h = self._need_hist()
        if self.count == 0 or h.range == 0.0:
            return self._base("mse", 0.0, 0.0, 0.0)
        i, _ = mse_search(h.absolute(), levels=levels)
        return self._symmetric("mse", i * h.width)


def derive(stats: RunningStats, method: str, **options: Any) -> TensorRange:
    """The TensorRange of ``method`` from stats (histogram options such as ``bins`` are ignored here)."""
    opts = {k: v for k, v in options.items() if k not in ("bins", "averaging_constant", "axis")}
    if method == "minmax":
        return stats.minmax()
    if method == "percentile":
        return stats.percentile(**opts)
    if method == "entropy":
        return stats.entropy(**opts)
    if method == "mse":
        return stats.mse(**opts)
    raise ValueError(f"unknown calibration method {method!r}; choose one of {METHODS}")


class MinMax:
    """Observed min/max; with ``averaging_constant`` the range is a moving average of per-update extremes."""

    def __init__(self, averaging_constant: float | None = None, axis: int | None = None):
        self.stats = RunningStats(averaging_constant=averaging_constant, channel_axis=axis)

    def update(self, x: np.ndarray) -> None:
        self.stats.update(x)

    def result(self) -> TensorRange:
        return self.stats.minmax()


class _HistogramCollector:
    method = ""

    def __init__(self, bins: int = 2048, axis: int | None = None, **options: Any):
        self.options = options
        self.stats = RunningStats(histogram_bins=bins, channel_axis=axis)

    def update(self, x: np.ndarray) -> None:
        self.stats.update(x)

    def result(self) -> TensorRange:
        return derive(self.stats, self.method, **self.options)


class Percentile(_HistogramCollector):
    """Percentile of |x| (default 99.999), or of x on both sides with ``symmetric=False``."""

    method = "percentile"

    def __init__(self, percentile: float = 99.999, symmetric: bool = True, bins: int = 2048, axis: int | None = None):
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        super().__init__(bins, axis, percentile=percentile, symmetric=symmetric)


class Entropy(_HistogramCollector):
    """TensorRT-style KL threshold: ``bins``-bin |x| histogram, ``levels`` quantized bins, from ``start_bin``."""

    method = "entropy"

    def __init__(self, bins: int = 2048, levels: int = 128, start_bin: int = 128, axis: int | None = None):
        if start_bin < levels:
            raise ValueError(f"start_bin ({start_bin}) must be at least levels ({levels})")
        super().__init__(bins, axis, levels=levels, start_bin=start_bin)


class Mse(_HistogramCollector):
    """|x| threshold minimising the expected squared quantization error with ``levels`` steps per side."""

    method = "mse"

    def __init__(self, levels: int = 127, bins: int = 2048, axis: int | None = None):
        super().__init__(bins, axis, levels=levels)


def make_collector(method: str, **options: Any) -> Collector:
    """A collector for ``method`` ("minmax", "percentile", "entropy", "mse") with its options."""
    classes = {"minmax": MinMax, "percentile": Percentile, "entropy": Entropy, "mse": Mse}
    if method not in classes:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {METHODS}")
    try:
        return classes[method](**options)
    except TypeError as exc:
        raise ValueError(f"bad options for calibration method {method!r}: {exc}") from exc
