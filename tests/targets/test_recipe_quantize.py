"""quantize auto: the speed check keeps the float model when int8 does not run faster on this machine."""

from __future__ import annotations

from collections import Counter

import pytest

from onnxopt.models.zoo import build, sample_inputs
from onnxopt.pipeline import OptimizeOptions, optimize_model
from onnxopt.targets import get_target, recipe_quantize


def optimize(target: str, monkeypatch, timings, quantize: str = "auto"):
    calls = []

    def fake_latencies(models, feed, rounds=15):
        calls.append(len(models))
        return list(timings)

    monkeypatch.setattr(recipe_quantize, "median_latencies_ms", fake_latencies)
    model = build("resnet18")
    calib = [sample_inputs(model, seed=100 + i) for i in range(4)]
    out, report = optimize_model(model, OptimizeOptions(target=target, extra={"calibration": calib,
                                                                              "quantize": quantize}))
    return Counter(n.op_type for n in out.graph.node), report, calls


def test_int8_kept_when_clearly_faster(monkeypatch):
    ops, report, calls = optimize("x86-vnni", monkeypatch, [30.0, 10.0])
    assert calls == [2] and ops["QuantizeLinear"] > 0
    assert report["speed_check"]["kept"] == "int8" and report["quantization"]["mode"] == "static"


@pytest.mark.parametrize("int8_ms", [29.0, 31.0])  # not 5% faster, or slower
def test_float_kept_when_int8_is_not_faster(monkeypatch, caplog, int8_ms):
    ops, report, _ = optimize("generic", monkeypatch, [30.0, int8_ms])
    assert ops["QuantizeLinear"] == 0 and ops["DequantizeLinear"] == 0
    assert report["speed_check"] == {"float_ms": 30.0, "int8_ms": int8_ms, "kept": "float",
                                     "engine": "onnxruntime CPU, 1 thread"}
    assert report["verify"]["ok"]
    assert "kept the model float" in caplog.text


@pytest.mark.parametrize("target,quantize", [("arm", "auto"), ("tensorrt", "auto"), ("x86-vnni", "static")])
def test_no_timing_where_the_host_is_not_the_target_or_the_mode_is_forced(monkeypatch, target, quantize):
    ops, report, calls = optimize(target, monkeypatch, [30.0, 60.0], quantize=quantize)
    assert calls == [] and "speed_check" not in report and ops["QuantizeLinear"] > 0


def test_measure_on_host_per_target():
    assert {t: get_target(t).measure_on_host for t in ("generic", "x86-vnni", "x86-avx2", "arm", "tensorrt")} == {
        "generic": True, "x86-vnni": True, "x86-avx2": False, "arm": False, "tensorrt": False}


def test_median_latencies_are_measured_per_model():
    model = build("small_cnn")
    a_ms, b_ms = recipe_quantize.median_latencies_ms([model, model], sample_inputs(model), rounds=5)
    assert a_ms > 0 and b_ms > 0
    assert 1 / 5 < a_ms / b_ms < 5  # the same model, interleaved: the two medians agree
