"""Typed state between passes (onnxopt.pass_state): found by type, report sections in the shape they always had."""

from __future__ import annotations

import json

from onnxopt.pass_manager import PassContext
from onnxopt.pass_state import ActivationRanges, PruneReport, QuantParams, SparsityReport, WeightsReport


def test_setdefault_state_creates_once_and_keeps_it():
    ctx = PassContext()
    assert ctx.state(QuantParams) is None
    params = ctx.setdefault_state(QuantParams)
    params.tensors["x"] = {"scale": 0.5}
    assert ctx.setdefault_state(QuantParams) is params and ctx.state(QuantParams).tensors == {"x": {"scale": 0.5}}
    ctx.setdefault_state(ActivationRanges).seconds += 1.5
    assert ctx.state(ActivationRanges).seconds == 1.5 and set(ctx.states) == {QuantParams, ActivationRanges}


def test_report_sections_keep_their_keys_and_order():
    prune = PruneReport(0.3, "l1", "layer", 16, 100, 70, 0.3, 0.29, 10, 7, 2, 1, [{"group": "g"}])
    assert list(prune.to_dict()) == ["asked", "criterion", "scope", "round_to", "flops_before", "flops_after",
                                     "flops_removed", "flops_removed_estimate", "params_before", "params_after",
                                     "groups", "groups_locked", "layers"]  # no fidelity without feeds
    prune.fidelity = {"cosine": 0.99}
    prune.reconstruction = {"mode": "ls", "layers": 1}
    assert list(prune.to_dict())[-2:] == ["fidelity", "reconstruction"]
    weights = WeightsReport([], 0, 0, None, [])
    assert json.dumps(weights.to_dict()) == '{"layers": [], "bytes_before": 0, "bytes_after": 0, "ratio": null, ' \
                                            '"notes": []}'
    sparsity = SparsityReport(0.5, "layer", 0.5, 3, 100, 60).to_dict()
    assert list(sparsity) == ["asked", "scope", "sparsity", "layers", "zlib_bytes_before", "zlib_bytes_after"]
