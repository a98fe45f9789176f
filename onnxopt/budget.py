"""The accuracy budget: how far a lossy model's outputs may move from the float model's, and how to measure it.

Why its own module: the planner searches against it, the pipeline verifies against it, and the report shows it; one
definition keeps the three in agreement. A budget is a list of terms ``metric:limit``, optionally for one output
(``NAME=metric:limit``):

- ``cosine:0.99``: cosine similarity of the output (all held-back samples, flattened) >= limit;
- ``top1:0.99``: argmax agreement along the last axis, per position, >= limit (classifier logits, probabilities);
- ``snr:30``: signal-to-noise ratio in dB >= limit;
- ``maxabs:0.05``: largest absolute error <= limit;
- ``equal:0.99``: fraction of exactly equal elements >= limit (integer and boolean outputs: class ids, masks).

Which terms judge an output: its own terms if any were given, else the terms given for every output, else the
default that fits it: a softmax over classes (produced by Softmax/LogSoftmax, or float values in [0, 1] summing to 1
on the last axis) by ``top1:0.99``, since cosine of probabilities stays near 1 while the predicted class changes;
other float outputs by ``cosine:<min_cosine>`` (0.99, the budget before this module); integer/boolean outputs by
``equal:0.99``.

A user's own metric (Python: ``CustomMetric(fn, max_drop)``; CLI ``--metric module:function --max-drop D``):
``fn(session) -> float`` scores an onnxruntime session, higher is better (return -loss for a loss); the budget holds
while the float model's score minus the candidate's is at most ``max_drop``.

Every term also gives its *budget use*: 0 = no error, 1 = exactly at the limit, > 1 = over. The planner sorts
regions by it and draws the Pareto curve with it (for SNR, the use is the noise power relative to the allowed one).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxopt.errors import UserError

DEFAULT_MIN_COSINE = 0.99
DEFAULT_TOP1 = 0.99
DEFAULT_EQUAL = 0.99
_SOFTMAX_OPS = ("Softmax", "LogSoftmax")
_SHAPE_ONLY = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast")
BUDGET_HELP = "e.g. --budget cosine:0.99, --budget top1:0.99, --budget snr:30, --budget maxabs:0.05, NAME=cosine:0.995"


def _flat(a: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(a, np.float64).ravel(), nan=0.0, posinf=0.0, neginf=0.0)


def cosine(ref: np.ndarray, got: np.ndarray) -> float:
    r, g = _flat(ref), _flat(got)
    if np.array_equal(r, g):
        return 1.0  # exactly: float rounding of r.g / |r||g| must not fail a cosine:1 budget on equal outputs
    norm = float(np.linalg.norm(r) * np.linalg.norm(g))
    if norm == 0.0:
        return 1.0 if not r.any() and not g.any() else 0.0
    return float(np.clip(r @ g / norm, -1.0, 1.0))


def top1(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.ndim == 0 or ref.shape[-1] < 2:
        return 1.0 if np.array_equal(ref, got) else 0.0
    n = ref.shape[-1]
    return float(np.mean(ref.reshape(-1, n).argmax(-1) == got.reshape(-1, n).argmax(-1)))


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    r, g = _flat(ref), _flat(got)
    noise = float(np.sum((r - g) ** 2))
    if noise == 0.0:
        return math.inf
    signal = float(np.sum(r ** 2))
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def max_abs(ref: np.ndarray, got: np.ndarray) -> float:
    r, g = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    if r.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        d = np.abs(r - g)
    same = (r == g) | (np.isnan(r) & np.isnan(g))
    d[same] = 0.0
    d[~same & ~np.isfinite(d)] = math.inf
    return float(d.max())


def equal(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = np.asarray(ref), np.asarray(got)
    return float(np.mean(ref == got)) if ref.size else 1.0


@dataclass(frozen=True)
class MetricDef:
    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool
    unit: str = ""


METRICS: dict[str, MetricDef] = {
    "cosine": MetricDef(cosine, True),
    "top1": MetricDef(top1, True),
    "snr": MetricDef(snr_db, True, " dB"),
    "maxabs": MetricDef(max_abs, False),
    "equal": MetricDef(equal, True),
}


def usage(metric: str, value: float, limit: float) -> float:
    """Fraction of the term's budget ``value`` uses (0 exact, 1 at the limit); comparable across metrics."""
    if metric == "snr":
        return 0.0 if value == math.inf else 10.0 ** ((limit - value) / 10.0)
    if metric == "maxabs":
        loss, allowed = value, limit
    else:  # agreements and cosine: the shortfall from 1
        loss, allowed = max(0.0, 1.0 - value), 1.0 - limit
    if loss <= 0.0:
        return 0.0
    return math.inf if allowed <= 0.0 else loss / allowed


