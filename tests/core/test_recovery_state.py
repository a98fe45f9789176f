"""Typed state between passes (PassContext.state / set_state) and the recovery report."""

from __future__ import annotations

import json

import numpy as np
import onnx

from onnxopt.pass_manager import PassContext
from onnxopt.recovery import FloatReference, LayerError, PruneState, RecoveryReport, recovery_report


def test_state_is_keyed_by_type():
    ctx = PassContext()
    assert ctx.state(PruneState) is None
    st = PruneState(onnx.ModelProto(), {"t": np.array([0, 2])}, None)
    ctx.set_state(st)
    ctx.set_state(FloatReference(onnx.ModelProto(), []))
    assert ctx.state(PruneState) is st and ctx.state(FloatReference).feeds == []
    assert set(ctx.states) == {PruneState, FloatReference}  # found by type, nothing else handed on
    assert not hasattr(ctx, "cache")  # no string-keyed store to fall back to


def test_recovery_report_summarizes_per_step():
    ctx = PassContext()
    rep = recovery_report(ctx)
    assert recovery_report(ctx) is rep and ctx.state(RecoveryReport) is rep
    rep.step("fit").seconds += 1.23456
    rep.add(LayerError("a", "fit", 0.2, 0.1, "quantized"))
    rep.add(LayerError("b", "fit", 0.4, 0.1, "quantized"))
    d = json.loads(json.dumps(rep.to_dict()))  # JSON as the pipeline report writes it
    (fit,) = d["steps"]
    assert fit["seconds"] == 1.235 and fit["mean_error_before"] == 0.3 and fit["mean_error_after"] == 0.1
    assert [e["layer"] for e in d["layers"]] == ["a", "b"]
