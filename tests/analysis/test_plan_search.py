"""Plan search: greedy back-off with bisection over the sensitivity order, refinement, infeasible budgets, Pareto, and
the choice among the steps (never one that all-float or another feasible step beats on latency and size)."""

from __future__ import annotations

import pytest

from onnxopt.analysis.plan_search import best_step, mark_pareto, move_list, search
from onnxopt.budget import BudgetResult, TermResult
from onnxopt.plan import A16W8, FLOAT, INT8, PlanStep


def _result(use: float, size: int | None = None) -> BudgetResult:
    return BudgetResult((TermResult("y: cosine >= 0.99", "cosine", "y", 1 - use / 100, 0.99, use <= 1.0, use),), size)


class Additive:
    """Error adds up over quantized regions (int8: ``cost[r]``, a16w8: a tenth of it); counts evaluations."""

    def __init__(self, cost: dict[str, float]):
        self.cost, self.calls = cost, []

    def __call__(self, formats):
        self.calls.append(dict(formats))
        return _result(sum(c * (1.0 if formats[r] == INT8 else 0.1 if formats[r] == A16W8 else 0.0)
                           for r, c in self.cost.items()))


def two_rungs(_rid, fmt):
    return {INT8: FLOAT}.get(fmt)


def test_nothing_raised_when_the_start_meets_the_budget():
    ev = Additive({"a": 0.2, "b": 0.3})
    res = search({"a": INT8, "b": INT8}, ["b", "a"], two_rungs, ev)
    assert res.ok and res.formats == {"a": INT8, "b": INT8} and res.raised == []
    # start and the all-float anchor, nothing else; the start is chosen (fewest moves: no latency or size known)
    assert ev.calls == [{"a": INT8, "b": INT8}, {"a": FLOAT, "b": FLOAT}]
    assert [s.label for s in res.steps] == ["start", "all float"] and [s.chosen for s in res.steps] == [True, False]


def test_bisection_raises_the_fewest_most_sensitive_regions():
    cost = {f"r{i}": 0.05 for i in range(16)}
    cost.update({"hot": 3.0, "warm": 0.6})
    ev = Additive(cost)
    order = ["hot", "warm"] + [f"r{i}" for i in range(16)]
    res = search(dict.fromkeys(cost, INT8), order, two_rungs, ev, latency=lambda f: sum(v == FLOAT for v in f.values()),
                 refine=0)
    # 0.6 + 16 * 0.05 = 1.4 > 1 with "hot" alone raised; raising "warm" too leaves 0.8
    assert res.ok and [k for k, v in res.formats.items() if v == FLOAT] == ["hot", "warm"]
    assert res.raised == ["hot=float", "warm=float"]
    assert [s.raised for s in res.steps if s.chosen] == [("hot=float", "warm=float")]
    assert len(ev.calls) <= 2 + 5  # start, all float, log2(18) bisection steps
    assert [s.label for s in res.steps][:2] == ["start", "all float"]
    assert all(s.latency is not None for s in res.steps)


def test_refinement_puts_back_a_region_the_order_raised_needlessly():
    # the order is wrong about "x": raised first but harmless; refinement returns it to int8
    ev = Additive({"x": 0.0, "hot": 5.0, "b": 0.5})
    res = search({"x": INT8, "hot": INT8, "b": INT8}, ["x", "hot", "b"], two_rungs, ev)
    assert res.ok and res.formats == {"x": INT8, "hot": FLOAT, "b": INT8}
    assert any(s.label.startswith("refine: x") and s.ok for s in res.steps)


def test_infeasible_budget_is_reported_with_everything_raised():
    def always_over(formats):
        return _result(2.0)

    res = search({"a": INT8}, ["a"], two_rungs, always_over)
    assert not res.ok and res.formats == {"a": FLOAT} and len(res.steps) == 2


def test_ladder_moves_one_rung_per_round():
    def ladder(_rid, fmt):
        return {INT8: A16W8, A16W8: FLOAT}.get(fmt)

    assert move_list({"a": INT8, "b": INT8}, ["b", "a"], ladder) == [
        ("b", A16W8), ("a", A16W8), ("b", FLOAT), ("a", FLOAT)]
    ev = Additive({"a": 4.0, "b": 0.5})
    res = search({"a": INT8, "b": INT8}, ["a", "b"], ladder, ev)
    assert res.ok and res.formats == {"a": A16W8, "b": INT8}  # 0.4 + 0.5 fits: a16w8 is enough for "a"


def test_pareto_flags():
    steps = [PlanStep(0, "a", (), 2.0, False, latency=1.0), PlanStep(1, "b", (), 0.5, True, latency=2.0),
             PlanStep(2, "c", (), 0.6, True, latency=3.0), PlanStep(3, "d", (), 0.0, True, latency=4.0)]
    assert [s.pareto for s in mark_pareto(steps)] == [True, True, False, True]


class Sized(Additive):
    """Additive error, plus a size per assignment: float regions cost ``big`` bytes, int8 ones 1, and every
    float/int8 neighbour pair in ``chain`` order ``boundary`` bytes (Q/DQ parameters)."""

    def __init__(self, cost, chain, big=4, boundary=3):
        super().__init__(cost)
        self.chain, self.big, self.boundary = chain, big, boundary

    def size(self, formats) -> int:
        kinds = [formats[r] == FLOAT for r in self.chain]
        flips = sum(a != b for a, b in zip(kinds, kinds[1:], strict=False))
        return sum(self.big if k else 1 for k in kinds) + self.boundary * flips

    def __call__(self, formats):
        res = super().__call__(formats)
        return BudgetResult(res.terms, self.size(formats))


