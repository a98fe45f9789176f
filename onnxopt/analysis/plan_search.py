"""Search for the plan that meets the budget with the most regions at the cheapest format.

The procedure is the second phase of AIMET's automatic mixed precision (``aimet_torch.amp``: a greedy order of
quantizer groups by measured sensitivity, then a binary search over that order for the point that meets the
target), adapted to "back off": start from every region at its start format (int8); if the budget is missed,
regions move to their next higher format (int16 activations, then float, per the target's ladder) in order of
sensitivity, most sensitive first. The candidates are the prefixes of that move list; the budget is checked by
bisection over the prefix length, so N regions cost about log2(N) + 2 whole-model evaluations instead of N.

Bisection assumes that raising precision never breaks the budget, which holds in practice but not always (errors of
opposite sign can cancel). Two guards: the full prefix (everything at the top of its ladder) is evaluated before
bisecting, so an infeasible budget is reported as such; and a short refinement step tries to put each raised
region back, least sensitive first, and keeps the change when the budget still holds (at most ``refine`` tries,
stopping after ``REFINE_PATIENCE`` misses in a row: near the limit every put-back misses).

Then the choice (``best_step``): the search's own result is only one candidate. All-int8 (the start) and all-float
(every region at the top of its ladder) are always evaluated, and so are the ``variants`` of the budget-feasible plan
the caller proposes (the target's cost model: "keep float what does not pay"). Of the steps that meet the budget, the
one chosen is the best by the target's objective: lowest latency (the estimate, or measured ms when the caller timed
them), then smallest size, then fewest moves, then least budget use; a plan with int8 in it must beat all-float by
``margin`` (0.95: 5% faster) on latency. So the chosen plan is never one that another evaluated plan beats on
latency and size while also meeting the budget (found on zoo small_cnn, ``--budget cosine:0.99999``: Conv_1 and fc
float, estimated 6.03 M MAC-equivalents and 25,223 bytes, against all-float's 5.16 M and 23,142 bytes).

Every evaluation is a ``PlanStep`` (budget use, size, latency estimate, ``chosen`` on the one taken);
``mark_pareto`` flags the steps that no other step beats on budget use, latency and size at once: the curve the
report draws.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from onnxopt.budget import BudgetResult
from onnxopt.plan import PlanStep

log = logging.getLogger(__name__)

Formats = dict[str, str]
REFINE_PATIENCE = 3  # refinement stops after this many puts-back in a row that miss the budget
Ladder = Callable[[str, str], "str | None"]  # (region, format) -> the next higher format, or None at the top


@dataclass
class SearchResult:
    """The chosen formats, whether they meet the budget, the moves made (``region=format``) and every step.

    ``formats`` is the chosen step's (``best_step``); ``searched`` the plan the back-off search found (the most
    regions at their start format that meets the budget); ``step_formats[i]`` the formats step ``i`` evaluated;
    ``float_step`` the index of the all-float step (None when the start is all the ladder allows);
    ``searched_step`` the index of the searched plan's step."""

    formats: Formats
    ok: bool
    raised: list[str]
    steps: list[PlanStep] = field(default_factory=list)
    result: BudgetResult | None = None
    searched: Formats = field(default_factory=dict)
    step_formats: list[Formats] = field(default_factory=list)
    float_step: int | None = None
    variant_steps: list[int] = field(default_factory=list)  # the steps of the variants
    step_results: list[BudgetResult] = field(default_factory=list)

    def chosen(self) -> int | None:
        return next((i for i, s in enumerate(self.steps) if s.chosen), None)

    @property
    def searched_step(self) -> int | None:
        return next((i for i, f in enumerate(self.step_formats) if f == self.searched), None)


def move_list(start: Mapping[str, str], order: Sequence[str], ladder: Ladder) -> list[tuple[str, str]]:
    """Moves (region, new format): one rung at a time, every region of ``order`` per round, until all are at the top."""
    current = dict(start)
    moves: list[tuple[str, str]] = []
    while True:
        round_moves = []
        for rid in order:
            nxt = ladder(rid, current[rid])
            if nxt is not None:
                round_moves.append((rid, nxt))
                current[rid] = nxt
        if not round_moves:
            return moves
        moves += round_moves


def _apply(start: Mapping[str, str], moves: Sequence[tuple[str, str]]) -> Formats:
    out = dict(start)
    for rid, fmt in moves:
        out[rid] = fmt
    return out


def _raised(start: Mapping[str, str], formats: Mapping[str, str], first: Sequence[str] = ()) -> list[str]:
    """``region=format`` for every region ``formats`` changes from ``start``: ``first`` (moves already named, still
    in force) in their order, then the others in region order."""
    head = [m for m in first if formats.get(m.rpartition("=")[0]) == m.rpartition("=")[2]]
    named = {m.rpartition("=")[0] for m in head}
    return head + [f"{r}={f}" for r, f in formats.items() if f != start.get(r) and r not in named]


