"""Typed state the quantization, weight and pruning passes hand on (``PassContext.state`` / ``set_state``).

Each is found by its type, never under a string key; the contents keep the shape the pipeline report shows
(``to_dict`` gives the report's section, keys in the same order as before):

- ``QuantParams``: QuantizeStatic / QuantizeDynamic -> the quantization report (``onnxopt.quant_report``): per
  quantized tensor its scale, zero point, range;
- ``ActivationRanges``: ``calibrate_activations.activation_ranges`` (PlanPrecision, QuantizeStatic,
  CalibrateActivations) -> its later calls (ranges are reused by tensor name) and the quantization report
  (calibration seconds, clipping histograms);
- ``WeightPlanState``: PlanWeights' candidates -> QuantizeWeights: input Hessians computed once, encodings shared;
- ``WeightsReport``: QuantizeWeights -> the report's ``weights``;
- ``PruneReport``: PruneChannels (ReconstructWeights adds ``reconstruction``) -> the report's ``prune``;
- ``SparsityReport``: MagnitudePrune -> the report's ``sparsity``;
- ``BatchNormScales``: per-output-channel |gamma|/sigma recorded before BatchNorm folding -> PruneChannels' ``bn``
  criterion (no pass records it yet).

Only data lives here (the pruning/recovery state is in ``onnxopt.recovery``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from onnxopt.calibration import TensorRange
    from onnxopt.weight_formats import Encoded, WeightSpec


def _fields(obj: Any, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The dataclass's fields in order, those named in ``optional`` left out while None."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)
            if not (f.name in optional and getattr(obj, f.name) is None)}


@dataclass
class QuantParams:
    """Per quantized tensor (activation, weight, bias) its quantization parameters, as the QDQ writer records them."""

    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ActivationRanges:
    """Calibrated ranges by tensor name, and the seconds calibration took (all calls together)."""

    ranges: dict[str, TensorRange] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class WeightPlanState:
    """What PlanWeights shares with every candidate QuantizeWeights writes: the input Hessians (layer key ->
    Hessian, computed once from the float model) and the encodings ((layer key, spec) -> Encoded, filled as
    candidates are built)."""

    hessians: dict[str, np.ndarray] = field(default_factory=dict)
    encoded: dict[tuple[str, WeightSpec], Encoded] = field(default_factory=dict)


@dataclass
class WeightsReport:
    """QuantizeWeights' report: per layer its format, bytes, rounding and notes; the totals."""

    layers: list[dict[str, Any]]
    bytes_before: int
    bytes_after: int
    ratio: float | None
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return _fields(self)


@dataclass
class PruneReport:
    """PruneChannels' report (FLOPs and parameters before/after, per group its channels), the fidelity of the pruned
    model when there were feeds, and ReconstructWeights' ``reconstruction`` once it re-fitted."""

    asked: float
    criterion: str
    scope: str
    round_to: int
    flops_before: int
    flops_after: int
    flops_removed: float
    flops_removed_estimate: float
    params_before: int
    params_after: int
    groups: int
    groups_locked: int
    layers: list[dict[str, Any]]
    fidelity: dict[str, Any] | None = None
    reconstruction: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _fields(self, ("fidelity", "reconstruction"))


@dataclass
class SparsityReport:
    """MagnitudePrune's report: the sparsity reached and the zlib-compressed size before/after."""

    asked: float
    scope: str
    sparsity: float
    layers: int
    zlib_bytes_before: int
    zlib_bytes_after: int

    def to_dict(self) -> dict[str, Any]:
        return _fields(self)


@dataclass
class BatchNormScales:
    """Conv node name -> per-output-channel |gamma|/sigma of the BatchNorm folded into it."""

    scales: dict[str, np.ndarray] = field(default_factory=dict)


__all__ = ["ActivationRanges", "BatchNormScales", "PruneReport", "QuantParams", "SparsityReport", "WeightPlanState",
           "WeightsReport"]
