"""PlanWeights: every weighted layer's weight format for ``--weights FORMAT`` (``onnxopt.plan.Plan``, mode
``weights``) into ``ctx.plan``; ``QuantizeWeights`` then writes exactly that.

Analysis step: the model is not changed. The regions are the layers ``QuantizeWeights`` can rewrite in the format
(MatMul / Gemm / Conv weights, embedding tables: one region per node, keyed as ``analysis.regions.node_keys``);
each is a candidate at the ``--weights`` format F, at int8 weights (``w8``) or float, ranked F < w8 < float.

1. a user's plan (``options["plan"]``: a path or a ``Plan`` of mode ``weights``) is applied exactly as given: any
   weight format or float per layer (an activation format such as ``int8`` is refused, and so is a format whose
   opset the model does not have);
2. without calibration data: F on every layer, nothing measured (one warning says so: the verification judges the
   budget afterwards, and a miss refuses the run; pass --calib to let the planner back sensitive layers off);
3. with calibration data: the plan starts with F everywhere and is judged against the budget (``options["budget"]``)
   on the held-back samples (else the first calibration samples); when it misses, each layer's sensitivity is
   measured (F alone, and every other layer at F with this one float) through ``options["plan_executor"]``, and the
   back-off search (``_plan_backoff.back_off``: greedy by sensitivity, bisection, refinement) moves layers F -> w8
   -> float until the budget holds. Of the plans evaluated that meet it, the smallest file is kept (weight-only
   formats are about size; the steps, with their sizes and budget use, are the Pareto curve in ``plan.steps``).
   Candidates are written by ``QuantizeWeights`` itself (``WeightCandidateEvaluator``), GPTQ included: the input
   Hessians are computed once from the float model and shared by every candidate.

Each region's reason says why it has its format: ``--weights F``, or backed off to keep the budget with its
measured sensitivity and rank. Declines: none (``QuantizeWeights`` declines what it cannot rewrite).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from onnxopt.budget import BudgetResult, Judge
from onnxopt.errors import UserError
from onnxopt.ir import Model
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.pass_state import WeightPlanState
from onnxopt.plan import FLOAT, Plan, Region, RegionPlan
from onnxopt.weight_formats import W8, WeightSpec, parse_weights, plan_name, spec_of_format

from ._plan_backoff import back_off
from .plan_precision import _budget, _samples
from .quantize_weights import QuantizeWeights

log = logging.getLogger(__name__)

NO_DATA = ("--weights {fmt} without calibration data: {fmt} goes on every layer it applies to, unmeasured; the "
           "budget is judged only afterwards and a miss refuses the run. Pass --calib data.npz to let the planner "
           "move sensitive layers back to w8 or float")
CANDIDATE_OPTIONS = ("weights_embeddings", "weights_calib_samples", "seed")


@dataclass
class WeightCandidateEvaluator:
    """Writes the weight-only model of an assignment (layer -> weight format or float) with ``QuantizeWeights`` and
    judges it. Plain data (the float model, the regions, the Hessians), so a process pool can take it."""

    model_bytes: bytes
    regions: list[Region]
    options: dict[str, Any]
    hessians: dict[str, np.ndarray]
    matmulnbits: int | None = None
    judge: Judge | None = None
    encoded: dict = field(default_factory=dict, repr=False)  # (layer, spec) -> Encoded, filled as candidates are built

    def build(self, formats: Mapping[str, str]) -> onnx.ModelProto:
        model = Model.from_onnx(onnx.load_from_string(self.model_bytes))
        plan = Plan(target="", mode="weights", regions=list(self.regions),
                    choices={rid: RegionPlan(f, "") for rid, f in formats.items()})
        ctx = PassContext(options=dict(self.options), plan=plan)
        ctx.set_state(WeightPlanState(self.hessians, self.encoded))
        QuantizeWeights(self.matmulnbits).run(model, ctx)
        return model.to_onnx()

    def __call__(self, formats: dict[str, str]) -> BudgetResult:
        assert self.judge is not None
        return self.judge(self.build(formats))


def weight_ladder(fmt: str) -> str | None:
    """F -> w8 -> float (None at float)."""
    if fmt == FLOAT:
        return None
    return FLOAT if fmt == W8 or fmt.startswith(W8 + ":") else W8


@register_pass
class PlanWeights(Pass):
    """Analysis: each weighted layer's weight format (``--weights`` F, w8 or float) by measured sensitivity and the
    budget."""

    lossless = True  # it only plans; QuantizeWeights is the lossy step

    def __init__(self, weights: WeightSpec | str, matmulnbits: int | None = None) -> None:
        self.spec = weights if isinstance(weights, WeightSpec) else parse_weights(str(weights))
        self.matmulnbits = matmulnbits

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        fmt = plan_name(self.spec)
        budget = _budget(ctx)
        scratch = PassContext(target=ctx.target, options=dict(ctx.options), calibration=ctx.calibration)
        writer = QuantizeWeights(self.matmulnbits)
        layers = writer.layers(model, scratch, lambda key: self.spec)
        regions = [Region(la.key, (la.key,), (la.node.op,), (), None, int(la.w.size)) for la in layers]
        plan = Plan(target=ctx.target, mode="weights", regions=regions, budget=budget.describe(), weights=fmt,
                    choices={r.id: RegionPlan(fmt, f"--weights {fmt}") for r in regions})
        given = ctx.option("plan")
        if given is not None:
            plan = self._given(given, plan, model)
        elif not regions:
            log.info("--weights %s: no layer it applies to", fmt)
        elif ctx.calibration is None:
            log.warning(NO_DATA.format(fmt=fmt))
            plan = replace(plan, note="no calibration data: not measured, the verification judges the budget",
                           choices={r.id: RegionPlan(fmt, f"--weights {fmt} (no calibration data: not measured)")
                                    for r in regions})
        else:
            samples = _samples(ctx)
            hessians = {} if self.spec.rounding == "rtn" or not samples else writer._hessians(model, scratch, layers)
            options = {k: ctx.options[k] for k in CANDIDATE_OPTIONS if k in ctx.options}
            evaluator = WeightCandidateEvaluator(b"", regions, options, hessians, self.matmulnbits)
            plan, _ = back_off(model, ctx, plan, evaluator, budget, lambda r, f: weight_ladder(f), samples)
            plan.weights = fmt
        ctx.plan = plan
        log.info("%s", plan.summary())
        kept = sum(plan.choices[r.id].format == fmt for r in regions)
        return PassResult(False, {"layers": len(regions), f"{fmt}_layers": kept})

    def _given(self, given: Any, plan: Plan, model: Model) -> Plan:
        """A user's weight plan over these layers, formats exactly as written."""
        where = "--plan" if isinstance(given, Plan) else str(given)
        loaded = given if isinstance(given, Plan) else Plan.load(given)
        fitted = loaded.fit(plan.regions, where)
        for rid, c in fitted.choices.items():
            if c.format == FLOAT:
                continue
            spec = spec_of_format(c.format)
            if spec is None:
                raise UserError(f"{where}: layer '{rid}' asks for {c.format}, which is not a weight format; with "
                                "--weights use float or one of int4[:block=N][:asym], ternary, binary, pow2, kmeans:K, "
                                "w8")
            if spec.opset > model.opset:
                raise UserError(f"{where}: layer '{rid}' asks for {c.format}, which needs opset {spec.opset} (the "
                                f"model has {model.opset} after --weights {plan.weights}); pass --opset "
                                f"{spec.opset}")
        return replace(fitted, target=plan.target, mode="weights", budget=plan.budget, source="file",
                       steps=list(loaded.steps), weights=plan.weights)


__all__ = ["NO_DATA", "PlanWeights", "WeightCandidateEvaluator", "weight_ladder"]
