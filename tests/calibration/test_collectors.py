"""Collectors against direct numpy computations on data kept in memory."""

import numpy as np
import pytest

from onnxopt.calibration import Entropy, MinMax, Mse, Percentile, StreamingHistogram, make_collector
from onnxopt.calibration.entropy import entropy_search, entropy_search_numpy, mse_search, mse_search_numpy


def _stream(seed=0, n=12, size=5000, growth=0.3, heavy=False):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = rng.standard_t(2, size) if heavy else rng.standard_normal(size)
        out.append((x * (1 + growth * i)).astype(np.float32).reshape(50, -1))
    return out


def _feed(c, xs):
    for x in xs:
        c.update(x)
    return c.result()


def test_minmax_exact_and_stats():
    xs = _stream()
    r = _feed(MinMax(), xs)
    allx = np.concatenate([x.ravel() for x in xs]).astype(np.float64)
    assert r.min == float(allx.min()) and r.max == float(allx.max())
    assert (r.threshold_low, r.threshold_high) == (r.min, r.max)
    assert r.threshold == max(-r.min, r.max)
    assert r.count == allx.size and r.updates == len(xs)
    assert r.mean_abs == pytest.approx(np.abs(allx).mean(), rel=1e-9)


def test_minmax_moving_average():
    xs = _stream()
    r = _feed(MinMax(averaging_constant=0.1), xs)
    lo, hi = float(xs[0].min()), float(xs[0].max())
    for x in xs[1:]:
        lo += 0.1 * (float(x.min()) - lo)
        hi += 0.1 * (float(x.max()) - hi)
    assert r.threshold_low == pytest.approx(lo, rel=1e-12) and r.threshold_high == pytest.approx(hi, rel=1e-12)
    assert r.min < r.threshold_low and r.max > r.threshold_high  # true extremes are kept apart


def test_minmax_per_channel():
    xs = _stream()
    r = _feed(MinMax(axis=1), xs)
    stacked = np.concatenate(xs, axis=0)
    np.testing.assert_array_equal(r.channel_min, stacked.min(axis=0))
    np.testing.assert_array_equal(r.channel_max, stacked.max(axis=0))
    np.testing.assert_array_equal(r.channel_absmax, np.abs(stacked).max(axis=0))


def test_nonfinite_values_are_skipped_and_counted():
    x = np.array([1.0, np.nan, -2.0, np.inf, 0.5], np.float32)
    r = _feed(Entropy(), [x])
    assert (r.min, r.max, r.nonfinite, r.count) == (-2.0, 1.0, 2, 3)


@pytest.mark.parametrize("p", [99.999, 99.9, 99.0, 90.0])
def test_percentile_symmetric_within_one_bin(p):
    xs = _stream(heavy=True)
    c = Percentile(percentile=p)
    r = _feed(c, xs)
    absx = np.abs(np.concatenate([x.ravel() for x in xs]).astype(np.float64))
    want = np.percentile(absx, p, method="inverted_cdf")  # the smallest value with F(value) >= p
    assert abs(r.threshold - want) <= c.stats.hist.width + 1e-9
    assert r.threshold_high == min(r.threshold, r.max) and r.threshold_low == max(-r.threshold, r.min)


def test_percentile_two_sided_within_one_bin():
    rng = np.random.default_rng(3)
    xs = [(rng.standard_normal(4000) + 2.0).astype(np.float32) * (1 + 0.2 * i) for i in range(8)]
    c = Percentile(percentile=99.0, symmetric=False)
    r = _feed(c, xs)
    allx = np.concatenate(xs).astype(np.float64)
    w = c.stats.hist.width
    assert abs(r.threshold_low - np.percentile(allx, 0.5, method="inverted_cdf")) <= w + 1e-9
    assert abs(r.threshold_high - np.percentile(allx, 99.5, method="inverted_cdf")) <= w + 1e-9
    assert r.threshold == max(abs(r.threshold_low), abs(r.threshold_high))


