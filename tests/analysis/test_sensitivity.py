"""Sensitivity: both figures per region, any executor (inline, threads, processes), caching, the back-off order."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from onnxopt.analysis.sensitivity import (
    EvalCache,
    InlineExecutor,
    back_off_order,
    make_executor,
    measure,
)
from onnxopt.budget import BudgetResult, TermResult
from onnxopt.errors import UserError
from onnxopt.plan import FLOAT, INT8

COST = {"a": 0.1, "b": 2.0, "c": 0.4}


class Cost:
    """Picklable (top level, plain data): error = sum of the int8 regions' costs, plus an interaction of a with c."""

    def __init__(self, cost):
        self.cost = cost

    def __call__(self, formats):
        use = sum(c for r, c in self.cost.items() if formats[r] == INT8)
        if formats["a"] == INT8 and formats["c"] == INT8:
            use += 0.3
        return BudgetResult((TermResult("t", "cosine", "y", 1 - use, 0.99, use <= 1, use),))


def _check(sens):
    assert sens["b"].quantized_alone == pytest.approx(2.0)
    assert sens["b"].float_alone == pytest.approx(0.1 + 0.4 + 0.3)
    assert sens["a"].float_alone == pytest.approx(2.4)
    assert back_off_order(sens) == ["b", "c", "a"]


@pytest.mark.parametrize("make", [InlineExecutor, lambda: ThreadPoolExecutor(max_workers=2)])
def test_measure_with_inline_and_thread_executors(make):
    cache = EvalCache(Cost(COST))
    with make() as ex:
        sens = measure(list(COST), dict.fromkeys(COST, INT8), cache, ex)
    _check(sens)
    assert cache.evaluations == 6
    before = cache.evaluations
    measure(list(COST), dict.fromkeys(COST, INT8), cache, InlineExecutor())
    assert cache.evaluations == before  # cached: nothing evaluated again
    assert cache({"a": FLOAT, "b": FLOAT, "c": FLOAT}).usage == 0.0 and cache.evaluations == before + 1


def test_measure_in_a_process_pool():
    ex, owned = make_executor("process", tasks=6, evaluator=Cost(COST))
    try:
        sens = measure(list(COST), dict.fromkeys(COST, INT8), EvalCache(Cost(COST)), ex)
    finally:
        if owned:
            ex.shutdown()
    _check(sens)


def test_fixed_regions_stay_put():
    seen = []

    def ev(formats):
        seen.append(formats["c"])
        return Cost(COST)(formats)

    measure(["a", "b"], {"a": INT8, "b": INT8, "c": INT8}, EvalCache(ev), InlineExecutor(), fixed={"c": FLOAT})
    assert set(seen) == {FLOAT}


def test_make_executor_choices():
    assert isinstance(make_executor("inline", 10)[0], InlineExecutor)
    assert isinstance(make_executor("process", 1)[0], InlineExecutor)  # one task: no pool
    ex, owned = make_executor("process", 4, evaluator=lambda f: f)  # a lambda cannot be pickled: threads
    if ex.__class__.__name__ != "InlineExecutor":  # one CPU: inline
        assert isinstance(ex, ThreadPoolExecutor)
    ex.shutdown()
    mine = ThreadPoolExecutor(max_workers=1)
    assert make_executor(mine, 4) == (mine, False)
    mine.shutdown()
    with pytest.raises(UserError, match="unknown executor"):
        make_executor("ray", 4)


def test_errors_in_the_evaluator_reach_the_caller():
    def boom(formats):
        raise RuntimeError("kaput")

    with pytest.raises(RuntimeError, match="kaput"):
        measure(["a"], {"a": INT8}, EvalCache(boom), InlineExecutor())
