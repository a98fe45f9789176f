"""Per-region sensitivity to quantization, measured on held-back samples, run through any executor.

For each region two figures, both as budget use (``onnxopt.budget``: 1 = at the limit):

- ``quantized_alone``: only this region quantized, everything else float: how much error the region brings in by
  itself (AIMET AMP's phase 1 measure: the figure the back-off order sorts by);
- ``float_alone``: every other region quantized, this one float: how much backing this region off would recover
  in the all-int8 model (the tie-break of the order).

Why an executor: 2 evaluations per region, each a model written, loaded and run on the held-back samples, are the
bulk of the planning time and are independent. ``measure`` takes any ``concurrent.futures.Executor``: a local
process pool by default (``make_executor("process")``), a ``ThreadPoolExecutor``, the ``InlineExecutor`` here, or a
Ray/Dask executor (None picks processes, or threads under a script file, whose workers would re-import it; a pool
that breaks anyway falls back to threads with one warning). The evaluator must then be picklable (a top-level
class holding plain data, like ``passes.plan_precision.CandidateEvaluator``); tasks are sent in chunks, one per
worker, so the evaluator crosses the process boundary once per chunk, not once per candidate. Results are cached by
assignment (``EvalCache``) and shared with the search, so an assignment is never evaluated twice. The progress bar
is shown only on a terminal.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from onnxopt.budget import BudgetResult
from onnxopt.plan import FLOAT

log = logging.getLogger(__name__)

Formats = dict[str, str]
Evaluator = Callable[[Formats], BudgetResult]
EXECUTORS = ("process", "thread", "inline")


class InlineExecutor(Executor):
    """Runs each task at submit time in the calling thread: deterministic, no pickling, for tests and debugging."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future, as any executor does
            fut.set_exception(e)
        return fut


def make_executor(kind: str | Executor | None, tasks: int, evaluator: Any = None) -> tuple[Executor, bool]:
    """(executor, owned: whether the caller must shut it down). ``kind``: an Executor (used as is), "process"
    (inline when one worker would do, threads when ``evaluator`` cannot be pickled), "thread", "inline"; None:
    "process", or "thread" when called from a script file (``_unguarded_script``)."""
    if isinstance(kind, Executor):
        return kind, False
    if kind is None:
        kind = "thread" if _unguarded_script() else "process"
    if kind not in EXECUTORS:
        from onnxopt.errors import UserError

        raise UserError(f"unknown executor {kind!r}; use one of {', '.join(EXECUTORS)} (or pass an Executor)")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(tasks, cpus))  # the CPUs this process may use, not the machine's
    if kind == "inline" or workers == 1:
        return InlineExecutor(), True
    if kind == "process":
        try:
            pickle.dumps(evaluator)
        except Exception as e:  # a lambda metric, an open session...: threads need no pickling
            log.info("sensitivity runs in threads: the evaluator cannot be sent to processes (%s)", e)
            kind = "thread"
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=workers), True
    import multiprocessing

    # spawn, not fork: onnxruntime's thread pools in this process must not be copied mid-flight into children
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")), True


def _unguarded_script() -> bool:
    """Whether ``__main__`` is a script file run as such: spawned workers would import it again, and one without an
    ``if __name__ == "__main__":`` guard would run itself in every worker. The CLI asks for processes explicitly;
    library users pass ``plan_executor="process"`` (or an Executor) from a guarded script."""
    main = sys.modules.get("__main__")
    return main is not None and getattr(main, "__spec__", None) is None and bool(getattr(main, "__file__", None))


def _key(formats: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(formats.items()))


def evaluate_chunk(evaluator: Evaluator, chunk: Sequence[Formats]) -> list[BudgetResult]:
    """Top level so process pools can run it: one evaluator, several assignments."""
    return [evaluator(dict(f)) for f in chunk]


class EvalCache:
    """Budget results by assignment, for one evaluator; ``map`` runs what is missing through an executor."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self.results: dict[tuple[tuple[str, str], ...], BudgetResult] = {}
        self.evaluations = 0

    def __call__(self, formats: Formats) -> BudgetResult:
        key = _key(formats)
        if key not in self.results:
            self.results[key] = self.evaluator(dict(formats))
            self.evaluations += 1
        return self.results[key]

    def map(self, assignments: Sequence[Formats], executor: Executor, progress: bool = False,
            desc: str = "sensitivity") -> list[BudgetResult]:
        todo: dict[tuple[tuple[str, str], ...], Formats] = {}
        for f in assignments:
            if _key(f) not in self.results:
                todo.setdefault(_key(f), dict(f))
        if todo:
            items = list(todo.values())
            workers = max(1, int(getattr(executor, "_max_workers", 1) or 1))
            size = max(1, -(-len(items) // workers))
            chunks = [items[i:i + size] for i in range(0, len(items), size)]
            try:
                self._run(executor, chunks, progress, desc)
            except BrokenProcessPool as e:
                # spawned workers re-import the main script: one without ``if __name__ == "__main__":`` cannot
                # start them (the CLI can); threads need no import and onnxruntime runs without the GIL
                log.warning("the process pool could not run the sensitivity analysis (%s; a script calling onnxopt "
                            "should guard its code with if __name__ == '__main__'); running it in threads", e)
                with ThreadPoolExecutor(max_workers=workers) as threads:
                    self._run(threads, [[f for f in c if _key(f) not in self.results] for c in chunks], progress,
                              desc)
        return [self.results[_key(f)] for f in assignments]

    def _run(self, executor: Executor, chunks: Sequence[Sequence[Formats]], progress: bool, desc: str) -> None:
        futures = {executor.submit(evaluate_chunk, self.evaluator, c): c for c in chunks if c}
        for fut in _progress(as_completed(futures), len(futures), progress, desc):
            for f, res in zip(futures[fut], fut.result(), strict=True):
                self.results[_key(f)] = res
                self.evaluations += 1


def _progress(it: Iterable[Any], total: int, progress: bool, desc: str) -> Iterable[Any]:
    from onnxopt.progress import progress_bar

    return progress_bar(it, desc, total, enabled=progress, unit="chunk")  # drawn on a terminal only


@dataclass(frozen=True)
class Sensitivity:
    region: str
    quantized_alone: float
    float_alone: float


def measure(regions: Sequence[str], base: Mapping[str, str], cache: EvalCache, executor: Executor,
            fixed: Mapping[str, str] | None = None, progress: bool = False) -> dict[str, Sensitivity]:
    """Both figures for each region in ``regions``, relative to ``base`` (the all-quantized assignment). ``fixed``:
    regions outside the search (kept at their format in every candidate)."""
    fixed = dict(fixed or {})
    floats = {r: FLOAT for r in base}
    alone = [{**floats, **fixed, r: base[r]} for r in regions]
    backed = [{**base, **fixed, r: FLOAT} for r in regions]
    results = cache.map(alone + backed, executor, progress)
    n = len(regions)
    return {r: Sensitivity(r, results[i].usage, results[n + i].usage) for i, r in enumerate(regions)}


def back_off_order(sens: Mapping[str, Sensitivity]) -> list[str]:
    """Most sensitive first: by the error a region brings in alone, then by what backing it off recovers (lower
    budget use with it float is more recovery), then by id for a deterministic order."""
    return sorted(sens, key=lambda r: (-sens[r].quantized_alone, sens[r].float_alone, r))


__all__ = ["EXECUTORS", "EvalCache", "InlineExecutor", "Sensitivity", "back_off_order", "evaluate_chunk",
           "make_executor", "measure"]
