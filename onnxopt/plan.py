"""The precision plan: for every quantizable region of a model, its format and why, as data.

Why a plan: before it, "what stays float" was decided in four places (the quantizer's filters, a Conv-MACs rule, a
speed check that reverted the whole model, TensorRT's residual rule) and none of it could be seen or changed. Now
the planning step (``passes/plan_precision.py``, with the target's policy from ``targets/``) writes one ``Plan``,
the Q/DQ writer applies it and decides nothing, ``--save-plan`` shows it and ``--plan`` applies a hand-edited one
exactly as given.

- ``Format``: names of formats in a registry (``register_format``), so later formats (int4, ternary, codebook
  weights) add an entry instead of changing a type: ``float``, ``int8`` (the target's scheme), ``a16w8`` (int16
  activations, int8 weights). Each has a ``rank``: backing a region off moves it to a higher rank.
- ``Region``: one weighted op with its activation inputs (and the Relu/Clip fused after it), or one other op whose
  tensors share a scale (a Concat and its inputs, a MaxPool): the nodes, the tensors that carry Q/DQ when it is
  quantized, its MACs and weight count.
- ``RegionPlan``: a region's format, the reason, and its measured sensitivity (the budget used with only this
  region quantized, and with only this region float).
- ``PlanStep``: one point the search evaluated (error as budget use, size, latency estimate, measured ms where this
  host stands for the target); the Pareto curve, and ``chosen`` on the step the plan took.
- ``Plan``: all of it, with ``to_json``/``from_json`` (exact round trip: floats are written with ``repr``).

This module imports nothing of onnxopt but its errors: passes, analyses, targets and the CLI all read it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from onnxopt.errors import UserError

PLAN_VERSION = 1
MEASURED_BY = "onnxruntime CPU, 1 thread"  # what times whole models where the host stands for the target


@dataclass(frozen=True)
class FormatSpec:
    """A precision a region can be given. ``activations``/``weights``: the integer dtype, None for float."""

    name: str
    activations: str | None
    weights: str | None
    rank: int  # higher is more precise; float is the highest
    description: str = ""


FORMATS: dict[str, FormatSpec] = {}


def register_format(spec: FormatSpec) -> FormatSpec:
    """Make a format known to plans (later issues add int4 / ternary / codebook weights here)."""
    FORMATS[spec.name] = spec
    return spec


FLOAT = register_format(FormatSpec("float", None, None, 100, "the model's own floating-point precision")).name
INT8 = register_format(FormatSpec("int8", "int8", "int8", 10, "8-bit activations and weights in the target's scheme")
                       ).name
A16W8 = register_format(FormatSpec("a16w8", "int16", "int8", 20, "16-bit activations, 8-bit weights")).name


def format_spec(name: str, where: str = "plan") -> FormatSpec:
    """The registered format ``name``; UserError naming the known ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise UserError(f"{where}: unknown format {name!r}; use one of {', '.join(sorted(FORMATS))}") from None


def is_quantized(fmt: str) -> bool:
    """Anything but float (weight-only formats included)."""
    spec = format_spec(fmt)
    return spec.activations is not None or spec.weights is not None


def has_activation_qdq(fmt: str) -> bool:
    """Whether the Q/DQ writer puts activation Q/DQ on a region of this format (weight-only formats are written by
    the weight quantizer, not by it)."""
    return format_spec(fmt).activations is not None


@dataclass(frozen=True)
class Region:
    """A unit the plan gives one format. ``nodes``: node keys (name, or ``Op:first_output`` when unnamed or not
    unique); ``tensors``: activation tensors that carry Q/DQ when the region is quantized."""

    id: str
    nodes: tuple[str, ...]
    op_types: tuple[str, ...]
    tensors: tuple[str, ...]
    macs: int | None = None  # multiply-accumulates per inference at the calibration sizes, when known
    weights: int = 0  # elements of its constant weights
    role: str = "op"  # "op"; "residual-skip": Q/DQ on a residual Add's shortcut only (TensorRT)

    @property
    def weighted(self) -> bool:
        return self.weights > 0


