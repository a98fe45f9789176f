"""PlanPrecision: choose every region's format (``onnxopt.plan.Plan``) into ``ctx.plan``; the quantizers apply it.

Analysis step: the model is not changed. Steps, each shaped by the target's policy (``PrecisionPolicy``, built in
``targets/precision_policy.py``; without one, ``DefaultPolicy``):

1. the mode (static, dynamic, none) for this model and data (``policy.choose_mode``); dynamic is planned per
   MatMul/Gemm (dynamic int8 or float, ``_plan_backoff.plan_dynamic``: the same budget, sensitivity, back-off and
   speed judgement as below) when there are samples to judge on, else it gives a plan with no regions (every
   MatMul/Gemm, timed against float as a whole where the host stands for the target); none gives no regions;
2. the regions (``analysis.regions.build_regions``), shaped by the target (``policy.adjust``), and the calibrated
   ranges of their tensors (``activation_ranges``, kept in ``pass_state.ActivationRanges`` for the writer);
3. a user's plan (``options["plan"]``: a path or a ``Plan``) is applied exactly as given and nothing below runs;
4. the default formats (``analysis.regions.default_formats``: int8 unless a rule keeps a region float, with the
   reason) and the target's per-region rules (``policy.region_rules``);
5. the cost model's whole-model verdict (``policy.judge_speed``, on the best int8 plan it finds): when int8 does
   not pay, every region stays float, except where the host stands for the target (timings decide there);
6. the budget (``options["budget"]``, a ``Budget``; default cosine 0.99, top-1 for probabilities) on the held-back
   samples (``ctx.holdout``; else the first calibration samples, said in the log): if the start misses it,
   sensitivity of every int8 region (``analysis.sensitivity``, through ``options["plan_executor"]``: process pool by
   default, "thread", "inline" or an Executor) and the back-off search (``analysis.plan_search``), which also
   evaluates all-float and the policy's ``variants`` of its result (the cost model's "keep float what does not
   pay") and chooses among every step that meets the budget by estimated latency, then size (never a plan another
   step beats on both); every step goes into ``plan.steps``, the chosen one marked. ``options["plan_sensitivity"]
   = "always"`` measures sensitivity even when the start holds;
7. where the host stands for the target and the mode is auto (``policy.measure``), those candidates that meet the
   budget are timed as whole models instead (``_plan_choice.time_candidates``: all-float, all-int8, the search's
   plan, the variants, the estimate's choice) and the fastest is kept, int8 only when 5% faster than all-float; a
   dynamically quantized model is timed against the float one on a copy (mode "none" when int8 is not 5% faster).
   Elsewhere ``plan.timing`` says why nothing was timed (``policy.timing_note``); one log line says which judged.

Declines: none (it decides, the quantizers report what they left float). Raises UserError for a plan file that
does not fit the model or asks for a16w8 below opset 21.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import onnx

from onnxopt.analysis.qdq_placement import shapes_at
from onnxopt.analysis.regions import RegionGraph, build_regions, calibration_tensors, default_formats
from onnxopt.budget import Budget, BudgetResult, Judge
from onnxopt.errors import UserError
from onnxopt.ir import Model
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.plan import FLOAT, INT8, Plan, Region, RegionPlan, SpeedCheck, format_spec
from onnxopt.quant_scheme import QuantScheme

from ._plan_backoff import back_off
from ._plan_choice import speed_line
from ._plan_writer import write_plan
from ._qdq import QDQWriter, _Names
from .calibrate_activations import activation_ranges

log = logging.getLogger(__name__)

SEARCH_FALLBACK_SAMPLES = 4  # calibration samples judged when none were held back
WRITER_OPTIONS = ("exclude_ops", "exclude_nodes")


class PrecisionPolicy(Protocol):
    """What the planner asks a target (``targets.precision_policy.TargetPolicy`` implements it)."""

    measure: bool
    timing_note: str | None

    def choose_mode(self, model: Model, has_data: bool) -> str: ...
    def scheme_for(self, model: Model) -> QuantScheme: ...
    def adjust(self, rg: RegionGraph, model: Model) -> None: ...
    def region_rules(self, rg: RegionGraph) -> dict[str, RegionPlan]: ...
    def ladder(self, region: str, fmt: str) -> str | None: ...
    def judge_speed(self, rg: RegionGraph, formats: Mapping[str, str]) -> SpeedCheck | None: ...
    def speed_reason(self, check: SpeedCheck, rg: RegionGraph) -> str: ...
    def latency(self, rg: RegionGraph, formats: Mapping[str, str]) -> float | None: ...
    def variants(self, rg: RegionGraph, formats: Mapping[str, str]) -> list[tuple[str, dict[str, str]]]: ...
    @property
    def margin(self) -> float: ...
    def time(self, float_model: onnx.ModelProto, int8_model: onnx.ModelProto, feed: Mapping[str, np.ndarray]
             ) -> SpeedCheck: ...
    def time_many(self, models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray]) -> list[float]: ...
    def host_label(self) -> str | None: ...


class DefaultPolicy:
    """No target: static int8 in ``ctx.option("scheme")`` when there is data, int8 -> float back-off, no speed rule."""

    measure = False
    timing_note = None

    def __init__(self, scheme: QuantScheme) -> None:
        self.scheme = scheme

    def choose_mode(self, model: Model, has_data: bool) -> str:
        return "static" if has_data else "none"

    def scheme_for(self, model: Model) -> QuantScheme:
        return self.scheme

    def adjust(self, rg: RegionGraph, model: Model) -> None:
        return None

    def region_rules(self, rg: RegionGraph) -> dict[str, RegionPlan]:
        return {}

    def ladder(self, region: str, fmt: str) -> str | None:
        return FLOAT if fmt != FLOAT else None

    def judge_speed(self, rg: RegionGraph, formats: Mapping[str, str]) -> SpeedCheck | None:
        return None

    def speed_reason(self, check: SpeedCheck, rg: RegionGraph) -> str:
        return "int8 does not pay off"

    def latency(self, rg: RegionGraph, formats: Mapping[str, str]) -> float | None:
        return None

    def variants(self, rg: RegionGraph, formats: Mapping[str, str]) -> list[tuple[str, dict[str, str]]]:
        return []

    margin = 1.0

    def host_label(self) -> str | None:
        return None

    def time_many(self, models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray]
                  ) -> list[float]:  # pragma: no cover - never called: measure is False
        raise NotImplementedError

    def time(self, float_model: onnx.ModelProto, int8_model: onnx.ModelProto, feed: Mapping[str, np.ndarray]
             ) -> SpeedCheck:  # pragma: no cover - never called: measure is False
        raise NotImplementedError


@dataclass
class CandidateEvaluator:
    """Writes the Q/DQ model of an assignment from the float model and judges it. Plain data, so picklable: a
    process pool gets one copy per chunk of candidates."""

    model_bytes: bytes
    regions: list[Region]
    ranges: dict[str, tuple[float, float]]
    scheme: QuantScheme
    options: dict[str, Any]
    judge: Judge | None = None

    def build(self, formats: Mapping[str, str]) -> onnx.ModelProto:
        model = Model.from_onnx(onnx.load_from_string(self.model_bytes))
        rg = build_regions(model, self.scheme)
        for r in self.regions:
            rg.replace_region(r)
        ctx = PassContext(options=dict(self.options))
        writer = QDQWriter(ctx, "PlanPrecision", _Names(model.graph), {}, {}, model.opset)
        write_plan(model.graph, rg, formats, self.ranges, self.scheme, ctx, writer)
        return model.to_onnx()

    def __call__(self, formats: dict[str, str]) -> BudgetResult:
        assert self.judge is not None
        return self.judge(self.build(formats))


@register_pass
class PlanPrecision(Pass):
    """Analysis: each region's format (float, int8, a16w8) by rules, measured sensitivity, speed and the budget."""

    lossless = True  # it only plans; the quantizer that applies the plan is the lossy step

    def __init__(self, policy: PrecisionPolicy | None = None) -> None:
        self.policy = policy

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        scheme_opt: QuantScheme = ctx.option("scheme") or QuantScheme()
        policy = self.policy or DefaultPolicy(scheme_opt)
        mode = policy.choose_mode(model, ctx.calibration is not None)
        budget = _budget(ctx)
        scheme = policy.scheme_for(model)
        plan = Plan(target=ctx.target, mode=mode, budget=budget.describe(), scheme=scheme)
        if policy.timing_note and mode != "none":
            log.info("int8 not timed against float (%s); %s quantization chosen by rule", policy.timing_note, mode)
            plan.timing = SpeedCheck("", "not measured", reason=policy.timing_note)
        if mode == "dynamic":
            plan = self._dynamic(model, ctx, policy, plan, scheme, budget)
        if mode != "static":
            ctx.plan = plan
            return PassResult(False)
        wide = [f for f in getattr(policy, "formats", ()) if format_spec(f).activations == "int16"]
        if wide and model.opset < 21:
            raise UserError(f"--precision-formats {','.join(policy.formats)}: {wide[0]} writes int16 Q/DQ, which "
                            f"needs opset 21 (the model has {model.opset}); pass --opset 21 or leave {wide[0]} out")
        rg = build_regions(model, scheme, shapes_at(model, ctx.calibration))
        policy.adjust(rg, model)
        stats = activation_ranges(model, ctx, calibration_tensors(rg, model))
        ranges = {k: (v.threshold_low, v.threshold_high) for k, v in stats.items()}
        evaluator = CandidateEvaluator(b"", rg.regions, ranges, scheme,
                                       {k: ctx.options[k] for k in WRITER_OPTIONS if k in ctx.options})
        given = ctx.option("plan")
        if given is not None:
            plan = self._given(given, rg, model, plan)
        else:
            choices = default_formats(rg, model, scheme, ctx.options, stats, fixed=policy.region_rules(rg))
            plan = replace(plan, regions=list(rg.regions), choices=choices, source="default")
            check = policy.judge_speed(rg, plan.formats())
            if check is not None:
                plan.speed = check
                if check.kept == "float" and not policy.measure:  # where the host can, timings decide instead
                    plan = _all_float(plan, policy.speed_reason(check, rg))
            searched = False
            if plan.quantized():
                plan, searched = self._search(model, ctx, policy, rg, plan, evaluator, budget)
            if policy.measure and plan.quantized() and not searched:
                plan = self._measure(model, ctx, policy, rg, plan, evaluator)
            log.info("%s", speed_line(plan, policy))
        plan.scheme = scheme  # replace() keeps it, a loaded plan had none
        ctx.plan = plan
        log.info("%s", plan.summary())
        return PassResult(False, {"regions": len(plan.regions), "int8_regions": len(plan.quantized())})

    @staticmethod
    def _given(given: Any, rg: RegionGraph, model: Model, plan: Plan) -> Plan:
        """A user's plan over these regions, formats exactly as written."""
        where = "--plan" if isinstance(given, Plan) else str(given)
        loaded = given if isinstance(given, Plan) else Plan.load(given)
        fitted = loaded.fit(rg.regions, where)
        for rid, c in fitted.choices.items():
            if format_spec(c.format).activations == "int16" and model.opset < 21:
                raise UserError(f"{where}: region '{rid}' asks for {c.format}, whose int16 Q/DQ needs opset 21 "
                                f"(the model has {model.opset}); pass --opset 21 or choose int8")
        return replace(fitted, target=plan.target, mode="static", budget=plan.budget, source="file",
                       steps=list(loaded.steps))

    def _search(self, model: Model, ctx: PassContext, policy: PrecisionPolicy, rg: RegionGraph, plan: Plan,
                evaluator: CandidateEvaluator, budget: Budget) -> tuple[Plan, bool]:
        """The back-off search and the choice among its steps (timed where ``policy.measure``); (plan, whether it
        ran: without samples to judge on, the default plan is returned)."""
        feed = _timing_feed(model.to_onnx(), ctx) if policy.measure else None
        return back_off(model, ctx, plan, evaluator, budget, policy.ladder, _samples(ctx), policy=policy, rg=rg,
                        latency=lambda f: policy.latency(rg, f), margin=float(getattr(policy, "margin", 1.0)),
                        timing_feed=feed, variants=lambda f: policy.variants(rg, f),
                        searchable=lambda rid, f: f == INT8)

    @staticmethod
    def _measure(model: Model, ctx: PassContext, policy: PrecisionPolicy, rg: RegionGraph, plan: Plan,
                 evaluator: CandidateEvaluator) -> Plan:
        proto = model.to_onnx()
        evaluator.model_bytes = proto.SerializeToString()
        feed = _timing_feed(proto, ctx)
        check = policy.time(proto, evaluator.build(plan.formats()), feed)
        plan = replace(plan, timing=check)
        if check.kept == "float":
            log.warning("kept the model float: int8 ran %.2f ms against %.2f ms in float on this machine "
                        "(onnxruntime, 1 thread); --quantize static forces int8", check.int8_ms, check.float_ms)
            plan = _all_float(plan, policy.speed_reason(check, rg))
        return plan


    def _dynamic(self, model: Model, ctx: PassContext, policy: PrecisionPolicy, plan: Plan, scheme: QuantScheme,
                 budget: Budget) -> Plan:
        """Dynamic int8 per MatMul/Gemm where there are samples to judge on (``_plan_backoff.plan_dynamic``), a
        user's dynamic plan as given, else the whole model (timed against float where the host stands for it)."""
        from ._plan_backoff import dynamic_regions, plan_dynamic

        given = ctx.option("plan")
        if given is not None:
            where = "--plan" if isinstance(given, Plan) else str(given)
            loaded = given if isinstance(given, Plan) else Plan.load(given)
            if loaded.mode == "dynamic" and loaded.regions:
                fitted = loaded.fit(dynamic_regions(model, ctx.options, scheme).regions, where)
                bad = next((rid for rid, c in fitted.choices.items() if c.format not in (INT8, FLOAT)), None)
                if bad is not None:
                    raise UserError(f"{where}: region '{bad}' asks for {fitted.choices[bad].format}; a dynamic plan "
                                    "takes int8 or float")
                return replace(fitted, target=plan.target, budget=plan.budget, source="file", timing=plan.timing,
                               steps=list(loaded.steps))
        samples = _samples(ctx) if (ctx.calibration is not None or ctx.holdout is not None) and ctx.option(
            "plan_dynamic", True) else []
        searched = False
        if samples:
            shapes = shapes_at(model, ctx.calibration) if ctx.calibration is not None else None
            feed = _timing_feed(model.to_onnx(), ctx) if policy.measure else None
            plan, searched = plan_dynamic(model, ctx, policy, plan, scheme, budget, samples, shapes, feed)
            if searched:
                log.info("%s", speed_line(plan, policy))
        if policy.measure and not searched:
            plan = self._measure_dynamic(model, ctx, policy, plan)
        return plan

    @staticmethod
    def _measure_dynamic(model: Model, ctx: PassContext, policy: PrecisionPolicy, plan: Plan) -> Plan:
        """Dynamic quantization timed against float on a copy (``QuantizeDynamic.rewrite``); mode "none" when int8
        is not 5% faster."""
        from .quantize_dynamic import QuantizeDynamic

        proto = model.to_onnx()
        copy = Model.from_onnx(proto)
        scratch = PassContext(target=ctx.target, options=dict(ctx.options), plan=plan)
        if not QuantizeDynamic().rewrite(copy, scratch).changed:
            return plan
        check = policy.time(proto, copy.to_onnx(), _timing_feed(proto, ctx))
        plan = replace(plan, timing=check)
        if check.kept == "float":
            log.warning("kept the model float: int8 ran %.2f ms against %.2f ms in float on this machine "
                        "(onnxruntime, 1 thread); --quantize dynamic forces int8", check.int8_ms, check.float_ms)
            plan = replace(plan, mode="none", note=policy.speed_reason(check, RegionGraph([], {}, {})))
        return plan


