"""Pass, PassResult, PassContext and PassManager: how rewrites are run, repeated, timed and checked."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import onnx

from onnxopt import model_io
from onnxopt.errors import PassError, UserError
from onnxopt.ir import Model
from onnxopt.plan import Plan

log = logging.getLogger(__name__)
_S = TypeVar("_S")


@dataclass
class PassResult:
    changed: bool
    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class Decline:
    pass_name: str
    where: str
    reason: str


@dataclass
class PassContext:
    """Everything a pass may use. Passes get their inputs here, never from globals."""

    target: str = "generic"
    options: dict[str, Any] = field(default_factory=dict)
    calibration: Any = None
    seed: int = 0
    progress: bool = False
    declines: list[Decline] = field(default_factory=list)
    # typed state passes hand on, keyed by type (state() / set_state(); onnxopt.recovery, onnxopt.pass_state)
    states: dict[type, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("onnxopt.passes"))
    holdout: Any = None  # calibration samples held back from calibration: the planner judges the budget on them
    plan: Plan | None = None  # the precision plan (passes/plan_precision.py) that the quantizers apply

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def state(self, kind: type[_S]) -> _S | None:
        """The state of type ``kind`` a pass handed on with ``set_state`` (e.g. ``recovery.PruneState``), or None."""
        value = self.states.get(kind)
        return value if isinstance(value, kind) else None

    def set_state(self, value: object) -> None:
        """Hand ``value`` on to later passes, keyed by its type."""
        self.states[type(value)] = value

    def setdefault_state(self, kind: type[_S]) -> _S:
        """The state of type ``kind``; a new ``kind()`` handed on first when there is none."""
        value = self.state(kind)
        if value is None:
            value = kind()
            self.set_state(value)
        return value

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    def decline(self, pass_name: str, where: str, reason: str) -> None:
        """Record (and log) that a pass left a node alone, and why."""
        self.declines.append(Decline(pass_name, where, reason))
        self.logger.debug("%s: declined %s: %s", pass_name, where, reason)

    def progress_bar(self, iterable: Iterable[Any] | None = None, desc: str = "", total: int | None = None,
                     **kwargs: Any) -> Any:
        """A tqdm for a step that takes seconds: drawn only with ``self.progress`` on and stderr a terminal, else
        silent (``onnxopt.progress``). Use it for every loop over samples, layers, candidates or regions."""
        from onnxopt.progress import progress_bar

        return progress_bar(iterable, desc, total, enabled=self.progress, **kwargs)


class Pass:
    """One rewrite over a model. Subclasses set ``lossless`` and implement ``run``.

    The first line of the class docstring is the pass's summary in ``onnxopt passes``.
    """

    lossless: ClassVar[bool] = True
    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def run(self, model: Model, ctx: PassContext) -> PassResult:  # pragma: no cover - interface
        raise NotImplementedError


PASS_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass known to ``onnxopt passes`` and to pipelines by name."""
    PASS_REGISTRY[cls.name] = cls
    return cls


@dataclass
class FixedPoint:
    """Run ``passes`` in order until none changes the model, at most ``max_iterations`` rounds."""

    passes: Sequence[Pass | FixedPoint]
    max_iterations: int = 10
    name: str = "fixed-point"


@dataclass
class PassRecord:
    name: str
    lossless: bool = True
    runs: int = 0
    changes: int = 0
    seconds: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class ManagerReport:
    records: dict[str, PassRecord] = field(default_factory=dict)
    converged: bool = True
    verification: list[dict[str, Any]] = field(default_factory=list)

    def record(self, name: str, lossless: bool = True) -> PassRecord:
        return self.records.setdefault(name, PassRecord(name, lossless))

    @property
    def lossy_changes(self) -> bool:
        """Whether a pass that is not lossless changed the model."""
        return any(r.changes and not r.lossless for r in self.records.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "converged": self.converged,
            "passes": [
                {"name": r.name, "lossless": r.lossless, "runs": r.runs, "changes": r.changes,
                 "seconds": round(r.seconds, 4), "stats": dict(r.stats)} for r in self.records.values()
            ],
            "verification": self.verification,
        }