@dataclass(frozen=True)
class RegionPlan:
    """The format chosen for one region, why, and what was measured about it (budget use; None: not measured)."""

    format: str
    reason: str
    quantized_alone: float | None = None  # budget use with only this region quantized
    float_alone: float | None = None  # budget use with every other region quantized, this one float


@dataclass(frozen=True)
class PlanStep:
    """One plan the search evaluated. ``raised``: regions moved to a higher precision than the start, in order, as
    ``region=format``; ``usage``: the largest fraction of any budget term used (<= 1 meets the budget)."""

    index: int
    label: str
    raised: tuple[str, ...]
    usage: float
    ok: bool
    values: dict[str, float] = field(default_factory=dict)  # budget term label -> measured value
    size_bytes: int | None = None
    latency: float | None = None  # the cost model's estimate, in Plan.latency_unit
    pareto: bool = False
    chosen: bool = False  # the step whose formats the plan took
    measured_ms: float | None = None  # timed on this host (onnxruntime, 1 thread), when the host stands for the target


@dataclass(frozen=True)
class SpeedCheck:
    """Whole-model judgement of speed: measured (``float_ms``/``int8_ms``), estimated by the target's cost model
    (``float_cost``/``int8_cost``, in the cost model's units), or not measured (``reason`` says why). ``kept``:
    ``int8`` or ``float`` (empty when nothing was judged)."""

    kept: str
    source: str  # "measured", "cost model" or "not measured"
    engine: str = ""  # what measured (onnxruntime CPU, 1 thread) or which cost model
    float_ms: float | None = None
    int8_ms: float | None = None
    float_cost: float | None = None
    int8_cost: float | None = None
    host: str | None = None
    reason: str = ""

    def to_report(self) -> dict[str, Any]:
        """The report's ``speed_check`` section: ``{"measured": True, float_ms, int8_ms, kept, engine, host}`` or
        ``{"measured": False, "reason": ...}``; a cost-model verdict as its figures."""
        if self.source == "measured":
            return {"measured": True, "float_ms": self.float_ms, "int8_ms": self.int8_ms, "kept": self.kept,
                    "engine": self.engine, "host": self.host}
        if self.source == "not measured":
            return {"measured": False, "reason": self.reason}
        return {"source": self.source, "engine": self.engine, "float_cost": self.float_cost,
                "int8_cost": self.int8_cost, "kept": self.kept}


