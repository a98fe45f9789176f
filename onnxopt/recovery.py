"""Typed state the pruning and recovery passes hand each other (``PassContext.state`` / ``set_state``).

- ``PruneState``: what PruneChannels leaves for ReconstructWeights: the unpruned model, the kept channels of every
  changed tensor, the calibration feeds it read, and the consumers whose inputs lost channels;
- ``FloatReference``: the float model as it was right before quantization (KeepFloatReference), and the
  calibration feeds; bias correction and layer-wise fitting fit the quantized model to it;
- ``RecoveryReport``: per layer and per recovery step, the layer's output error against the float model before
  and after the step (``LayerError``), and per step its time and counts; the pipeline report shows it as
  ``recovery``.

Only data lives here: the passes are in ``passes/``, the engine in ``onnxopt.analysis.layerwise``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

Feed = dict[str, np.ndarray]

RECOVERY_STEPS = ("bias", "cle", "fit", "smooth")


@dataclass(frozen=True)
class PruneConsumer:
    """A node whose input ``input`` lost channels (or a grouped conv whose groups did)."""

    node: str
    input: str
    op: str


@dataclass
class PruneState:
    """PruneChannels -> ReconstructWeights."""

    original: onnx.ModelProto
    kept: dict[str, np.ndarray]
    feeds: list[Feed] | None
    consumers: list[PruneConsumer] = field(default_factory=list)


@dataclass
class FloatReference:
    """The float model right before quantization and the calibration feeds the recovery steps measure on."""

    model: onnx.ModelProto
    feeds: list[Feed] | None


@dataclass(frozen=True)
class LayerError:
    """One layer's output error against the float model (relative: sum (q - f)^2 / sum f^2), before and after one
    step. ``inputs``: what fed the layer when measuring (``float``: the float model's activations, ``quantized``:
    the quantized model's, as recovered so far, ``weights``: no data, the weight quantization error alone)."""

    layer: str
    step: str
    before: float
    after: float
    inputs: str
    note: str = ""


@dataclass
class StepSummary:
    step: str
    seconds: float = 0.0
    layers: int = 0
    declined: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecoveryReport:
    """Everything the recovery steps measured, in the order they ran."""

    steps: list[StepSummary] = field(default_factory=list)
    layers: list[LayerError] = field(default_factory=list)

    def step(self, name: str) -> StepSummary:
        for s in self.steps:
            if s.step == name:
                return s
        s = StepSummary(name)
        self.steps.append(s)
        return s

    def add(self, error: LayerError) -> None:
        self.layers.append(error)

    def to_dict(self) -> dict[str, Any]:
        def r(v: float) -> float:
            return float(f"{v:.6g}")

        per_step: dict[str, dict[str, float]] = {}
        for e in self.layers:
            acc = per_step.setdefault(e.step, {"before": 0.0, "after": 0.0, "n": 0})
            acc["before"] += e.before
            acc["after"] += e.after
            acc["n"] += 1
        return {
            "steps": [{**asdict(s), "seconds": round(s.seconds, 3),
                       **({"mean_error_before": r(per_step[s.step]["before"] / per_step[s.step]["n"]),
                           "mean_error_after": r(per_step[s.step]["after"] / per_step[s.step]["n"])}
                          if per_step.get(s.step, {}).get("n") else {})} for s in self.steps],
            "layers": [{**asdict(e), "before": r(e.before), "after": r(e.after)} for e in self.layers],
        }


def recovery_report(ctx: Any) -> RecoveryReport:
    """The context's recovery report, created on first use."""
    rep = ctx.state(RecoveryReport)
    if rep is None:
        rep = RecoveryReport()
        ctx.set_state(rep)
    return rep


def float_reference(ctx: Any, step: str) -> FloatReference | None:
    """The float reference with calibration feeds that ``KeepFloatReference`` recorded, or None after declining
    ``step`` with the reason (a recovery step has nothing to fit without it)."""
    ref = ctx.state(FloatReference)
    if ref is None or not ref.feeds:
        ctx.decline(step, "model", "no float reference with calibration data (KeepFloatReference records it before "
                    "quantization; pass --calib)")
        return None
    return ref
