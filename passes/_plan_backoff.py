"""The budget search shared by every planning mode, and the dynamic-int8 planning of MatMul/Gemm regions.

``back_off``: judge the start plan on the held-back samples; when it misses the budget (or
``options["plan_sensitivity"] = "always"``), measure every searchable region's sensitivity through the executor
(``analysis.sensitivity``), back regions off along the ladder with greedy + bisection (``analysis.plan_search``),
time the budget-feasible candidates where the host stands for the target (``_plan_choice.time_candidates``), and
write each region's format and reason (``_plan_choice.apply_choice``). Every planner uses it: the static one
(``PlanPrecision``, with its variants), the weight planner (``PlanWeights``) and the dynamic planner here.

Dynamic mode (``plan_dynamic``): the regions are the MatMul/Gemm nodes ``QuantizeDynamic`` can rewrite (one per node,
``dynamic_regions``); each is ``int8`` (dynamic: int8 weights, activations quantized at run time) or ``float``.
Candidates are written by ``QuantizeDynamic.rewrite`` under a plan of those formats (``DynamicCandidateEvaluator``)
and judged like any other; the cost model estimates them from the MatMuls' MACs, and where the host stands for the
target they are timed as whole models and the fastest that meets the budget is kept (all-float included: int8 must be
5% faster). So a sensitive MatMul comes back float while the others stay int8.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

from onnxopt.analysis.plan_search import search
from onnxopt.analysis.qdq_placement import weighted_macs
from onnxopt.analysis.regions import RegionGraph, node_keys
from onnxopt.analysis.sensitivity import EvalCache, back_off_order, make_executor, measure
from onnxopt.budget import Budget, BudgetResult, Judge
from onnxopt.ir import Model, iter_graphs
from onnxopt.pass_manager import PassContext
from onnxopt.plan import FLOAT, INT8, Plan, Region, RegionPlan, is_quantized
from onnxopt.quant_scheme import QuantScheme

from ._plan_choice import apply_choice, time_candidates

log = logging.getLogger(__name__)

Ladder = Callable[[str, str], "str | None"]


def back_off(model: Model, ctx: PassContext, plan: Plan, evaluator: Any, budget: Budget, ladder: Ladder,
             samples: list[dict[str, np.ndarray]], *, policy: Any = None, rg: RegionGraph | None = None,
             latency: Callable[[Mapping[str, str]], float | None] | None = None, margin: float = 1.0,
             timing_feed: Mapping[str, np.ndarray] | None = None,
             variants: Callable[[Mapping[str, str]], Any] | None = None,
             searchable: Callable[[str, str], bool] | None = None) -> tuple[Plan, bool]:
    """``plan`` searched against ``budget`` (see the module docstring); (plan, whether the search ran: without
    samples the plan is returned as it is). ``evaluator``: ``build(formats) -> ModelProto`` and ``__call__``, with
    ``model_bytes`` and ``judge`` set here. ``searchable(region, format)``: which regions the search may move (by
    default every quantized one the ladder can lower); ``variants``: ``plan_search.search``'s."""
    if not samples:
        log.info("no samples to judge the budget on (read-once calibration data): the default plan is used")
        return plan, False
    proto = model.to_onnx()
    evaluator.model_bytes = proto.SerializeToString()
    evaluator.judge = Judge.create(proto, samples, budget)
    cache = EvalCache(evaluator)
    start = plan.formats()
    movable = searchable or (lambda rid, f: is_quantized(f) and ladder(rid, f) is not None)
    searchable = [rid for rid, f in start.items() if movable(rid, f)]
    fixed = {rid: f for rid, f in start.items() if rid not in searchable}
    first = cache(start)
    sens = {}
    if searchable and (not first.ok or ctx.option("plan_sensitivity") == "always"):
        executor, owned = make_executor(ctx.option("plan_executor"), 2 * len(searchable), evaluator)
        try:
            sens = measure(searchable, {r: start[r] for r in searchable}, cache, executor, fixed, ctx.progress)
        finally:
            if owned:
                executor.shutdown()
    order = back_off_order(sens) if sens else searchable
    result = search(start, order, lambda r, f: ladder(r, f) if r in searchable else None, cache, latency=latency,
                    refine=int(ctx.option("plan_refine", 8)), variants=variants, margin=margin)
    timing = None
    if policy is not None and getattr(policy, "measure", False) and result.ok and timing_feed is not None:
        result, timing = time_candidates(proto, policy, result, evaluator, timing_feed)
    plan = replace(plan, timing=timing or plan.timing)
    return apply_choice(plan, policy, rg, result, start, searchable, sens, order, evaluator), True