Verifier = Callable[[onnx.ModelProto, str, bool], "dict[str, Any] | None"]


class PassManager:
    """Runs passes and fixed-point groups, with optional instruments.

    - ``check``: ``onnx.checker`` full check after every pass that changed something;
    - ``verifier``: called as ``verifier(model, pass_name, lossless)`` after every changed pass; it returns a
      record for the report or raises (see ``onnxopt.verify.make_pass_verifier``);
    - ``dump_dir``: the model is saved there after every change, numbered, named after the pass.
    """

    def __init__(self, passes: Sequence[Pass | FixedPoint], *, check: bool = False,
                 verifier: Verifier | None = None, dump_dir: str | Path | None = None):
        self.passes = list(passes)
        self.check = check
        self.verifier = verifier
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self._dumps = 0

    def run(self, model: Model, ctx: PassContext | None = None) -> ManagerReport:
        """Run every step; with ``ctx.progress`` a progress bar names the step in flight."""
        ctx = ctx or PassContext()
        report = ManagerReport()
        bar = ctx.progress_bar(self.passes, "onnxopt", unit="step")
        for item in bar:
            bar.set_postfix_str(item.name)
            self._run_item(item, model, ctx, report)
        return report

    def _run_item(self, item: Pass | FixedPoint, model: Model, ctx: PassContext, report: ManagerReport) -> bool:
        if isinstance(item, FixedPoint):
            return self._run_fixed_point(item, model, ctx, report)
        return self._run_pass(item, model, ctx, report)

    def _run_fixed_point(self, group: FixedPoint, model: Model, ctx: PassContext, report: ManagerReport) -> bool:
        any_change = False
        for _ in range(group.max_iterations):
            changed = False
            for item in group.passes:
                changed |= self._run_item(item, model, ctx, report)
            any_change |= changed
            if not changed:
                return any_change
        report.converged = False
        log.warning("%s did not converge within %d iterations; continuing with the model as it is",
                    group.name, group.max_iterations)
        return any_change

    def _run_pass(self, p: Pass, model: Model, ctx: PassContext, report: ManagerReport) -> bool:
        rec = report.record(p.name, p.lossless)
        start = time.perf_counter()
        try:
            result = p.run(model, ctx)
        except UserError:
            raise
        except Exception as e:
            raise PassError(f"pass {p.name} failed: {type(e).__name__}: {e}") from e
        finally:
            rec.seconds += time.perf_counter() - start
            rec.runs += 1
            if getattr(model, "large", False):
                model.release_weights()  # the file maps this pass read through: their pages leave memory
        for k, v in result.stats.items():
            rec.stats[k] = rec.stats.get(k, 0) + v
        if not result.changed:
            return False
        rec.changes += 1
        log.debug("%s changed the model: %s", p.name, result.stats)
        if self.check or self.verifier or self.dump_dir:
            self._instrument(p, model, report)
        return True

    def _instrument(self, p: Pass, model: Model, report: ManagerReport) -> None:
        try:
            proto = model.to_onnx()
        except Exception as e:
            raise PassError(f"pass {p.name} left a model that cannot be exported: {e}") from e
        if self.dump_dir:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            self._dumps += 1
            dump = self.dump_dir / f"{self._dumps:03d}_{p.name}.onnx"
            model_io.write_model(proto, dump, dump.name + ".data" if model_io.is_large(proto) else None)
        if self.check:
            try:
                model_io.check_model(proto, full_check=True)  # a large model through a file
            except Exception as e:
                raise PassError(f"pass {p.name} broke the model: onnx.checker: {str(e).splitlines()[0]}") from e
        if self.verifier:
            rec = self.verifier(proto, p.name, p.lossless)
            if rec is not None:
                report.verification.append(rec)
