"""KeepFloatReference: remember the float model and calibration feeds for the recovery steps after quantization."""

from __future__ import annotations

import logging

from onnxopt.analysis.model_capture import calibration_feeds, read_once
from onnxopt.ir import Model
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.recovery import FloatReference

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 32


@register_pass
class KeepFloatReference(Pass):
    """Remember the float model and calibration feeds right before quantization, for the recovery steps after it.

    Records the model as it is now and up to ``recover_samples`` (default 32) calibration feeds as a
    ``recovery.FloatReference``, which CorrectBias and FitQuantizedWeights fit to.

    Rewrites nothing. Declines: no calibration data, or data that can be read only once (quantization needs it;
    the recovery steps then decline too).
    """

    lossless = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        proto = model.to_onnx()
        if read_once(ctx):
            ctx.decline(self.name, "model", "calibration data can be read only once (quantization reads it): "
                        "no recovery; pass an .npz or a list of feeds")
            return PassResult(False, {})
        feeds = calibration_feeds(proto, ctx, int(ctx.option("recover_samples") or DEFAULT_SAMPLES))
        if feeds is None:
            ctx.decline(self.name, "model", "no calibration data: nothing to recover from")
        ctx.set_state(FloatReference(proto, feeds))
        return PassResult(False, {"reference_samples": len(feeds or ())})
