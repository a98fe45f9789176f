"""Dynamic int8 planned per MatMul/Gemm (PlanPrecision in dynamic mode, ``passes/_plan_backoff.py``): on a small zoo
transformer with one deliberately sensitive MatMul, that MatMul comes back float, the others stay dynamic int8 and the
budget holds; the plan round-trips through JSON and an edited one is applied exactly. Differential on onnxruntime
and onnx.checker full check."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper as nh

from onnxopt.budget import Budget
from onnxopt.ir import Model
from onnxopt.models.zoo import sample_inputs
from onnxopt.models.zoo_transformer import bert
from onnxopt.pass_manager import PassContext
from onnxopt.passes.plan_precision import PlanPrecision
from onnxopt.passes.quantize_dynamic import QuantizeDynamic
from onnxopt.plan import FLOAT, INT8, Plan
from onnxopt.targets import get_target
from onnxopt.targets.cost_model import ORT_VNNI
from onnxopt.targets.precision_policy import TargetPolicy
from onnxopt.verify import compare_arrays, ort_session

SENSITIVE = "MatMul_7"  # the FFN's down projection
BUDGET = "cosine:0.999"


def sensitive_bert() -> onnx.ModelProto:
    """A one-layer zoo BERT whose FFN has a dead hidden unit (zero weights, bias -10: GELU gives 0) that the down
    projection reads with weights of 400: float ignores them, while int8 per-column scales round every other weight
    of that MatMul to 0. Its other weights are N(0, 1/K) so the FFN matters against the residual."""
    m = bert(layers=1, hidden=32, heads=2, seq=16, vocab=50)
    rng = np.random.default_rng(0)
    for init in m.graph.initializer:
        w = nh.to_array(init).copy()
        if init.name == "linear.weight_4":
            w[:, -1] = 0.0
        elif init.name == "linear.bias_4":
            w[-1] = -10.0
        elif init.name == "linear.weight_5":
            w = (rng.standard_normal(w.shape) / np.sqrt(w.shape[0])).astype(np.float32)
            w[-1, :] = 400.0
        else:
            continue
        init.CopyFrom(nh.from_array(w, init.name))
    return m


def held(proto) -> list[dict[str, np.ndarray]]:
    return [sample_inputs(proto, seed=100 + i) for i in range(4)]


def plan_and_write(proto, **options) -> tuple[Plan, onnx.ModelProto, PassContext]:
    t = get_target("x86-vnni")
    opts = {**t.default_options(), "plan_executor": "inline", "budget": Budget.parse([BUDGET], 0.99), **options}
    policy = TargetPolicy("x86-vnni", t.scheme, "auto", opts, cost=ORT_VNNI, measure=False)
    ctx = PassContext(options=opts, calibration=[sample_inputs(proto, seed=i) for i in range(8)])
    ctx.holdout = held(proto)
    model = Model.from_onnx(proto)
    PlanPrecision(policy).run(model, ctx)
    QuantizeDynamic().run(model, ctx)
    out = model.to_onnx()
    onnx.checker.check_model(out, full_check=True)
    return ctx.plan, out, ctx


def cosine(a, b) -> float:
    sa, sb = ort_session(a, optimize=False), ort_session(b, optimize=False)
    ref = np.concatenate([sa.run(None, f)[0].ravel() for f in held(a)])
    got = np.concatenate([sb.run(None, f)[0].ravel() for f in held(a)])
    return compare_arrays("last_hidden_state", ref, got).cosine


def float_matmuls(model: onnx.ModelProto) -> set[str]:
    return {n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1].startswith("linear.weight")}


def test_the_sensitive_matmul_comes_back_float_and_the_budget_holds():
    proto = sensitive_bert()
    plan, out, _ = plan_and_write(proto)
    assert plan.mode == "dynamic" and len(plan.regions) == 6
    assert {rid for rid, f in plan.formats().items() if f == FLOAT} == {SENSITIVE}
    assert "backed off to keep the budget" in plan.choices[SENSITIVE].reason
    assert plan.summary().startswith("plan: 5 of 6 regions int8 (dynamic)") and SENSITIVE in plan.summary()
    assert not plan.steps[0].ok and any(s.chosen and s.ok for s in plan.steps)
    assert float_matmuls(out) == {SENSITIVE}
    assert sum(n.op_type == "MatMulInteger" for n in out.graph.node) == 5
    assert cosine(proto, out) >= 0.999
    every = Model.from_onnx(proto)  # dynamic int8 everywhere, as before this plan: misses the same budget
    QuantizeDynamic().rewrite(every, PassContext(options={"scheme": get_target("x86-vnni").scheme}))
    assert cosine(proto, every.to_onnx()) < 0.999


def test_dynamic_plan_round_trip_and_an_edited_plan_applied_exactly():
    proto = sensitive_bert()
    plan, _, _ = plan_and_write(proto)
    loaded = Plan.from_json(plan.to_json())
    assert loaded.mode == "dynamic" and loaded.formats() == plan.formats()
    edited = loaded.with_formats({"MatMul_0": FLOAT, SENSITIVE: FLOAT}, "edited")
    again, out, _ = plan_and_write(proto, plan=edited)
    assert again.source == "file" and again.formats() == edited.formats()
    assert float_matmuls(out) == {"MatMul_0", SENSITIVE}
    assert {f for rid, f in again.formats().items() if rid not in ("MatMul_0", SENSITIVE)} == {INT8}


def test_without_samples_every_matmul_as_before():
    proto = sensitive_bert()
    t = get_target("x86-vnni")
    opts = {**t.default_options(), "plan_executor": "inline"}
    policy = TargetPolicy("x86-vnni", t.scheme, "dynamic", opts, cost=ORT_VNNI, measure=False)
    ctx = PassContext(options=opts)
    model = Model.from_onnx(proto)
    PlanPrecision(policy).run(model, ctx)
    assert ctx.plan.mode == "dynamic" and not ctx.plan.regions
    assert QuantizeDynamic().run(model, ctx).stats["matmuls"] == 6
