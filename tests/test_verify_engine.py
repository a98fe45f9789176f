"""Which engine gives the verdict on a quantized model: it must not depend on the CPU running onnxopt.

onnxruntime's u8 x s8 kernels on x86 without VNNI add pairs of products in a saturating int16, so there the
verdict on a full-range int8 model is taken in the spec's arithmetic (the reference interpreter); elsewhere, and
for 7-bit weights, onnxruntime computes the spec and judges."""

from __future__ import annotations

import onnx
import pytest
from test_host import epyc, n1, xeon

from onnxopt import host
from onnxopt.models.zoo import build, sample_inputs
from onnxopt.pipeline import OptimizeOptions, optimize_model


def _optimize(monkeypatch, h: host.HostInfo, target: str, quantize: str = "static"):
    monkeypatch.setattr(host, "current_host", lambda: h)
    model = build("small_cnn")
    calib = [sample_inputs(model, seed=10 + i) for i in range(6)]
    out, report = optimize_model(model, OptimizeOptions.build(target=target, calibration=calib, quantize=quantize))
    onnx.checker.check_model(out, full_check=True)
    return out, report["verify"]


@pytest.mark.parametrize("target", ["generic", "x86-vnni", "arm"])
def test_full_range_int8_is_judged_in_spec_arithmetic_on_a_saturating_host(monkeypatch, target):
    out, verdict = _optimize(monkeypatch, epyc(), target)
    assert any(n.op_type == "QuantizeLinear" for n in out.graph.node)
    assert verdict["engine"] == "reference" and "saturating" in verdict["engine_reason"]
    assert verdict["ok"] is True and 0 <= verdict["this_host_onnxruntime_min_cosine"] <= 1


@pytest.mark.parametrize("h", [xeon, n1])
def test_onnxruntime_judges_where_it_computes_the_spec(monkeypatch, h):
    _, verdict = _optimize(monkeypatch, h(), "generic")
    assert verdict["engine"] == "onnxruntime" and "engine_reason" not in verdict and verdict["ok"] is True


def test_seven_bit_weights_are_judged_by_onnxruntime_even_where_it_saturates(monkeypatch):
    _, verdict = _optimize(monkeypatch, epyc(), "x86-avx2")
    assert verdict["engine"] == "onnxruntime" and verdict["ok"] is True


def test_lossless_runs_are_judged_by_onnxruntime(monkeypatch):
    _, verdict = _optimize(monkeypatch, epyc(), "generic", quantize="none")
    assert verdict["engine"] == "onnxruntime" and verdict["ok"] is True
