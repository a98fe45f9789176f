"""The last step of planning: which of the evaluated plans to take, timed where this host stands for the target,
and the reason each region ends up in its format.

Why its own module: ``plan_search.search`` picks by the target's cost model (latency estimate, then size); where
the host runs the target's kernels (``policy.measure``) the candidates that meet the budget are timed here instead,
whole models, interleaved, onnxruntime with 1 thread (``policy.time_many``): all-float, all-int8 when it meets the
budget, the plan the back-off search found, the cost model's "keep float what does not pay" of it, and the
estimate's own choice. The fastest is kept; a plan with int8 must be ``policy.margin`` (0.95) of all-float's time.
Every float/int8 boundary costs a Q/DQ pair, so whole models are judged, never regions alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx

from onnxopt.analysis.plan_search import SearchResult, best_step, mark_chosen, mark_pareto
from onnxopt.analysis.regions import RegionGraph
from onnxopt.analysis.sensitivity import Sensitivity
from onnxopt.plan import MEASURED_BY, Plan, SpeedCheck, is_quantized

log = logging.getLogger(__name__)

MAX_TIMED = 6  # whole models timed per plan, all-float included


def time_candidates(proto: onnx.ModelProto, policy: Any, result: SearchResult, evaluator: Any,
                    feed: Mapping[str, np.ndarray]) -> tuple[SearchResult, SpeedCheck | None]:
    """Time the budget-feasible candidates of ``result`` (see the module docstring) and choose the fastest;
    (result with ``measured_ms`` on the timed steps and ``chosen`` moved, the measured SpeedCheck)."""
    steps = list(result.steps)
    fl = result.float_step
    if fl is None:
        return result, None
    want = [fl, 0, result.searched_step, *result.variant_steps, result.chosen()]
    timed: list[int] = []
    for i in want:
        if i is not None and steps[i].ok and i not in timed and len(timed) < MAX_TIMED:
            timed.append(i)
    models = [proto if i == fl else evaluator.build(result.step_formats[i]) for i in timed]
    ms = policy.time_many(models, feed)
    for i, t in zip(timed, ms, strict=True):
        steps[i] = replace(steps[i], measured_ms=float(t))
    idx = best_step(steps, fl, float(policy.margin), latency_of=lambda s: s.measured_ms, among=timed)
    assert idx is not None  # all-float is timed and meets the budget
    steps = mark_chosen(mark_pareto(steps), idx)
    quantized = [i for i in timed if i != fl]
    best_int8 = idx if idx != fl else min(quantized, key=lambda i: steps[i].measured_ms or 0.0, default=None)
    check = SpeedCheck("float" if idx == fl else "int8", "measured", MEASURED_BY,
                       float_ms=steps[fl].measured_ms,
                       int8_ms=None if best_int8 is None else steps[best_int8].measured_ms,
                       host=policy.host_label())
    if idx == fl and check.int8_ms is not None:
        log.warning("kept the model float: int8 ran %.2f ms at best against %.2f ms in float on this machine "
                    "(onnxruntime, 1 thread); --quantize static forces int8", check.int8_ms, check.float_ms)
    return replace(result, steps=steps, formats=dict(result.step_formats[idx]), raised=list(steps[idx].raised),
                   result=result.step_results[idx] if result.step_results else result.result), check


def _speed_reasons(plan: Plan, policy: Any, rg: RegionGraph, result: SearchResult) -> tuple[str, str]:
    """(why all-float was chosen over every int8 plan, why a region the budget allowed in int8 stays float)."""
    idx, fl, base = result.chosen(), result.float_step, result.searched_step
    steps = result.steps
    if idx is None:
        return "", ""
    s, b = steps[idx], steps[base] if base is not None else steps[idx]
    others = [t for i, t in enumerate(steps) if t.ok and i != fl]
    if s.measured_ms is not None:
        timed = [t for t in others if t.measured_ms is not None]
        best = min((t.measured_ms for t in timed), default=None)
        all_float = policy.speed_reason(SpeedCheck("float", "measured", MEASURED_BY, float_ms=s.measured_ms,
                                                   int8_ms=best), rg) if best is not None else ""
        part = (f"int8 does not pay here: the plan with it float ran {s.measured_ms:.2f} ms against "
                f"{b.measured_ms:.2f} ms for the plan the budget allows ({MEASURED_BY})"
                if b.measured_ms is not None else "int8 does not pay here (measured)")
        return all_float, part
    cost = getattr(policy, "cost", None)
    if s.latency is not None and cost is not None:
        best = min((t.latency for t in others if t.latency is not None), default=None)
        all_float = (f"int8 does not pay off in any plan that meets the budget (cost model {cost.name}: the best is "
                     f"estimated at {best:.3g} against {s.latency:.3g} {cost.unit} for all-float)"
                     if best is not None else "")
        part = (f"int8 does not pay here (cost model {cost.name}: the plan with it float is estimated at "
                f"{s.latency:.3g} against {b.latency:.3g} {cost.unit} for the plan the budget allows)"
                if b.latency is not None else f"int8 does not pay here (cost model {cost.name})")
        return all_float, part
    size = (f"the plan with it float is smaller and meets the budget ({s.size_bytes} against {b.size_bytes} "
            "bytes; no latency figures)")
    return size, size


def apply_choice(plan: Plan, policy: Any, rg: RegionGraph, result: SearchResult, start: Mapping[str, str],
                 searchable: Sequence[str], sens: Mapping[str, Sensitivity], order: Sequence[str],
                 evaluator: Any) -> Plan:
    """``plan`` with the chosen step's formats and each changed region's reason: backed off for the budget (the
    search raised it), or float because int8 does not pay there (the choice among the steps)."""
    rank = {rid: i + 1 for i, rid in enumerate(order)}
    all_float_why, part_why = _speed_reasons(plan, policy, rg, result)
    final = result.formats
    for_speed = result.ok and result.chosen() == result.float_step and any(
        is_quantized(f) for f in result.searched.values())
    choices = dict(plan.choices)
    for rid in searchable:
        s = sens.get(rid)
        c = replace(choices[rid], format=final[rid], quantized_alone=None if s is None else s.quantized_alone,
                    float_alone=None if s is None else s.float_alone)
        if final[rid] != start[rid]:
            alone = f"alone it uses {s.quantized_alone:.3g}x the budget, " if s is not None else ""
            if not result.ok:
                why = "even all-float misses the budget"
            elif result.searched.get(rid) == final[rid]:
                why = f"backed off to keep the budget ({alone}sensitivity rank {rank[rid]} of {len(order)})"
            else:
                why = all_float_why if for_speed and all_float_why else part_why
            c = replace(c, reason=why)
        choices[rid] = c
    note = plan.note
    if not result.ok:
        worst = result.result.worst() if result.result is not None else None
        note = ("the budget is missed even with every region in float"
                + (f" ({worst.label}: {worst.value:.4g})" if worst is not None else ""))
        log.warning("%s: nothing can save it", note)
    elif for_speed and all_float_why:
        note = all_float_why
    unit = getattr(getattr(policy, "cost", None), "unit", "")
    return replace(plan, choices=choices, steps=result.steps, source="search", note=note,
                   budget=evaluator.judge.budget.describe(), latency_unit=unit)


def speed_line(plan: Plan, policy: Any) -> str:
    """One line: how the plan's speed was judged (measured here, the cost model, or neither) and what was kept."""
    chosen = next((s for s in plan.steps if s.chosen), None)
    what = f"kept {'all float' if not plan.quantized() else chosen.label if chosen else 'the default plan'}"
    t = plan.timing
    if t is not None and t.source == "measured":
        timed = ", ".join(f"{s.label} {s.measured_ms:.2f} ms" for s in plan.steps if s.measured_ms is not None)
        figures = timed or f"float {t.float_ms:.2f} ms, int8 {t.int8_ms:.2f} ms"
        return f"plan speed measured on this host ({t.host or 'host unknown'}, {t.engine}): {figures}; {what}"
    cost = getattr(policy, "cost", None)
    if cost is not None:
        why = f" (not measured here: {t.reason})" if t is not None and t.reason else ""
        return f"plan speed estimated by the cost model {cost.name}{why}; {what}"
    return f"plan speed not judged (no cost model, not timed); {what}"


__all__ = ["MAX_TIMED", "apply_choice", "speed_line", "time_candidates"]