def boundary_latency(chain, macs, speedup=2.0, qdq=6.0):
    """A toy cost model: float regions cost their MACs, int8 ones half, each float/int8 boundary ``qdq``."""
    def latency(formats):
        kinds = [formats[r] == FLOAT for r in chain]
        return sum(macs[r] if k else macs[r] / speedup for r, k in zip(chain, kinds, strict=True)) + qdq * sum(
            a != b for a, b in zip(kinds, kinds[1:], strict=False))
    return latency


def test_a_plan_dominated_by_all_float_is_never_chosen():
    # the reviewer's case in small: the budget needs the big region float; the small one left in int8 saves less
    # than the boundaries it adds, so that plan is slower and larger than all-float, which also meets the budget
    chain = ["small", "big", "tail"]
    ev = Sized({"small": 0.1, "big": 3.0, "tail": 2.0}, chain, boundary=4)
    latency = boundary_latency(chain, {"small": 4.0, "big": 40.0, "tail": 4.0})
    res = search(dict.fromkeys(chain, INT8), ["big", "tail", "small"], two_rungs, ev, latency=latency)
    searched = next(s for s in res.steps if s.raised == ("big=float", "tail=float"))
    anchor = next(s for s in res.steps if s.label == "all float")
    assert searched.ok and anchor.ok  # both meet the budget ...
    assert anchor.latency < searched.latency and anchor.size_bytes < searched.size_bytes  # ... all-float beats it
    assert res.ok and res.formats == dict.fromkeys(chain, FLOAT) and res.searched == {
        "small": INT8, "big": FLOAT, "tail": FLOAT}
    assert [s.label for s in res.steps if s.chosen] == ["all float"]
    chosen = next(s for s in res.steps if s.chosen)
    assert chosen.pareto
    for s in res.steps:  # no step that meets the budget is both faster and smaller than the chosen one
        assert not (s.ok and s.latency < chosen.latency and s.size_bytes <= chosen.size_bytes)


def test_a_variant_that_keeps_float_what_does_not_pay_is_evaluated_and_chosen():
    chain = ["a", "b", "c", "d"]
    seen = []

    def variants(formats):
        seen.append(dict(formats))
        return [("keep float what does not pay (toy)", {**formats, "b": FLOAT})]

    def latency(b_int8_extra):  # float regions cost 10, int8 ones 5, and b in int8 ``b_int8_extra`` more
        return lambda f: sum(10 if f[r] == FLOAT else 5 for r in chain) + (b_int8_extra if f["b"] == INT8 else 0)

    ev = Sized({r: 0.1 for r in chain}, chain)
    res = search(dict.fromkeys(chain, INT8), chain, two_rungs, ev, latency=latency(5), variants=variants)
    assert seen == [dict.fromkeys(chain, INT8)]  # proposed from the plan the search found (the start here)
    v = next(s for s in res.steps if s.label.startswith("keep float"))
    assert v.raised == ("b=float",) and v.ok
    assert res.formats == dict.fromkeys(chain, INT8)  # as fast: the smaller all-int8 stays
    res = search(dict.fromkeys(chain, INT8), chain, two_rungs, Sized({r: 0.1 for r in chain}, chain),
                 latency=latency(6), variants=variants)  # b is slower in int8: the variant is faster
    assert res.formats == {**dict.fromkeys(chain, INT8), "b": FLOAT} and res.result.size_bytes is not None
    assert [s.label for s in res.steps if s.chosen] == ["keep float what does not pay (toy)"]


@pytest.mark.parametrize("int8_latency,chosen", [(9.0, "start"), (9.6, "all float")])
def test_int8_must_beat_all_float_by_the_margin(int8_latency, chosen):
    ev = Additive({"a": 0.1})
    res = search({"a": INT8}, ["a"], two_rungs, ev,
                 latency=lambda f: 10.0 if f["a"] == FLOAT else int8_latency, margin=0.95)
    assert [s.label for s in res.steps if s.chosen] == [chosen]


def test_best_step_among_measured_steps_only():
    steps = [PlanStep(0, "start", (), 0.5, True, size_bytes=10, latency=1.0, measured_ms=6.0),
             PlanStep(1, "all float", ("a=float",), 0.0, True, size_bytes=40, latency=3.0, measured_ms=4.6),
             PlanStep(2, "2 of 3", ("a=float",), 0.9, True, size_bytes=30, latency=2.0),
             PlanStep(3, "1 of 3", (), 1.5, False, size_bytes=5, latency=0.5, measured_ms=1.0)]
    assert best_step(steps, 1) == 0  # by the estimate: the start
    assert best_step(steps, 1, 0.95, latency_of=lambda s: s.measured_ms, among=[0, 1, 3]) == 1  # infeasible 3 out
    assert best_step([replace_ok(s, False) for s in steps], 1) is None


def replace_ok(step, ok):
    from dataclasses import replace

    return replace(step, ok=ok)


def test_pareto_counts_size_too():
    steps = [PlanStep(0, "a", (), 0.5, True, size_bytes=100, latency=2.0),
             PlanStep(1, "b", (), 0.5, True, size_bytes=50, latency=2.0),  # b dominates a (same error and speed)
             PlanStep(2, "c", (), 0.5, True, size_bytes=10, latency=3.0)]  # smaller but slower: on the front
    assert [s.pareto for s in mark_pareto(steps)] == [False, True, True]
