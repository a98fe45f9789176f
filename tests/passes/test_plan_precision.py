"""PlanPrecision: the search backs off the one sensitive layer; a saved, edited plan is applied exactly; the speed
rule (stubbed timings, and the cost model) keeps float what does not pay."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.budget import Budget
from onnxopt.ir import Model
from onnxopt.pass_manager import PassContext
from onnxopt.pass_state import ActivationRanges
from onnxopt.passes.plan_precision import CandidateEvaluator, PlanPrecision
from onnxopt.plan import FLOAT, INT8, Plan
from onnxopt.quant_scheme import QuantScheme
from onnxopt.targets import recipe_quantize
from onnxopt.targets.cost_model import ORT_VNNI
from onnxopt.targets.precision_policy import TargetPolicy
from onnxopt.verify import compare_arrays, run_model

RNG = np.random.default_rng(0)
WIDTH, LAYERS, SENSITIVE = 16, 4, 2


def sensitive_mlp() -> onnx.ModelProto:
    """x -> (MatMul -> Relu) x 4 -> y. Layer 2's weight has one row of huge values read by a neuron that is always 0
    (layer 1's last output channel is dead), so float ignores it while int8 per-channel scales quantize the row's
    useful neighbours to 0: only that layer is sensitive, and no structural or range rule can see it."""
    nodes, inits = [], []
    prev = "x"
    for i in range(LAYERS):
        w = (RNG.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        if i == SENSITIVE - 1:
            w[:, -1] = 0.0  # dead neuron: its Relu output is always 0
        if i == SENSITIVE:
            w[-1, :] = 400.0
        inits.append(nh.from_array(w, f"w{i}"))
        nodes += [h.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  h.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}")]
        prev = f"r{i}"
    nodes[-1].output[0] = "y"
    g = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", T.FLOAT, [1, WIDTH])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, WIDTH])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": np.abs(rng.standard_normal((1, WIDTH))).astype(np.float32)} for _ in range(n)]


def plan_for(proto, **options) -> tuple[Plan, PassContext]:
    ctx = PassContext(options={"plan_executor": "inline", **options}, calibration=samples(8, 1))
    ctx.holdout = samples(6, 2)
    model = Model.from_onnx(proto)
    PlanPrecision(options.pop("policy", None)).run(model, ctx)
    return ctx.plan, ctx


def written(proto, plan: Plan, ctx: PassContext) -> onnx.ModelProto:
    cache = ctx.state(ActivationRanges)
    ranges = {k: (v.threshold_low, v.threshold_high) for k, v in cache.ranges.items()}
    out = CandidateEvaluator(proto.SerializeToString(), plan.regions, ranges, plan.scheme, {}).build(plan.formats())
    onnx.checker.check_model(out, full_check=True)
    return out


def cosine(a, b) -> float:
    feeds = samples(6, 2)
    ref = np.concatenate([run_model(a, f)["y"] for f in feeds])
    got = np.concatenate([run_model(b, f)["y"] for f in feeds])
    return compare_arrays("y", ref, got).cosine


def test_the_sensitive_layer_comes_back_float_and_the_others_stay_int8():
    proto = sensitive_mlp()
    plan, ctx = plan_for(proto)
    assert plan.source == "search"
    formats = plan.formats()
    assert formats == {f"mm{i}": FLOAT if i == SENSITIVE else INT8 for i in range(LAYERS)}
    c = plan.choices[f"mm{SENSITIVE}"]
    assert "backed off to keep the budget" in c.reason and c.quantized_alone > 1.0
    assert all(plan.choices[f"mm{i}"].quantized_alone < 1.0 for i in range(LAYERS) if i != SENSITIVE)
    steps = plan.steps
    assert steps[0].label == "start" and not steps[0].ok and steps[1].label == "all float" and steps[1].ok
    assert len(steps) <= 2 + 2  # bisection over 4 moves; no refinement of a single move
    assert any(s.pareto for s in steps) and all(s.size_bytes for s in steps)
    out = written(proto, plan, ctx)
    assert cosine(proto, out) >= 0.99
    all_int8 = written(proto, plan.with_formats(dict.fromkeys(formats, INT8), "test"), ctx)
    assert cosine(proto, all_int8) < 0.99  # the layer really is what breaks the budget
    ops = Counter(n.op_type for n in out.graph.node)
    assert ops["MatMul"] == LAYERS and ops["DequantizeLinear"] > 0
    assert "mm2 (float: backed off" in plan.summary()


def test_a_saved_edited_plan_is_applied_exactly(tmp_path):
    proto = sensitive_mlp()
    plan, _ = plan_for(proto)
    path = tmp_path / "plan.json"
    plan.save(path)
    data = json.loads(path.read_text())
    want = {"mm0": FLOAT, "mm1": INT8, "mm2": INT8, "mm3": FLOAT}  # the sensitive one forced back to int8
    for item in data["regions"]:
        item["format"] = want[item["id"]]
    path.write_text(json.dumps(data))
    edited, ctx = plan_for(proto, plan=str(path))
    assert edited.source == "file" and edited.formats() == want
    out = written(proto, edited, ctx)
    dq_weights = {n.input[0] for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w")}
    assert dq_weights == {"w1_quantized", "w2_quantized"}
    assert cosine(proto, out) < 0.99  # applied as given, even though it misses the budget


def test_plan_file_for_another_model_is_refused(tmp_path):
    from onnxopt.errors import UserError

    plan, _ = plan_for(sensitive_mlp())
    data = json.loads(plan.to_json())
    data["regions"] = data["regions"][:2]
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="does not fit this model"):
        plan_for(sensitive_mlp(), plan=str(tmp_path / "p.json"))


def test_budget_per_output_and_custom_metric_drive_the_search():
    from onnxopt.budget import CustomMetric

    proto = sensitive_mlp()
    loose, _ = plan_for(proto, budget=Budget.parse("y=cosine:0"))
    assert loose.quantized() == [f"mm{i}" for i in range(LAYERS)] and [s.label for s in loose.steps] == [
        "start", "all float"] and loose.steps[0].chosen
    probe = samples(4, 5)
    ref = np.concatenate([run_model(proto, f)["y"] for f in probe])

    def score(session) -> float:  # higher is better: minus the mean error against the float model
        got = np.concatenate([session.run(["y"], f)[0] for f in probe])
        return -float(np.mean(np.abs(got - ref)))

    for max_drop, backed_off in ((1e9, []), (0.05 * float(np.mean(np.abs(ref))), [f"mm{SENSITIVE}"])):
        plan, _ = plan_for(proto, budget=Budget(custom=CustomMetric(score, max_drop, "mean-error")))
        assert [r for r, f in plan.formats().items() if f == FLOAT] == backed_off
        assert "mean-error" in plan.budget


def _policy(options, measure=False, cost=None):
    return TargetPolicy("generic", QuantScheme(), "auto", options, cost=cost, measure=measure)


@pytest.mark.parametrize("timings,kept", [((10.0, 5.0), "int8"), ((10.0, 9.8), "float")])
def test_measured_speed_rule_with_stubbed_timings(monkeypatch, timings, kept):
    calls = []

    def fake(models, feed, rounds=15):
        calls.append(len(models))
        return list(timings)

    monkeypatch.setattr(recipe_quantize, "median_latencies_ms", fake)
    options = {"budget": Budget.parse("cosine:0")}
    plan, _ = plan_for(sensitive_mlp(), policy=_policy(options, measure=True), **options)
    assert calls == [2]
    assert plan.timing.source == "measured" and plan.timing.kept == kept
    assert plan.timing.to_report()["float_ms"] == 10.0 and plan.timing.to_report()["measured"] is True
    quantized = plan.quantized()
    if kept == "float":
        assert quantized == [] and all("measured" in c.reason for c in plan.choices.values())
    else:
        assert len(quantized) == LAYERS


def test_cost_model_verdict_without_timing_where_the_host_is_not_the_target(monkeypatch):
    monkeypatch.setattr(recipe_quantize, "median_latencies_ms", lambda *a, **k: pytest.fail("must not time"))
    plan, _ = plan_for(sensitive_mlp(), policy=_policy({"speed_check_skip_reason": "not this host"}, cost=ORT_VNNI))
    # MatMuls pay no fixed overhead in the model (measured for Conv only), so int8 pays by MACs here
    assert plan.speed.source == "cost model" and plan.speed.kept == "int8"
    assert plan.timing.to_report() == {"measured": False, "reason": "not this host"}  # auto, host not the target


def test_a16w8_writes_int16_activations_at_opset_21_and_is_refused_below(tmp_path):
    from onnxopt.errors import UserError
    from onnxopt.plan import A16W8

    proto = onnx.version_converter.convert_version(sensitive_mlp(), 21)
    plan, ctx = plan_for(proto)
    mixed = plan.with_formats({"mm0": A16W8}, "test")
    out = written(proto, mixed, ctx)
    zp = {i.name: nh.to_array(i).dtype for i in out.graph.initializer if i.name.endswith("zero_point")}
    assert zp["x_zero_point"] == np.int16 and zp["w0_zero_point"] == np.int8  # int16 in, int8 weights
    assert zp["m1_zero_point"] == np.uint8  # mm1 is int8: its input keeps the scheme's type
    assert cosine(proto, out) > 0.0  # it runs in onnxruntime
    path = tmp_path / "p.json"
    mixed.save(path)
    with pytest.raises(UserError, match="needs opset 21"):
        plan_for(sensitive_mlp(), plan=str(path))
    ladder = _policy({"precision_formats": "int8,a16w8,float"})
    with pytest.raises(UserError, match="needs opset 21"):
        plan_for(sensitive_mlp(), policy=ladder)
    plan, _ = plan_for(proto, policy=ladder)  # at opset 21 the ladder runs: a16w8 is tried before float
    assert any("a16w8" in " ".join(s.raised) for s in plan.steps) and plan.formats()[f"mm{SENSITIVE}"] == FLOAT


def _formats_of(step, start):
    out = dict(start)
    for move in step.raised:
        rid, _, fmt = move.rpartition("=")
        out[rid] = fmt
    return out


@pytest.mark.parametrize("budget,all_float", [("cosine:0.9995", False), ("cosine:0.99999", True)])
def test_small_cnn_plan_is_never_one_an_evaluated_plan_beats(budget, all_float):
    """The reviewer's case: with a tight budget the search's own plan (Conv_1 and fc float, ...) is slower and larger
    than all-float by the cost model, and all-float meets the budget too: all-float is chosen, and marked."""
    from onnxopt.models.zoo import build, sample_inputs
    from onnxopt.pass_manager import PassManager
    from onnxopt.passes.canonicalize import canonicalize

    proto = build("small_cnn")
    options = {"plan_executor": "inline", "budget": Budget.parse(budget)}
    ctx = PassContext(options=options, calibration=[sample_inputs(proto, seed=i) for i in range(8)])
    ctx.holdout = [sample_inputs(proto, seed=100 + i) for i in range(4)]
    model = Model.from_onnx(proto)
    PassManager(list(canonicalize({}))).run(model, ctx)
    PlanPrecision(_policy(options, cost=ORT_VNNI)).run(model, ctx)
    plan = ctx.plan
    chosen = [s for s in plan.steps if s.chosen]
    assert len(chosen) == 1 and chosen[0].ok and chosen[0].pareto
    c = chosen[0]
    for s in plan.steps:
        if s.ok and s is not c:
            assert not (s.latency <= c.latency and s.size_bytes <= c.size_bytes
                        and (s.latency < c.latency or s.size_bytes < c.size_bytes)), (s, c)
    assert _formats_of(c, dict.fromkeys(plan.formats(), INT8)) == plan.formats()
    assert (c.label == "all float") == all_float and (plan.quantized() == []) == all_float
    if all_float:
        searched = [s for s in plan.steps if s.ok and s.label not in ("all float", "start")]
        assert searched and all(s.latency > c.latency and s.size_bytes > c.size_bytes for s in searched)
        assert "int8 does not pay off in any plan that meets the budget" in plan.note
        assert plan.summary().endswith("speed estimated by the cost model onnxruntime-cpu-vnni")


class VariantPolicy(TargetPolicy):
    """A policy whose cost model would keep mm0 float: the measured path must time that variant too."""

    def variants(self, rg, formats):
        return [("keep float what does not pay (test)", {**formats, "mm0": FLOAT})]


def _stub_timings(monkeypatch, ms_of):
    """median_latencies_ms stubbed: each model's time from ``ms_of(set of weights with Q/DQ)``; records the calls."""
    calls = []

    def fake(models, feed, rounds=15):
        sets = [frozenset(n.input[0].removesuffix("_quantized") for n in m.graph.node
                          if n.op_type == "DequantizeLinear" and n.input[0].startswith("w")) for m in models]
        calls.append(sets)
        return [ms_of(s) for s in sets]

    monkeypatch.setattr(recipe_quantize, "median_latencies_ms", fake)
    return calls


@pytest.mark.parametrize("variant_ms,chosen", [(6.0, "keep float what does not pay (test)"), (9.0, "start"),
                                               (12.0, "start")])
def test_where_the_host_stands_whole_model_candidates_are_timed_and_the_fastest_kept(monkeypatch, caplog,
                                                                                     variant_ms, chosen):
    import logging

    caplog.set_level(logging.INFO, logger="onnxopt")
    every = frozenset(f"w{i}" for i in range(LAYERS))
    calls = _stub_timings(monkeypatch, lambda s: {frozenset(): 10.0, every: 8.0}.get(s, variant_ms))
    options = {"budget": Budget.parse("cosine:0")}
    policy = VariantPolicy("generic", QuantScheme(), "auto", options, cost=None, measure=True)
    plan, _ = plan_for(sensitive_mlp(), policy=policy, **options)
    assert len(calls) == 1 and calls[0][0] == frozenset() and set(calls[0]) == {frozenset(), every, every - {"w0"}}
    timed = {s.label: s.measured_ms for s in plan.steps if s.measured_ms is not None}
    assert timed == {"all float": 10.0, "start": 8.0, "keep float what does not pay (test)": variant_ms}
    assert [s.label for s in plan.steps if s.chosen] == [chosen]
    assert plan.timing.source == "measured" and plan.timing.float_ms == 10.0 and plan.timing.kept == "int8"
    assert plan.timing.int8_ms == min(8.0, variant_ms)
    if chosen == "start":
        assert plan.quantized() == [f"mm{i}" for i in range(LAYERS)]
    else:
        assert plan.formats()["mm0"] == FLOAT and plan.quantized() == [f"mm{i}" for i in range(1, LAYERS)]
        assert "int8 does not pay here: the plan with it float ran 6.00 ms against 8.00 ms" in plan.choices[
            "mm0"].reason
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plan speed measured on this host")]
    assert len(said) == 1 and "all float 10.00 ms" in said[0] and "start 8.00 ms" in said[0]


def test_every_int8_plan_measured_slower_keeps_the_model_float(monkeypatch):
    _stub_timings(monkeypatch, lambda s: 4.6 if not s else 5.4 if len(s) < LAYERS else 6.0)
    options = {"budget": Budget.parse("cosine:0")}
    policy = VariantPolicy("generic", QuantScheme(), "auto", options, cost=None, measure=True)
    plan, _ = plan_for(sensitive_mlp(), policy=policy, **options)
    assert plan.quantized() == [] and [s.label for s in plan.steps if s.chosen] == ["all float"]
    assert plan.timing.kept == "float" and plan.timing.int8_ms == 5.4 and plan.timing.float_ms == 4.6
    assert all("measured slower or not 5% faster in int8 (5.40 ms against 4.60 ms" in c.reason
               for c in plan.choices.values())
    assert plan.summary().endswith("speed measured on this host (onnxruntime CPU, 1 thread)")
