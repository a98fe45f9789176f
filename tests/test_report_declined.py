"""The report's per-node ``declined`` list: each distinct (pass, node, reason) once, whole-model declines left to
``declines``, and a bounded length with the rest counted."""

from __future__ import annotations

from onnxopt import pipeline
from onnxopt.pass_manager import PassContext


def test_declined_is_distinct_per_node_and_bounded(monkeypatch):
    ctx = PassContext()
    for _ in range(3):  # a fixed-point group meets the same node every round
        ctx.decline("MergeReshapes", "Flatten 'f1'", "input is not a Reshape")
    ctx.decline("QuantizeStatic", "Conv 'c1'", "long tail")
    ctx.decline("QuantizeStatic", "model", "no calibration data")
    got = pipeline._declined(ctx)
    assert got == {"declined": [{"pass": "MergeReshapes", "where": "Flatten 'f1'", "reason": "input is not a Reshape"},
                                {"pass": "QuantizeStatic", "where": "Conv 'c1'", "reason": "long tail"}]}
    monkeypatch.setattr(pipeline, "MAX_DECLINED", 1)
    got = pipeline._declined(ctx)
    assert len(got["declined"]) == 1 and got["declined_truncated"] == 1
