"""Streaming histogram and the threshold searches over it (numba kernels + plain numpy twins for tests).

The histogram is symmetric about zero: ``2 * bins`` equal bins over ``[-R, R]``, so folding it gives the
``bins``-bin histogram of ``|x|`` over ``[0, R]`` exactly. ``R`` starts at the first sample's ``max |x|`` and
doubles whenever a sample exceeds it; doubling merges neighbouring bin pairs (edges stay aligned, so the
merged histogram equals one computed over the final range in one go, up to floating-point edge ties).
Memory is ``2 * bins`` counters whatever the number of samples.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = [
    "StreamingHistogram",
    "entropy_search",
    "entropy_search_numpy",
    "mse_search",
    "mse_search_numpy",
    "scan",
]


@njit(cache=True, nogil=True)
def _scan(x):  # pragma: no cover - jitted; the slow path, for arrays holding NaN or inf
    mn = np.inf
    mx = -np.inf
    sabs = 0.0
    bad = 0
    for i in range(x.size):
        v = x[i]
        if not np.isfinite(v):
            bad += 1
            continue
        if v < mn:
            mn = v
        if v > mx:
            mx = v
        sabs += abs(v)
    return float(mn), float(mx), sabs, bad


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _sum_abs(x):  # pragma: no cover - jitted; reassociation lets it vectorize, NaN/inf still propagate
    s = 0.0
    for i in range(x.size):
        s += abs(np.float64(x[i]))
    return s


@njit(cache=True, nogil=True)
def _bin(x, hist, r, check):  # pragma: no cover - jitted
    nb = hist.size
    half = nb // 2
    scale = half / r
    # four interleaved partial histograms break the store-to-load chain when values repeat a bin
    part = np.zeros((4, nb), dtype=np.int64)
    n = x.size
    for i in range(n):
        v = x[i]
        if check and not np.isfinite(v):
            continue
        f = v * scale + half
        k = int(f) if f > 0 else 0
        if k >= nb:
            k = nb - 1
        part[i & 3, k] += 1
    for j in range(4):
        for k in range(nb):
            hist[k] += part[j, k]


def scan(x: np.ndarray) -> tuple[float, float, float, int]:
    """(min, max, sum |x|, count of NaN/inf) of the finite values of a flat float array."""
    if x.size == 0:
        return np.inf, -np.inf, 0.0, 0
    mn, mx = float(x.min()), float(x.max())  # SIMD in numpy; NaN propagates
    if math.isfinite(mn) and math.isfinite(mx):
        return mn, mx, _sum_abs(x), 0
    return _scan(x)


class StreamingHistogram:
    """Histogram of a stream of float arrays over ``[-R, R]`` with ``2 * bins`` bins; ``R`` doubles as needed."""

    def __init__(self, bins: int = 2048):
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {bins}")
        self.bins = bins
        self.counts = np.zeros(2 * bins, dtype=np.int64)
        self.range = 0.0  # R; 0 until a nonzero value arrives
        self._zeros = 0  # zeros seen while R == 0

    def update(self, flat: np.ndarray, absmax: float | None = None, nonfinite: bool = True) -> None:
        """Add a flat float32/float64 array.

        ``absmax`` (max |x| over its finite values) and ``nonfinite`` (whether it holds NaN/inf) when known.
        """
        if absmax is None:
            mn, mx, _, bad = scan(flat)
            absmax = max(abs(mn), abs(mx)) if mn <= mx else 0.0
            nonfinite = bad > 0
        if absmax == 0.0:
            if self.range == 0.0:
                self._zeros += int(np.count_nonzero(flat == 0))
                return
        elif self.range == 0.0:
            self.range = float(absmax)
            self.counts[self.bins] += self._zeros
            self._zeros = 0
        while absmax > self.range:
            self._double()
        _bin(flat, self.counts, self.range, nonfinite)

    def _double(self) -> None:
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        self.counts[:] = 0
        q = self.bins // 2
        self.counts[q : q + self.bins] = merged
        self.range *= 2.0

    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self._zeros

    @property
    def width(self) -> float:
        """Bin width (0 while nothing nonzero has been seen)."""
        return self.range / self.bins

    def signed(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) over [-R, R]."""
        edges = np.linspace(-self.range, self.range, 2 * self.bins + 1)
        counts = self.counts.copy()
        counts[self.bins] += self._zeros
        return counts, edges

    def absolute(self) -> np.ndarray:
        """Counts of |x| over ``bins`` bins of [0, R] (bin k covers [k w, (k+1) w))."""
        out = self.counts[self.bins :] + self.counts[: self.bins][::-1]
        out[0] += self._zeros
        return out


