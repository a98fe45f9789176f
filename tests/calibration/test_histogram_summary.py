"""The coarse histogram each TensorRange carries for reports: every finite value counted, at most 64 bins over the
occupied range, kept for minmax only when asked (``summary_bins``), and nothing else about the range changes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxopt.calibration import calibrate
from onnxopt.calibration.collectors import SUMMARY_BINS, RunningStats, histogram_summary


@pytest.mark.parametrize("bins", [2, 64, 512, 2048])
def test_summary_counts_every_value_over_the_occupied_range(rng, bins):
    st = RunningStats(histogram_bins=bins)
    parts = [np.maximum(rng.standard_normal(5000), 0) * s for s in (1.0, 3.0, 0.5)]  # the range doubles once
    for p in parts:
        st.update(p.astype(np.float32))
    lo, hi, counts = histogram_summary(st.hist)
    allv = np.concatenate(parts)
    assert sum(counts) == allv.size and 0 < len(counts) <= SUMMARY_BINS
    width = 2 * st.hist.range / (2 * bins)
    assert lo <= allv.min() and allv.min() - lo <= width  # starts at the first occupied bin
    assert hi >= allv.max() and hi - allv.max() <= (hi - lo) / len(counts) + width


def _mlp() -> onnx.ModelProto:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.linspace(-1, 1, 16).astype(np.float32))
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_minmax_keeps_a_histogram_only_when_asked(rng):
    feeds = [{"x": rng.standard_normal((1, 4)).astype(np.float32)} for _ in range(8)]
    plain = calibrate(_mlp(), feeds, method="minmax", engine="onnxruntime", progress=False)
    summed = calibrate(_mlp(), feeds, method="minmax", engine="onnxruntime", progress=False, summary_bins=256)
    assert all(r.histogram is None for r in plain.values())
    for name, r in summed.items():
        lo, hi, counts = r.histogram
        assert sum(counts) == r.count == 32 and lo <= r.min and hi >= r.max, name
        a, b = plain[name].as_dict(), r.as_dict()
        a.pop("histogram"), b.pop("histogram")
        assert a == b, name  # the range itself is the same with or without the histogram
