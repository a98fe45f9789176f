"""Plan: exact JSON round trip, hand edits applied as given, refusal of plans that do not fit the model."""

from __future__ import annotations

import json
import math

import pytest

from onnxopt.errors import UserError
from onnxopt.plan import A16W8, FLOAT, INT8, Plan, PlanStep, Region, RegionPlan, SpeedCheck


def _plan() -> Plan:
    regions = [Region("conv1", ("conv1", "relu1"), ("Conv", "Relu"), ("x", "c1"), macs=1_234_567, weights=432),
               Region("add", ("add",), ("Add",), ("c1", "c2"), role="residual-skip"),
               Region("fc", ("fc",), ("Gemm",), ("p",), macs=5120, weights=5120)]
    choices = {"conv1": RegionPlan(INT8, "int8 meets the budget", 0.1234567890123, 0.98765),
               "add": RegionPlan(FLOAT, "most sensitive", math.inf, None),
               "fc": RegionPlan(A16W8, "back-off")}
    steps = [PlanStep(0, "all int8", (), 1.75, False, {"y: cosine >= 0.99": 0.9825}, 9876, 1.5e6),
             PlanStep(1, "1 raised", ("add=float",), 0.3333333333333333, True, {"y: cosine >= 0.99": 0.99666},
                      10002, 1.6e6, pareto=True, chosen=True, measured_ms=4.125)]
    speed = SpeedCheck("int8", "cost model", "onnxruntime-cpu", float_cost=2.5e6, int8_cost=1.6e6)
    timing = SpeedCheck("int8", "measured", "onnxruntime CPU, 1 thread", float_ms=3.25, int8_ms=1.5, host="cpu")
    return Plan("x86-vnni", "static", regions, choices, "cosine:0.99", "search", steps, "MAC-equivalents", speed,
                timing, note="n")


def test_json_round_trip_is_exact(tmp_path):
    plan = _plan()
    text = plan.to_json()
    back = Plan.from_json(text)
    assert back == plan
    assert back.to_json() == text
    assert back.steps[1].chosen and back.steps[1].measured_ms == 4.125 and back.steps[0].measured_ms is None
    json.loads(text)  # standard JSON: inf is written as a string, not as the non-standard Infinity
    assert '"inf"' in text and "Infinity" not in text
    plan.save(tmp_path / "p.json")
    assert Plan.load(tmp_path / "p.json") == plan


def test_hand_edited_formats_are_applied_exactly(tmp_path):
    plan = _plan()
    data = json.loads(plan.to_json())
    for item in data["regions"]:
        item["format"] = {"conv1": FLOAT, "add": INT8, "fc": INT8}[item["id"]]
        item["reason"] = "edited by hand"
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    fitted = Plan.load(path).fit(plan.regions)
    assert fitted.formats() == {"conv1": FLOAT, "add": INT8, "fc": INT8}
    assert {c.reason for c in fitted.choices.values()} == {"edited by hand"}


def test_unknown_format_and_wrong_model_are_user_errors(tmp_path):
    data = json.loads(_plan().to_json())
    data["regions"][0]["format"] = "int3"
    with pytest.raises(UserError, match="unknown format 'int3'"):
        Plan.from_dict(data, "p.json")
    with pytest.raises(UserError, match="not a plan written by onnxopt"):
        Plan.from_json("{}", "p.json")
    with pytest.raises(UserError, match="not valid JSON"):
        Plan.from_json("{", "p.json")
    with pytest.raises(UserError, match="no such plan file"):
        Plan.load(tmp_path / "missing.json")
    other = [Region("conv1", ("conv1",), ("Conv",), ("x",))]
    with pytest.raises(UserError, match="does not fit this model"):
        _plan().fit(other)


def test_speed_reports():
    plan = _plan()
    assert plan.timing.to_report() == {"measured": True, "float_ms": 3.25, "int8_ms": 1.5, "kept": "int8",
                                       "engine": "onnxruntime CPU, 1 thread", "host": "cpu"}
    assert SpeedCheck("", "not measured", reason="why").to_report() == {"measured": False, "reason": "why"}
    assert plan.speed.to_report()["int8_cost"] == 1.6e6


def test_summary_names_what_stayed_in_higher_precision():
    line = _plan().summary()
    assert line.startswith("plan: 1 of 3 regions int8")
    assert "add (float: most sensitive)" in line and "fc (a16w8: back-off)" in line
    assert "\n" not in line


def test_with_formats_changes_only_what_differs():
    plan = _plan()
    new = plan.with_formats({"conv1": INT8, "fc": FLOAT}, "speed")
    assert new.choices["conv1"] == plan.choices["conv1"]  # unchanged: its reason stays
    assert new.choices["fc"].format == FLOAT and new.choices["fc"].reason == "speed"
    assert plan.choices["fc"].format == A16W8  # the original is not modified
    assert new.quantized() == ["conv1"]