@njit(cache=True, nogil=True)
def _entropy_search(hist, start, levels):  # pragma: no cover - jitted
    # O(levels) per candidate with prefix sums: for chunk j with count c_j over nz_j nonempty bins every
    # nonempty bin has q = c_j / nz_j, so sum_k p_k log q_k = sum_j c_j log(c_j / nz_j) (+ the outliers
    # folded into the last bin), and sum_k p_k log p_k comes from a prefix sum of h log h.
    n = hist.size
    csum = np.zeros(n + 1)
    cnz = np.zeros(n + 1, dtype=np.int64)
    chlh = np.zeros(n + 1)
    for k in range(n):
        h = hist[k]
        csum[k + 1] = csum[k] + h
        cnz[k + 1] = cnz[k] + (1 if h > 0 else 0)
        chlh[k + 1] = chlh[k] + (h * math.log(h) if h > 0 else 0.0)
    total = csum[n]
    best_i = n
    best_kl = np.inf
    for i in range(start, n + 1):
        outliers = total - csum[i]
        last = hist[i - 1]
        if last == 0 and outliers > 0:
            continue  # p > 0 where q == 0: infinite divergence
        qsum = csum[i]
        if total == 0.0 or qsum == 0.0:
            continue
        plast = last + outliers
        plogp = chlh[i - 1] + (plast * math.log(plast) if plast > 0 else 0.0)
        plogq = 0.0
        qlast = 0.0
        for j in range(levels):
            a = (j * i) // levels
            b = ((j + 1) * i) // levels
            c = csum[b] - csum[a]
            nz = cnz[b] - cnz[a]
            if c > 0:
                qj = c / nz
                plogq += c * math.log(qj)
                if j == levels - 1:
                    qlast = qj
        if outliers > 0:
            plogq += outliers * math.log(qlast)
        kl = (plogp - plogq) / total + math.log(qsum / total)
        if kl < best_kl:
            best_kl = kl
            best_i = i
    return best_i, best_kl


def entropy_search(hist: np.ndarray, start: int = 128, levels: int = 128) -> tuple[int, float]:
    """TensorRT-style KL search over an |x| histogram: (number of bins kept, its KL divergence).

    For each candidate ``i`` in ``[start, len(hist)]`` the reference ``p`` is ``hist[:i]`` with everything
    above folded into its last bin; the candidate ``q`` merges ``hist[:i]`` into ``levels`` chunks and spreads
    each chunk's count evenly over the chunk's nonempty bins. The smallest KL(p || q) wins (first on ties);
    a candidate where ``q`` is 0 where ``p`` is not has infinite KL. The threshold is ``i`` bin widths.
    """
    if start < levels:
        raise ValueError(f"start ({start}) must be at least levels ({levels})")
    h = np.ascontiguousarray(hist, dtype=np.float64)
    if start > h.size:
        return h.size, 0.0
    i, kl = _entropy_search(h, start, levels)
    return int(i), float(kl)


