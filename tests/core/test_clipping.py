"""What the report says each quantized activation clips: the int type's range at its scale, the share of the
calibration histogram outside it, the most clipped tensors first, and a Conv output that takes its fused
Relu's range judged on its own range."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.calibration.collectors import RunningStats
from onnxopt.clipping import clipped_fraction, clipping_report, representable_range


def test_representable_range():
    assert representable_range({"scale": 0.1, "zero_point": 0, "dtype": "uint8"}) == pytest.approx((0.0, 25.5))
    assert representable_range({"scale": 0.1, "zero_point": 128, "dtype": "uint8"}) == pytest.approx((-12.8, 12.7))
    assert representable_range({"scale": 0.5, "zero_point": 0, "dtype": "int8"}) == pytest.approx((-64.0, 63.5))
    assert representable_range({"scale_min": 0.1, "scale_max": 0.2, "dtype": "int8"}) is None  # per channel


def test_clipped_fraction_counts_partial_bins_pro_rata():
    hist = (0.0, 10.0, (10,) * 10)
    assert clipped_fraction(hist, 0.0, 5.0) == pytest.approx(0.5)
    assert clipped_fraction(hist, 2.5, 10.0) == pytest.approx(0.25)
    assert clipped_fraction(hist, -1.0, 11.0) == 0.0
    assert clipped_fraction(None, 0.0, 1.0) is None


def _range(values: np.ndarray, method: str = "entropy"):
    st = RunningStats(histogram_bins=512)
    st.update(values)
    return {"minmax": st.minmax, "entropy": st.entropy, "percentile": lambda: st.percentile(99.0)}[method]()


def test_report_ranks_by_clipping_and_judges_shared_ranges_on_their_own(rng):
    tail = np.abs(rng.standard_cauchy(20000)).astype(np.float32)  # long tail: a narrow range clips a share of it
    flat = rng.uniform(0.0, 1.0, 20000).astype(np.float32)
    conv = rng.standard_normal(20000).astype(np.float32)  # a Conv output before its fused Relu
    ranges = {"tail": _range(tail, "percentile"), "flat": _range(flat, "minmax"), "conv": _range(conv)}

    def entry(low: float, high: float) -> dict:
        return {"kind": "activation", "dtype": "uint8", "min": low, "max": high, "scale": (high - low) / 255,
                "zero_point": 0}

    t_high = float(ranges["tail"].threshold_high)  # the 99th percentile cuts the tail
    tensors = {"tail": entry(0.0, t_high), "flat": entry(0.0, float(flat.max())),
               "conv": entry(0.0, float(ranges["conv"].threshold_high)),  # the Relu's range: no negatives
               "w": {"kind": "weight", "dtype": "int8", "scale_min": 0.1, "scale_max": 0.2}}
    hists = clipping_report(tensors, ranges, top=2)
    expected_tail = float(np.mean(tail > t_high))
    assert expected_tail > 0.005 and tensors["tail"]["clipped"] == pytest.approx(expected_tail, rel=0.1)
    assert tensors["flat"]["clipped"] == pytest.approx(0.0, abs=1e-3)
    assert "clipped" not in tensors["w"]
    assert tensors["conv"]["clipped"] < 0.01  # the negatives are the Relu's work, not the range's
    assert list(hists) == ["tail", "conv"]  # the two most clipped, most first
    h = hists["tail"]
    assert 0 < len(h["counts"]) <= 64 and sum(h["counts"]) == tail.size
    assert h["lo"] <= tail.min() and h["hi"] >= tail.max() and (h["low"], h["high"]) == pytest.approx((0.0, t_high))
    assert hists["conv"]["shared"] and not h["shared"] and hists["conv"]["low"] < 0