@dataclass
class Plan:
    """Region -> format + reason for one model and target; what the Q/DQ writer applies."""

    target: str
    mode: str  # static | dynamic | none | weights (weight-only formats per layer, passes/plan_weights.py)
    regions: list[Region] = field(default_factory=list)
    choices: dict[str, RegionPlan] = field(default_factory=dict)
    budget: str = ""
    source: str = "default"  # default | search | file
    steps: list[PlanStep] = field(default_factory=list)
    latency_unit: str = ""
    speed: SpeedCheck | None = None  # the cost model's whole-model verdict
    timing: SpeedCheck | None = None  # int8 timed against float on this host, or why not (auto mode only)
    note: str = ""
    weights: str = ""  # mode "weights": the --weights format the plan starts every layer with
    version: int = PLAN_VERSION
    # the QuantScheme the plan was made in (not saved: a loaded plan is applied in the target's scheme)
    scheme: Any = field(default=None, compare=False, repr=False)

    # ------------------------------------------------------------------ queries

    def format_of(self, region_id: str) -> str:
        return self.choices[region_id].format

    def formats(self) -> dict[str, str]:
        return {r.id: self.choices[r.id].format for r in self.regions}

    def region(self, region_id: str) -> Region:
        for r in self.regions:
            if r.id == region_id:
                return r
        raise KeyError(region_id)

    def quantized(self) -> list[str]:
        return [r.id for r in self.regions if is_quantized(self.choices[r.id].format)]

    def with_formats(self, formats: dict[str, str], reason: str) -> Plan:
        """A copy where the regions in ``formats`` get those formats (and ``reason`` when their format changes)."""
        choices = dict(self.choices)
        for rid, fmt in formats.items():
            old = choices[rid]
            if old.format != fmt:
                choices[rid] = replace(old, format=fmt, reason=reason)
        return replace(self, choices=choices)

    def speed_source(self) -> str:
        """How speed was judged, in a few words: measured here, by the cost model, or not at all (empty)."""
        if self.timing is not None and self.timing.source == "measured":
            return f"speed measured on this host ({self.timing.engine})"
        if self.speed is not None and self.speed.source == "cost model":
            return f"speed estimated by the cost model {self.speed.engine}"
        return ""

    def summary(self) -> str:
        """One line: how many regions are quantized, which stayed in higher precision and why, how speed was
        judged."""
        if self.mode in ("none", "dynamic") and not self.regions:
            return f"plan: quantize {self.mode}" + (f" ({self.note})" if self.note else "")
        if self.mode == "weights":
            return self._weights_summary()
        others = [r for r in self.regions if self.choices[r.id].format != INT8]
        head = f"plan: {len(self.regions) - len(others)} of {len(self.regions)} regions int8" + (
            " (dynamic)" if self.mode == "dynamic" else "")
        speed = f"; {self.speed_source()}" if self.speed_source() else ""
        if not others:
            return head + (f" ({self.note})" if self.note else "") + speed
        line = [head]
        base = FORMATS[INT8].rank
        for label, sign in (("higher precision", 1), ("lower precision", -1)):
            by_reason: dict[str, list[str]] = {}
            for r in others:
                c = self.choices[r.id]
                if (format_spec(c.format).rank - base) * sign > 0:  # grouped by the reason, its figures left out
                    by_reason.setdefault(f"{c.format}: {c.reason.split(' (')[0]}", []).append(r.id)
            parts = []
            for why, ids in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
                names = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
                parts.append(f"{names} ({why})")
            if parts:
                line.append(f"{label}: " + "; ".join(parts))
        return "; ".join(line) + speed

    def _weights_summary(self) -> str:
        """A weight plan's line: how many weighted layers got the --weights format, which went back and why."""
        start = self.weights
        back = [r for r in self.regions if self.choices[r.id].format != start]
        line = f"plan: {len(self.regions) - len(back)} of {len(self.regions)} weighted layers {start or 'quantized'}"
        by_reason: dict[str, list[str]] = {}
        for r in back:
            c = self.choices[r.id]
            by_reason.setdefault(f"{c.format}: {c.reason.split(' (')[0]}", []).append(r.id)
        parts = []
        for why, ids in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            parts.append(", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "") + f" ({why})")
        if parts:
            line += "; went back: " + "; ".join(parts)
        return line + (f" ({self.note})" if self.note else "")

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnxopt_plan": self.version,
            "target": self.target,
            "mode": self.mode,
            "budget": self.budget,
            "source": self.source,
            "note": self.note,
            **({"weights": self.weights} if self.weights else {}),
            "regions": [{**_region_dict(r), **asdict(self.choices[r.id])} for r in self.regions],
            "steps": [asdict(s) for s in self.steps],
            "latency_unit": self.latency_unit,
            "speed": None if self.speed is None else asdict(self.speed),
            "timing": None if self.timing is None else asdict(self.timing),
        }

    def to_json(self) -> str:
        """Deterministic JSON (floats as ``repr``, so ``from_json(to_json())`` gives back equal values)."""
        return json.dumps(_encode(self.to_dict()), indent=1, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = "plan") -> Plan:
        if not isinstance(data, dict) or "regions" not in data or "onnxopt_plan" not in data:
            raise UserError(f"{where}: not a plan written by onnxopt (--save-plan); save one and edit its formats")
        if data["onnxopt_plan"] != PLAN_VERSION:
            raise UserError(f"{where}: plan version {data['onnxopt_plan']} is not {PLAN_VERSION}; save a new one")
        regions, choices = [], {}
        try:
            for item in data["regions"]:
                r = Region(id=str(item["id"]), nodes=tuple(item["nodes"]), op_types=tuple(item["op_types"]),
                           tensors=tuple(item["tensors"]), macs=item.get("macs"), weights=int(item.get("weights", 0)),
                           role=str(item.get("role", "op")))
                fmt = str(item["format"])
                format_spec(fmt, f"{where}: region '{r.id}'")
                regions.append(r)
                choices[r.id] = RegionPlan(fmt, str(item.get("reason", "")), _num(item.get("quantized_alone")),
                                           _num(item.get("float_alone")))
            steps = [PlanStep(index=int(s["index"]), label=str(s["label"]), raised=tuple(s["raised"]),
                              usage=float(_num(s["usage"])), ok=bool(s["ok"]),
                              values={k: float(_num(v)) for k, v in s.get("values", {}).items()},
                              size_bytes=s.get("size_bytes"), latency=_num(s.get("latency")),
                              pareto=bool(s.get("pareto", False)), chosen=bool(s.get("chosen", False)),
                              measured_ms=_num(s.get("measured_ms")))
                     for s in data.get("steps", [])]
            speed, timing = (None if data.get(k) is None else SpeedCheck(**{f: _num(v) for f, v in data[k].items()})
                             for k in ("speed", "timing"))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where}: malformed plan ({type(e).__name__}: {e}); save a fresh one with --save-plan"
                            ) from None
        if len(choices) != len(regions):
            raise UserError(f"{where}: a region id appears twice; each region must be listed once")
        return cls(target=str(data.get("target", "")), mode=str(data.get("mode", "static")), regions=regions,
                   choices=choices, budget=str(data.get("budget", "")), source=str(data.get("source", "file")),
                   steps=steps, latency_unit=str(data.get("latency_unit", "")), speed=speed, timing=timing,
                   note=str(data.get("note", "")), weights=str(data.get("weights", "")))

    @classmethod
    def from_json(cls, text: str, where: str = "plan") -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e}); fix the file or save a new plan with --save-plan"
                            ) from None
        return cls.from_dict(data, where)

    def save(self, path: str | Path) -> None:
        """Written atomically (temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such plan file; write one with --save-plan plan.json")
        return cls.from_json(path.read_text(), str(path))

    def fit(self, regions: list[Region], where: str = "plan") -> Plan:
        """This (loaded) plan's formats over ``regions`` computed from the model; UserError when the regions differ
        (a plan saved for another model, or before a change of options that changes the graph)."""
        mine = {r.id: r for r in self.regions}
        theirs = {r.id: r for r in regions}
        missing, extra = sorted(set(theirs) - set(mine)), sorted(set(mine) - set(theirs))
        changed = sorted(i for i in set(mine) & set(theirs) if mine[i].nodes != theirs[i].nodes)
        if missing or extra or changed:
            what = ("missing " + ", ".join(missing[:3]) if missing else
                    "unknown " + ", ".join(extra[:3]) if extra else "different nodes in " + ", ".join(changed[:3]))
            raise UserError(f"{where}: does not fit this model (regions {what}); save a plan for this model and "
                            "these options with --save-plan, then edit its formats")
        return replace(self, regions=list(regions), choices={r.id: self.choices[r.id] for r in regions})


def _region_dict(r: Region) -> dict[str, Any]:
    d = asdict(r)
    for k in ("nodes", "op_types", "tensors"):
        d[k] = list(d[k])
    return d


def _num(v: Any) -> Any:
    """Non-finite floats are written as strings ("inf", "-inf", "nan") so the file is standard JSON."""
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return v


def _encode(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, dict):
        return {k: _encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    return v


__all__ = ["A16W8", "FLOAT", "FORMATS", "INT8", "MEASURED_BY", "FormatSpec", "Plan", "PlanStep", "Region", "RegionPlan",
           "SpeedCheck", "format_spec", "has_activation_qdq", "is_quantized", "register_format"]
