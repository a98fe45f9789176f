"""The same input, options and data give the same bytes out (DESIGN.md: deterministic)."""

from __future__ import annotations

import pytest

from onnxopt.models.zoo import build, sample_inputs
from onnxopt.pipeline import OptimizeOptions, optimize_model


@pytest.mark.parametrize("target,extra", [
    ("generic", {"quantize": "none"}),
    ("x86-vnni", {"quantize": "static"}),
    ("tensorrt", {"quantize": "static"}),
    ("generic", {"quantize": "none", "prune": 0.3}),
    ("x86-vnni", {"weights": "ternary"}),  # the weight plan: sensitivity and back-off, chosen by size, never timed
    ("x86-vnni", {"quantize": "dynamic"}),  # dynamic int8 planned per MatMul/Gemm
])
def test_same_bytes_twice(target, extra):
    model = build("small_cnn")
    calib = [sample_inputs(model, seed=100 + i) for i in range(8)]
    outs = []
    for _ in range(2):
        opts = OptimizeOptions.build(target=target, verify=False, calibration=list(calib), **extra)
        out, _ = optimize_model(model, opts)
        outs.append(out.SerializeToString(deterministic=True))
    assert outs[0] == outs[1]