def test_rebinned_histogram_equals_one_shot_histogram():
    xs = _stream(growth=1.5, heavy=True)
    h = StreamingHistogram(64)
    for x in xs:
        h.update(np.ascontiguousarray(x).ravel())
    assert h.range >= max(np.abs(x).max() for x in xs)
    assert h.range == pytest.approx(float(np.abs(xs[0]).max()) * 2 ** round(np.log2(h.range / np.abs(xs[0]).max())))
    counts, edges = h.signed()
    ref, _ = np.histogram(np.concatenate([x.ravel() for x in xs]).astype(np.float64), bins=edges)
    assert counts.sum() == ref.sum()
    # equal up to values on a bin edge landing in the neighbour bin: cumulative counts within a handful
    assert np.abs(np.cumsum(counts) - np.cumsum(ref)).max() <= 3
    assert np.abs(counts - ref).sum() <= 6


def test_histogram_all_zero_first_then_values():
    h = StreamingHistogram(8)
    h.update(np.zeros(10, np.float32))
    assert h.range == 0 and h.total == 10
    h.update(np.array([1.0, -1.0], np.float32))
    assert h.total == 12 and h.absolute()[0] == 10


def test_entropy_below_max_on_heavy_tails_and_full_range_on_uniform():
    heavy = _feed(Entropy(), _stream(heavy=True, growth=0.0, size=20000))
    assert heavy.threshold < 0.5 * heavy.max
    rng = np.random.default_rng(5)
    c = Entropy()
    uni = _feed(c, [rng.uniform(-1, 1, 100_000).astype(np.float32) for _ in range(4)])
    absmax = max(-uni.min, uni.max)
    assert uni.threshold == pytest.approx(absmax, abs=c.stats.hist.width)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jitted_entropy_search_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    h = StreamingHistogram(512)
    for x in _stream(seed=seed, heavy=True):
        h.update(np.ascontiguousarray(x).ravel())
    hist = h.absolute()
    hist[rng.integers(0, 512, 40)] = 0  # empty bins exercise the q == 0 rule
    i, kl = entropy_search(hist)
    i_np, kl_np = entropy_search_numpy(hist)
    assert i == i_np
    assert kl == pytest.approx(kl_np, rel=1e-9)


def test_jitted_mse_search_matches_numpy_and_brute_force():
    h = StreamingHistogram(256)
    xs = _stream(heavy=True)
    for x in xs:
        h.update(np.ascontiguousarray(x).ravel())
    hist = h.absolute()
    assert mse_search(hist)[0] == mse_search_numpy(hist)[0]
    # the chosen threshold really gives a small quantization error on the data itself
    absx = np.abs(np.concatenate([x.ravel() for x in xs]).astype(np.float64))

    def err(t):
        step = t / 127
        return np.mean((absx - np.minimum(np.round(absx / step), 127) * step) ** 2)

    t = mse_search(hist)[0] * h.width
    assert err(t) < err(absx.max())
    assert err(t) <= 1.05 * min(err(s * h.width) for s in range(8, 257, 8))


def test_mse_collector_between_zero_and_max():
    r = _feed(Mse(), _stream(heavy=True))
    assert 0 < r.threshold < max(-r.min, r.max)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_deterministic(method):
    a = _feed(make_collector(method), _stream(heavy=True)).as_dict()
    b = _feed(make_collector(method), _stream(heavy=True)).as_dict()
    assert a == b


def test_bad_options():
    with pytest.raises(ValueError):
        make_collector("kl")
    with pytest.raises(ValueError):
        make_collector("percentile", percentile=120)
    with pytest.raises(ValueError):
        make_collector("entropy", start_bin=64)
    with pytest.raises(ValueError):
        make_collector("minmax", bins=12)


def test_empty_collector_gives_zero_range():
    r = MinMax().result()
    assert (r.min, r.max, r.threshold, r.count) == (0.0, 0.0, 0.0, 0)