def _timing_feed(proto: onnx.ModelProto, ctx: PassContext) -> dict[str, np.ndarray]:
    """A calibration sample when the data can be read again, else generated inputs of the model's shapes."""
    from onnxopt.verify import make_feeds

    data = ctx.calibration
    if data is not None and getattr(data, "reiterable", isinstance(data, (list, tuple))):
        return dict(next(iter(data)))
    return make_feeds(proto)


def _all_float(plan: Plan, reason: str) -> Plan:
    return replace(plan.with_formats({rid: FLOAT for rid in plan.quantized()}, reason), note=reason)


def _budget(ctx: PassContext) -> Budget:
    b = ctx.option("budget")
    if isinstance(b, Budget):
        return b
    return Budget.parse(b, float(ctx.option("min_cosine", 0.99)))


def _samples(ctx: PassContext) -> list[dict[str, np.ndarray]]:
    """Held-back samples (``ctx.holdout``), else the first calibration samples when they can be read again."""
    held = getattr(ctx, "holdout", None)
    if held is not None:
        return [dict(f) for f in held]
    data = ctx.calibration
    if data is None or not getattr(data, "reiterable", isinstance(data, (list, tuple))):
        return []
    log.info("no held-back samples: the budget is judged on the first %d calibration samples (pass 10 or more "
             "samples to hold some back)", SEARCH_FALLBACK_SAMPLES)
    return [dict(f) for f in itertools.islice(iter(data), SEARCH_FALLBACK_SAMPLES)]


__all__ = ["CandidateEvaluator", "DefaultPolicy", "PlanPrecision", "PrecisionPolicy"]