def search(start: Mapping[str, str], order: Sequence[str], ladder: Ladder,
           evaluate: Callable[[Formats], BudgetResult], latency: Callable[[Formats], float | None] | None = None,
           refine: int = 8, variants: Callable[[Formats], Sequence[tuple[str, Formats]]] | None = None,
           margin: float = 1.0) -> SearchResult:
    """Greedy back-off with bisection, then the choice among every step (see the module docstring). ``order``:
    regions, most sensitive first; ``evaluate``: budget result of a full assignment (cache it: the same assignment
    may be asked twice); ``variants``: (label, formats) to try from the budget-feasible plan; ``margin``: how much
    faster than all-float (latency ratio) a plan with int8 must be to be chosen over it."""
    steps: list[PlanStep] = []
    step_formats: list[Formats] = []
    results: list[BudgetResult] = []

    def run(formats: Formats, label: str, raised: Sequence[str]) -> BudgetResult:
        for i, f in enumerate(step_formats):
            if f == formats:
                return results[i]  # evaluated already (a variant equal to a step): one step per assignment
        res = evaluate(formats)
        steps.append(PlanStep(len(steps), label, tuple(raised), res.usage, res.ok, res.values(), res.size_bytes,
                              latency(formats) if latency is not None else None))
        step_formats.append(dict(formats))
        results.append(res)
        log.debug("plan step %d (%s): budget use %.3g, %s", len(steps) - 1, label, res.usage,
                  "meets the budget" if res.ok else "misses it")
        return res

    def names(moves: Sequence[tuple[str, str]]) -> list[str]:
        return [f"{r}={f}" for r, f in moves]

    def finish(searched: Formats) -> SearchResult:
        float_step = next((i for i, f in enumerate(step_formats) if f == top), None) if moves else None
        extra: list[int] = []
        if variants is not None and any(s.ok for s in steps):
            base = [s.raised for s, f in zip(steps, step_formats, strict=True) if f == searched]
            for label, formats in variants(dict(searched)):
                run(dict(formats), label, _raised(start, formats, base[0] if base else ()))
                extra.append(step_formats.index(dict(formats)))
        idx = best_step(steps, float_step, margin)
        ok = idx is not None
        if idx is None:  # nothing meets the budget: everything raised, said as such
            idx = float_step if float_step is not None else 0
        return SearchResult(dict(step_formats[idx]), ok, list(steps[idx].raised),
                            mark_chosen(mark_pareto(steps), idx), results[idx], dict(searched),
                            step_formats, float_step, extra, results)

    moves = move_list(start, order, ladder)
    top = _apply(start, moves)
    first = run(dict(start), "start", [])
    if moves:
        last = run(top, "all float", names(moves))  # the anchor every plan is compared with
    if first.ok or not moves:
        return finish(dict(start))
    if not last.ok:
        return finish(top)
    lo, hi = 0, len(moves)  # prefix lo misses the budget, prefix hi meets it
    while hi - lo > 1:
        mid = (lo + hi) // 2
        res = run(_apply(start, moves[:mid]), f"{mid} of {len(moves)} moves", names(moves[:mid]))
        if res.ok:
            hi = mid
        else:
            lo = mid
    chosen = list(moves[:hi])
    tries = misses = 0
    # least sensitive first, try putting each move back; not the last one: without it the prefix is ``lo``, which
    # bisection saw miss the budget
    for i in range(len(chosen) - 2, -1, -1):
        if tries >= refine or misses >= REFINE_PATIENCE:
            break
        rid, _ = chosen[i]
        if any(r == rid for r, _ in chosen[i + 1:]):
            continue  # a later rung of the same region is still there: undo that first
        trial = chosen[:i] + chosen[i + 1:]
        tries += 1
        res = run(_apply(start, trial), f"refine: {rid} back to {_apply(start, chosen[:i]).get(rid)}", names(trial))
        if res.ok:
            chosen, misses = trial, 0
        else:
            misses += 1
    return finish(_apply(start, chosen))


def best_step(steps: Sequence[PlanStep], float_step: int | None, margin: float = 1.0,
              latency_of: Callable[[PlanStep], float | None] | None = None,
              among: Sequence[int] | None = None) -> int | None:
    """Index of the step to choose: of those that meet the budget (and are in ``among``, when given), the lowest
    latency (``latency_of``, default the estimate; all-float's counted at ``margin`` times its own, so int8 must be
    that much faster), then the smallest size, then the fewest moves from the start (the most regions at the cheapest
    format), then the least budget use, then the earliest. A latency or size that is unknown for any candidate is
    left out of the comparison for all. None when no step meets the budget."""
    get = latency_of or (lambda s: s.latency)
    cands = [i for i in (range(len(steps)) if among is None else among) if steps[i].ok]
    if not cands:
        return None
    use_lat = all(get(steps[i]) is not None for i in cands)
    use_size = all(steps[i].size_bytes is not None for i in cands)

    def key(i: int) -> tuple[float, float, int, float, int]:
        s = steps[i]
        lat = float(get(s) or 0.0) * (margin if i == float_step else 1.0) if use_lat else 0.0
        return lat, float(s.size_bytes or 0) if use_size else 0.0, len(s.raised), s.usage, i

    return min(cands, key=key)


def mark_chosen(steps: Sequence[PlanStep], index: int | None) -> list[PlanStep]:
    """``chosen`` on step ``index`` only."""
    return [replace(s, chosen=i == index) for i, s in enumerate(steps)]


def mark_pareto(steps: list[PlanStep]) -> list[PlanStep]:
    """Steps flagged ``pareto`` when no other step is at least as good on budget use, latency and size, and better on
    one (latency: measured ms where every step has it, else the estimate; a figure unknown for either is left out)."""
    measured = bool(steps) and all(s.measured_ms is not None for s in steps)

    def dims(s: PlanStep) -> tuple[float | None, ...]:
        return s.usage, s.measured_ms if measured else s.latency, s.size_bytes

    def dominates(o: PlanStep, s: PlanStep) -> bool:
        pairs = [(a, b) for a, b in zip(dims(o), dims(s), strict=True) if a is not None and b is not None]
        return all(a <= b for a, b in pairs) and any(a < b for a, b in pairs)

    return [replace(s, pareto=not any(dominates(o, s) for o in steps)) for s in steps]


__all__ = ["SearchResult", "best_step", "mark_chosen", "mark_pareto", "move_list", "search"]