@dataclass(frozen=True)
class Term:
    """``metric`` of output ``output`` (None: every output the term is applied to) must reach ``limit``."""

    metric: str
    limit: float
    output: str | None = None

    def label(self, output: str | None = None) -> str:
        op = ">=" if METRICS[self.metric].higher_is_better else "<="
        return f"{output or self.output or '*'}: {self.metric} {op} {self.limit:g}"

    def spec(self) -> str:
        return f"{self.output + '=' if self.output else ''}{self.metric}:{self.limit:g}"

    def holds(self, value: float) -> bool:
        return value >= self.limit if METRICS[self.metric].higher_is_better else value <= self.limit


def parse_term(spec: str) -> Term:
    """``metric:limit`` or ``NAME=metric:limit``; UserError with an example otherwise."""
    text = spec.strip()
    name, sep, rest = text.rpartition("=")
    metric, colon, limit_s = (rest if sep else text).partition(":")
    metric = metric.strip().lower()
    if metric not in METRICS or not colon:
        raise UserError(f"--budget {spec}: expected METRIC:LIMIT with METRIC one of {', '.join(METRICS)} "
                        f"({BUDGET_HELP})")
    try:
        limit = float(limit_s)
    except ValueError:
        raise UserError(f"--budget {spec}: the limit {limit_s!r} is not a number ({BUDGET_HELP})") from None
    if metric in ("cosine", "top1", "equal") and not 0.0 <= limit <= 1.0:
        raise UserError(f"--budget {spec}: a {metric} limit lies in [0, 1], got {limit:g}")
    if metric == "maxabs" and not limit >= 0.0:
        raise UserError(f"--budget {spec}: a maxabs limit is at least 0, got {limit:g}")
    if sep and not name:
        raise UserError(f"--budget {spec}: the output name before '=' is empty ({BUDGET_HELP})")
    return Term(metric, limit, name or None)


@dataclass(frozen=True)
class CustomMetric:
    """A user's score of a whole model: ``fn(onnxruntime session) -> float``, higher is better; the budget holds
    while ``float score - candidate score <= max_drop``."""

    fn: Callable[[Any], float]
    max_drop: float
    name: str = "metric"

    @classmethod
    def from_spec(cls, spec: str, max_drop: float | None) -> CustomMetric:
        """``module:function`` (imported from the current directory too); UserError when it cannot be found."""
        module, _, func = spec.partition(":")
        if not module or not func:
            raise UserError(f"--metric {spec}: expected MODULE:FUNCTION, e.g. --metric mymetrics:accuracy")
        if max_drop is None or max_drop < 0:
            raise UserError(f"--metric {spec} needs --max-drop D (D >= 0: how much the score may fall)")
        import sys

        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")
        try:
            fn = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as e:
            raise UserError(f"--metric {spec}: cannot load it ({e}); give an importable MODULE:FUNCTION") from None
        if not callable(fn):
            raise UserError(f"--metric {spec}: {func} is not callable; it must take an onnxruntime session")
        return cls(fn, float(max_drop), spec)


@dataclass(frozen=True)
class TermResult:
    label: str
    metric: str
    output: str | None
    value: float
    limit: float
    ok: bool
    usage: float


@dataclass(frozen=True)
class BudgetResult:
    """Every term's value on one candidate; ``usage`` is the largest use of any term (<= 1 when ``ok``)."""

    terms: tuple[TermResult, ...]
    size_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.terms)

    @property
    def usage(self) -> float:
        return max((t.usage for t in self.terms), default=0.0)

    def values(self) -> dict[str, float]:
        return {t.label: t.value for t in self.terms}

    def worst(self) -> TermResult | None:
        return max(self.terms, key=lambda t: t.usage, default=None)