def entropy_search_numpy(hist: np.ndarray, start: int = 128, levels: int = 128) -> tuple[int, float]:
    """The same search as ``entropy_search`` in plain numpy (slow; for tests)."""
    h = np.asarray(hist, dtype=np.float64)
    n = h.size
    best_i, best_kl = n, np.inf
    for i in range(start, n + 1):
        p = h[:i].copy()
        p[-1] += h[i:].sum()
        bounds = (np.arange(levels + 1) * i) // levels
        chunk = np.repeat(np.arange(levels), np.diff(bounds))
        sums = np.bincount(chunk, weights=h[:i], minlength=levels)
        nz = np.bincount(chunk, weights=(h[:i] > 0).astype(np.float64), minlength=levels)
        q = np.where(h[:i] > 0, sums[chunk] / np.maximum(nz[chunk], 1), 0.0)
        if p.sum() == 0 or q.sum() == 0:
            continue
        mask = p > 0
        if np.any(q[mask] == 0):
            continue
        pn = p[mask] / p.sum()
        kl = float(np.sum(pn * np.log(pn / (q[mask] / q.sum()))))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i, best_kl


@njit(cache=True, nogil=True)
def _round_err_integral(x, step):  # pragma: no cover - jitted
    # integral over [0, x] of (u - step * round(u / step))^2 du: whole periods plus the partial one
    n = math.floor(x / step + 0.5)
    r = x - n * step
    return n * step**3 / 12.0 + (r**3 + step**3 / 8.0) / 3.0 - step**3 / 24.0


@njit(cache=True, nogil=True)
def _mse_search(hist, levels, start):  # pragma: no cover - jitted
    n = hist.size
    best_i = n
    best = np.inf
    for i in range(start, n + 1):
        t = float(i)  # in units of bin width; values in a bin are taken as uniform over it
        step = t / levels
        err = 0.0
        for k in range(n):
            if hist[k] == 0:
                continue
            a = float(k)
            b = a + 1.0
            e = 0.0
            if a < t:
                e += _round_err_integral(min(b, t), step) - _round_err_integral(a, step)
            if b > t:
                lo = max(a, t) - t
                e += ((b - t) ** 3 - lo**3) / 3.0
            err += hist[k] * e
        if err < best:
            best = err
            best_i = i
    return best_i, best


def mse_search(hist: np.ndarray, levels: int = 127, start: int = 1) -> tuple[int, float]:
    """Threshold (in bins) minimising the expected squared error of quantizing |x| to ``levels`` steps.

    Values are taken as uniform within their bin; below the threshold ``t`` they round to the nearest
    multiple of ``t / levels``, above it they clip to ``t``. The expected error is integrated exactly under
    that assumption. Returns (bins kept, error in bin widths^2 summed over counts).
    """
    h = np.ascontiguousarray(hist, dtype=np.float64)
    i, err = _mse_search(h, levels, max(1, start))
    return int(i), float(err)


def _round_err_integral_np(x: np.ndarray, step: float) -> np.ndarray:
    n = np.floor(x / step + 0.5)
    r = x - n * step
    return n * step**3 / 12.0 + (r**3 + step**3 / 8.0) / 3.0 - step**3 / 24.0


def mse_search_numpy(hist: np.ndarray, levels: int = 127, start: int = 1) -> tuple[int, float]:
    """The same search as ``mse_search`` in plain numpy (for tests)."""
    h = np.asarray(hist, dtype=np.float64)
    n = h.size
    a = np.arange(n, dtype=np.float64)
    b = a + 1.0
    best_i, best = n, np.inf
    for i in range(max(1, start), n + 1):
        t = float(i)
        step = t / levels
        inside = np.where(a < t, _round_err_integral_np(np.minimum(b, t), step) - _round_err_integral_np(a, step), 0)
        lo = np.maximum(a, t) - t
        clipped = np.where(b > t, ((b - t) ** 3 - lo**3) / 3.0, 0.0)
        err = float(np.sum(h * (inside + clipped)))
        if err < best:
            best_i, best = i, err
    return best_i, best