# ---------------------------------------------------------------------------------------------------- dynamic


def dynamic_regions(model: Model, options: Mapping[str, Any], scheme: QuantScheme,
                    shapes: Mapping[str, Any] | None = None) -> RegionGraph:
    """One region per MatMul/Gemm that ``QuantizeDynamic`` would rewrite (its checks, exclusions included)."""
    from .quantize_dynamic import QuantizeDynamic

    keys = node_keys(model.graph)
    excl_ops = set(options.get("exclude_ops") or ())
    excl_nodes = set(options.get("exclude_nodes") or ()) | set(scheme.exclude_nodes)
    regions, members, node_region, graphs = [], {}, {}, {}
    for g in iter_graphs(model.graph):
        for node in g.nodes:
            if node.op not in ("MatMul", "Gemm") or (node.domain or "") not in ("", "ai.onnx"):
                continue
            if QuantizeDynamic.check(node, excl_ops, excl_nodes) is not None:
                continue
            key = keys[id(node)]
            w = node.inputs[1]
            size = int(np.prod(w.shape)) if getattr(w, "shape", None) else 0
            regions.append(Region(key, (key,), (node.op,), (), _macs(node, shapes, size), size))
            members[key], node_region[id(node)], graphs[key] = [node], key, g
    return RegionGraph(regions, members, node_region, graphs=graphs)


def _macs(node: Any, shapes: Mapping[str, Any] | None, size: int) -> int | None:
    """MACs per batch item (``weighted_macs``); the batch dimension alone unknown does not matter here."""
    macs = weighted_macs(node, shapes)
    if macs is not None or not shapes:
        return macs
    shape = shapes.get(node.inputs[0].name)
    if not shape or len(shape) < 2 or any(not isinstance(d, int) or d < 0 for d in shape[1:]):
        return None
    return size * (int(np.prod(shape[1:-1])) if len(shape) > 2 else 1)


@dataclass
class DynamicCandidateEvaluator:
    """Writes the dynamically quantized model of an assignment (region -> int8 | float) and judges it; picklable."""

    model_bytes: bytes
    regions: list[Region]
    scheme: QuantScheme
    options: dict[str, Any]
    judge: Judge | None = None

    def build(self, formats: Mapping[str, str]) -> onnx.ModelProto:
        from .quantize_dynamic import QuantizeDynamic

        model = Model.from_onnx(onnx.load_from_string(self.model_bytes))
        plan = Plan(target="", mode="dynamic", regions=list(self.regions),
                    choices={rid: RegionPlan(f, "") for rid, f in formats.items()}, scheme=self.scheme)
        QuantizeDynamic().rewrite(model, PassContext(options=dict(self.options), plan=plan))
        return model.to_onnx()

    def __call__(self, formats: dict[str, str]) -> BudgetResult:
        assert self.judge is not None
        return self.judge(self.build(formats))


def plan_dynamic(model: Model, ctx: PassContext, policy: Any, plan: Plan, scheme: QuantScheme, budget: Budget,
                 samples: list[dict[str, np.ndarray]], shapes: Mapping[str, Any] | None,
                 timing_feed: Mapping[str, np.ndarray] | None) -> tuple[Plan, bool]:
    """Dynamic int8 planned per MatMul/Gemm (see the module docstring); (plan, whether the search ran)."""
    rg = dynamic_regions(model, ctx.options, scheme, shapes)
    if not rg.regions:
        return plan, False
    plan = replace(plan, regions=list(rg.regions), source="default",
                   choices={r.id: RegionPlan(INT8, "dynamic int8 by default") for r in rg.regions})
    options = {k: ctx.options[k] for k in ("exclude_ops", "exclude_nodes", "dynamic_per_channel") if k in ctx.options}
    evaluator = DynamicCandidateEvaluator(b"", list(rg.regions), scheme, options)
    cost = getattr(policy, "cost", None)
    latency = (lambda f: cost.estimate(rg, f)) if cost is not None else None
    return back_off(model, ctx, plan, evaluator, budget, lambda r, f: FLOAT if f == INT8 else None, samples,
                    policy=policy, rg=rg, latency=latency, margin=float(getattr(policy, "margin", 1.0)),
                    timing_feed=timing_feed)


__all__ = ["DynamicCandidateEvaluator", "back_off", "dynamic_regions", "plan_dynamic"]