@dataclass(frozen=True)
class ResolvedBudget:
    """The terms that judge each output of one model (defaults applied), and the custom metric if any."""

    per_output: dict[str, tuple[Term, ...]]
    custom: CustomMetric | None = None
    why: dict[str, str] = field(default_factory=dict)  # output -> why its default terms fit it

    def describe(self) -> str:
        parts = [t.label(name) for name, terms in self.per_output.items() for t in terms]
        if self.custom is not None:
            parts.append(f"{self.custom.name}: drop <= {self.custom.max_drop:g}")
        return "; ".join(parts)

    def evaluate(self, ref: Sequence[Mapping[str, np.ndarray]], got: Sequence[Mapping[str, np.ndarray]],
                 custom_score: float | None = None, custom_baseline: float | None = None,
                 size_bytes: int | None = None) -> BudgetResult:
        """Judge ``got`` against ``ref`` (one dict of outputs per sample, in the same order)."""
        results: list[TermResult] = []
        for name, terms in self.per_output.items():
            r = _stack([s[name] for s in ref])
            g = _stack([s[name] for s in got]) if all(name in s for s in got) else None
            for t in terms:
                if g is None or r.shape != g.shape:
                    results.append(TermResult(t.label(name), t.metric, name, math.nan, t.limit, False, math.inf))
                    continue
                value = METRICS[t.metric].fn(r, g)
                results.append(TermResult(t.label(name), t.metric, name, value, t.limit, t.holds(value),
                                          usage(t.metric, value, t.limit)))
        if self.custom is not None and custom_score is not None and custom_baseline is not None:
            drop = custom_baseline - custom_score
            use = 0.0 if drop <= 0 else (math.inf if self.custom.max_drop == 0 else drop / self.custom.max_drop)
            results.append(TermResult(f"{self.custom.name}: drop <= {self.custom.max_drop:g}", "custom", None,
                                      custom_score, custom_baseline - self.custom.max_drop,
                                      drop <= self.custom.max_drop, use))
        return BudgetResult(tuple(results), size_bytes)


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Samples of one output side by side (the sample axis first); scalars and ragged shapes flattened."""
    arrays = [np.asarray(a) for a in arrays]
    if len(arrays) == 1:
        return arrays[0]
    if all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    return np.concatenate([a.ravel() for a in arrays])


def looks_like_probabilities(values: Sequence[np.ndarray], tol: float = 1e-3) -> bool:
    """Float values in [0, 1] that sum to 1 along the last axis (of length >= 2), in every sample."""
    for v in values:
        v = np.asarray(v)
        if v.dtype.kind != "f" or v.ndim == 0 or v.shape[-1] < 2 or v.size == 0:
            return False
        if not np.isfinite(v).all() or v.min() < -tol or v.max() > 1 + tol:
            return False
        if np.abs(v.astype(np.float64).sum(-1) - 1.0).max() > tol:
            return False
    return bool(values)


def output_producers(model: onnx.ModelProto) -> dict[str, str]:
    """Graph output -> the op that computes it, looking through shape-only ops (Reshape, Flatten, Identity...)."""
    by_out = {o: n for n in model.graph.node for o in n.output}
    found: dict[str, str] = {}
    for out in model.graph.output:
        node, hops = by_out.get(out.name), 0
        while node is not None and node.op_type in _SHAPE_ONLY and node.input and hops < 8:
            node, hops = by_out.get(node.input[0]), hops + 1
        if node is not None:
            found[out.name] = node.op_type
    return found


@dataclass(frozen=True)
class Budget:
    """What the user asked for: terms (per output or for all), a default cosine, and an optional custom metric."""

    terms: tuple[Term, ...] = ()
    min_cosine: float = DEFAULT_MIN_COSINE
    custom: CustomMetric | None = None

    @classmethod
    def parse(cls, specs: Sequence[str] | str | None, min_cosine: float = DEFAULT_MIN_COSINE,
              custom: CustomMetric | None = None) -> Budget:
        """From ``--budget`` values (several allowed; each may hold comma-separated terms)."""
        if isinstance(specs, str):
            specs = [specs]
        terms = tuple(parse_term(s) for spec in specs or () for s in spec.split(",") if s.strip())
        return cls(terms, float(min_cosine), custom)

    def describe(self) -> str:
        parts = [t.spec() for t in self.terms] or [f"default (top1:{DEFAULT_TOP1:g} for probabilities, "
                                                   f"cosine:{self.min_cosine:g} otherwise)"]
        if self.custom is not None:
            parts.append(f"{self.custom.name} drop <= {self.custom.max_drop:g}")
        return ", ".join(parts)

    def resolve(self, ref: Sequence[Mapping[str, np.ndarray]], producers: Mapping[str, str] | None = None
                ) -> ResolvedBudget:
        """The terms of every output in ``ref`` (samples of the float model's outputs); UserError when a term names
        an output the model does not have."""
        producers = producers or {}
        names = list(ref[0]) if ref else []
        unknown = sorted({t.output for t in self.terms if t.output is not None} - set(names))
        if unknown:
            raise UserError(f"--budget names output {unknown[0]!r}, which the model does not have; "
                            f"its outputs: {', '.join(names)}")
        common = tuple(t for t in self.terms if t.output is None)
        per: dict[str, tuple[Term, ...]] = {}
        why: dict[str, str] = {}
        for name in names:
            own = tuple(t for t in self.terms if t.output == name)
            if own or common:
                per[name] = own or common
                continue
            if self.custom is not None:
                continue  # the user's metric judges the model; no default terms added to it
            values = [s[name] for s in ref]
            kind = np.asarray(values[0]).dtype.kind
            if producers.get(name) in _SOFTMAX_OPS or looks_like_probabilities(values):
                per[name] = (Term("top1", DEFAULT_TOP1),)
                why[name] = f"produced by {producers[name]}" if producers.get(name) in _SOFTMAX_OPS else \
                    "values in [0, 1] summing to 1 on the last axis"
            elif kind == "f":
                per[name] = (Term("cosine", self.min_cosine),)
            else:
                per[name] = (Term("equal", DEFAULT_EQUAL),)
                why[name] = f"{np.asarray(values[0]).dtype} output"
        return ResolvedBudget(per, self.custom, why)


@dataclass
class Judge:
    """Runs candidate models on held-back feeds and judges them against the float model's outputs.

    Built once per planning run (``Judge.create``) and then picklable when its custom metric is (it holds feeds,
    reference outputs and the resolved budget), so a process pool can judge candidates in parallel."""

    feeds: list[dict[str, np.ndarray]]
    reference: list[dict[str, np.ndarray]]
    budget: ResolvedBudget
    custom_baseline: float | None = None

    @classmethod
    def create(cls, float_model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]], budget: Budget
               ) -> Judge:
        from onnxopt.verify import ort_session

        feeds = [dict(f) for f in feeds]
        if not feeds:
            raise UserError("no held-back samples to judge the budget on; pass more calibration samples")
        sess = ort_session(float_model, optimize=False)
        reference = _run(sess, feeds)
        resolved = budget.resolve(reference, output_producers(float_model))
        baseline = float(budget.custom.fn(sess)) if budget.custom is not None else None
        return cls(feeds, reference, resolved, baseline)

    def __call__(self, model: onnx.ModelProto) -> BudgetResult:
        from onnxopt.verify import ort_session

        sess = ort_session(model, optimize=False)
        got = _run(sess, self.feeds)
        score = float(self.budget.custom.fn(sess)) if self.budget.custom is not None else None
        return self.budget.evaluate(self.reference, got, score, self.custom_baseline, model.ByteSize())


def _run(sess: Any, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    names = [o.name for o in sess.get_outputs()]
    known = {i.name for i in sess.get_inputs()}
    return [dict(zip(names, sess.run(names, {k: v for k, v in f.items() if k in known}), strict=True)) for f in feeds]


__all__ = ["METRICS", "Budget", "BudgetResult", "CustomMetric", "Judge", "ResolvedBudget", "Term", "TermResult",
           "cosine", "equal", "looks_like_probabilities", "max_abs", "output_producers", "parse_term", "snr_db", "top1",
           "usage"]
