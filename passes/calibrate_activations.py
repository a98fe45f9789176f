"""CalibrateActivations: run the calibration data through the model once and keep tensor ranges in the context.

``activation_ranges(model, ctx, names)`` is what the quantization passes call; the pass form is there for
pipelines that want calibration as its own, timed step (the ranges are then reused, not recomputed). The ranges
and the seconds calibration took are handed on as ``onnxopt.pass_state.ActivationRanges`` (``ctx.state``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from onnxopt.calibration import TensorRange, calibrate, input_specs_of, open_calibration_data
from onnxopt.errors import UserError
from onnxopt.ir import Model
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.pass_state import ActivationRanges

log = logging.getLogger(__name__)

# a histogram per calibrated tensor (2 x 512 counters, whatever the samples) even for minmax, so the report can
# draw each tensor's distribution against its chosen range; ``calib_summary_bins`` 0 turns it off
SUMMARY_BINS = 512


def activation_ranges(model: Model, ctx: PassContext, names: Sequence[str] | None = None) -> dict[str, TensorRange]:
    """``{tensor: TensorRange}`` for ``names`` (None: every float tensor) on ``ctx.calibration``.

    Ranges already in ``ctx.state(ActivationRanges)`` are reused by tensor name. The method is
    ``ctx.option("calib_method", "minmax")``; the engine ``ctx.option("calib_engine", "auto")`` (the
    interpreter when a tensor lives in an If/Loop/Scan subgraph). Each range carries a coarse histogram
    (``TensorRange.histogram``) for the report.
    """
    if ctx.calibration is None:
        raise UserError("no calibration data: pass --calib data.npz (or calibration=... in the API)")
    proto = model.to_onnx()
    state = ctx.setdefault_state(ActivationRanges)
    cached: dict[str, TensorRange] = state.ranges
    wanted = None if names is None else [n for n in dict.fromkeys(names) if n not in cached]
    if wanted is not None and not wanted:
        return {n: cached[n] for n in names if n in cached}
    data = ctx.calibration
    data = open_calibration_data(data, input_specs_of(proto))
    method = ctx.option("calib_method", "minmax") or "minmax"
    start = time.perf_counter()
    ranges = calibrate(proto, data, wanted, method=method, engine=ctx.option("calib_engine", "auto"),
                       progress=ctx.progress, summary_bins=ctx.option("calib_summary_bins", SUMMARY_BINS))
    state.seconds += time.perf_counter() - start
    cached.update(ranges)
    log.info("calibrated %d tensors (%s) in %.2fs", len(ranges), method, time.perf_counter() - start)
    if names is None:
        return dict(ranges)
    return {n: cached[n] for n in names if n in cached}


@register_pass
class CalibrateActivations(Pass):
    """Analysis step: ranges of every float tensor on the calibration data, handed on as ``ActivationRanges``.

    Rewrites: none (the model is unchanged). Declines: the whole model when there is no calibration data.
    """

    lossless = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if ctx.calibration is None:
            ctx.decline(self.name, "model", "no calibration data")
            return PassResult(False)
        ranges = activation_ranges(model, ctx, None)
        return PassResult(False, {"tensors": len(ranges)})
