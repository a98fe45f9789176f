"""quantize auto: the speed check keeps the float model when int8 does not run faster on this machine."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from onnxopt import host
from onnxopt.models.zoo import build, sample_inputs
from onnxopt.pipeline import OptimizeOptions, optimize_model
from onnxopt.targets import recipe_quantize

# the timing decision must not depend on the machine running the tests: they run as on a VNNI x86 host
VNNI_HOST = host.HostInfo(arch="x86_64", cpu="test Xeon", features={
    "avx2": True, "avx512f": True, "avx512_vnni": True, "avx_vnni": False, "amx_int8": False}, target="x86-vnni")


def optimize(target: str, monkeypatch, timings, quantize: str = "auto"):
    calls = []

    def fake_latencies(models, feed, rounds=15):
        calls.append(len(models))
        return list(timings)

    monkeypatch.setattr(recipe_quantize, "median_latencies_ms", fake_latencies)
    monkeypatch.setattr(host, "current_host", lambda: VNNI_HOST)
    model = build("resnet18")
    calib = [sample_inputs(model, seed=100 + i) for i in range(4)]
    out, report = optimize_model(model, OptimizeOptions.build(target=target, calibration=calib, quantize=quantize))
    return Counter(n.op_type for n in out.graph.node), report, calls


def test_int8_kept_when_clearly_faster(monkeypatch):
    ops, report, calls = optimize("x86-vnni", monkeypatch, [30.0, 10.0])
    assert calls == [2] and ops["QuantizeLinear"] > 0
    assert report["speed_check"]["kept"] == "int8" and report["quantization"]["mode"] == "static"


@pytest.mark.parametrize("int8_ms", [29.0, 31.0])  # not 5% faster, or slower
def test_float_kept_when_int8_is_not_faster(monkeypatch, caplog, int8_ms):
    ops, report, _ = optimize("x86-vnni", monkeypatch, [30.0, int8_ms])
    assert ops["QuantizeLinear"] == 0 and ops["DequantizeLinear"] == 0
    assert report["speed_check"] == {"measured": True, "float_ms": 30.0, "int8_ms": int8_ms, "kept": "float",
                                     "engine": "onnxruntime CPU, 1 thread", "host": VNNI_HOST.label()}
    assert report["verify"]["ok"]
    assert "kept the model float" in caplog.text


@pytest.mark.parametrize("target,quantize,entry", [
    ("arm", "auto", {"measured": False, "reason": "this host is x86_64, not arm64"}),
    ("x86-avx2", "auto", {"measured": False, "reason": "this host (test Xeon) has VNNI: its int8 runs faster and "
                                                       "does not saturate as x86-avx2's"}),
    ("generic", "auto", {"measured": False, "reason": "target generic names no CPU; --target host times int8 for "
                                                      "this machine's own target"}),
    ("tensorrt", "auto", None),  # TensorRT's own quantize step never times
    ("x86-vnni", "static", None),  # a forced mode is never timed
])
def test_no_timing_where_the_host_is_not_the_target_or_the_mode_is_forced(monkeypatch, target, quantize, entry):
    ops, report, calls = optimize(target, monkeypatch, [30.0, 60.0], quantize=quantize)
    assert calls == [] and report.get("speed_check") == entry and ops["QuantizeLinear"] > 0


def test_median_latencies_are_interleaved_medians_per_model(monkeypatch):
    """No timing: fake sessions advance a fake clock by their own cost (one round of model A hit by 'load'); the
    result is each model's median, robust to the outlier, and the runs alternate between the models."""
    import time

    import onnxopt.verify

    clock = [0.0]
    order: list[str] = []

    class FakeInput:
        name = "x"

    class FakeSession:
        def __init__(self, tag: str, costs: list[float]):
            self.tag, self.costs = tag, list(costs)

        def get_inputs(self):
            return [FakeInput()]

        def run(self, names, feed):
            assert set(feed) == {"x"}  # inputs the model does not have are dropped
            order.append(self.tag)
            clock[0] += self.costs.pop(0)

    sessions = {"a": FakeSession("a", [1.0] + [0.004] * 4 + [0.5]), "b": FakeSession("b", [1.0] + [0.002] * 5)}
    monkeypatch.setattr(onnxopt.verify, "ort_session", lambda m, optimize=True, threads=1: sessions[m])
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    a_ms, b_ms = recipe_quantize.median_latencies_ms(["a", "b"], {"x": np.zeros(1), "unused": np.zeros(1)}, rounds=5)
    assert a_ms == pytest.approx(4.0) and b_ms == pytest.approx(2.0)
    assert order == ["a", "b"] + ["a", "b"] * 5  # warm-up, then interleaved rounds
