"""QuantizeStatic: QDQ insertion from calibrated activation ranges, exactly as the precision plan says.

Which regions are quantized, and in which format, is the plan's (``ctx.plan``, written by ``PlanPrecision`` with the
target's policy); this pass decides nothing. Without a plan (a library user running it alone) it plans the default
itself (``analysis.regions.default_formats``: int8 unless a rule keeps a region float) in ``ctx.option("scheme")``.
A plan for another mode (dynamic, none) leaves the model alone.

Rewrites (every graph, If/Loop/Scan bodies included; the rules are in ``passes/_plan_writer.py``):

- weights of Conv (axis 0), ConvTranspose (axis 1), Gemm (per output channel, respecting transB) and MatMul
  with a constant second input (last axis) become int8 initializers + DequantizeLinear, per channel when
  the scheme asks and the opset has the ``axis`` attribute (>= 13), else per tensor; weights held in
  Constant nodes are quantized the same way as initializers;
- their bias becomes int32 with scale = input scale x weight scale, zero point 0, + DequantizeLinear;
- every float activation of a quantized region gets one QuantizeLinear -> DequantizeLinear pair (int16 for
  ``a16w8`` regions); graph outputs keep their names; scales are shared where an op must not change them (Concat,
  MaxPool, pass-through ops, a Relu/Clip fused after a quantized op);
- ranges come from ``ctx.calibration`` (method ``ctx.option("calib_method")``; ``activation_ranges``), reused from
  the planning step; every tensor's parameters are handed on as ``onnxopt.pass_state.QuantParams`` for the report.

Declines (each logged in ctx.declines): no calibration data (whole model); an op of the scheme that cannot carry
Q/DQ (no placement known, output not floating-point, weight not constant); every node of a region the plan keeps
float, with the plan's reason (excluded by name or op type, normalizations written out, GELU, long-tailed tensors,
wide-range Concats, the recurrent state's path, a constant-input Add/Mul, no quantized reader, calibration never saw
its tensors, backed off for the budget, int8 not paying off); a tensor calibration never saw; a weighted op whose
input is not quantized (weight kept float); per-channel weights below opset 13 (quantized per tensor instead); a
bias that is not a 1-D constant of the output-channel count, or a Gemm with alpha/beta != 1 (bias kept float).
"""

from __future__ import annotations

import logging

from onnxopt.analysis.qdq_placement import (  # re-exported: the writer's tables live with the analyses now
    ACTIVATION_INPUTS as ACTIVATION_INPUTS,
)
from onnxopt.analysis.qdq_placement import FUSED_ACTIVATIONS as FUSED_ACTIVATIONS
from onnxopt.analysis.qdq_placement import PASS_THROUGH as PASS_THROUGH
from onnxopt.analysis.qdq_placement import SAME_SCALE as SAME_SCALE
from onnxopt.analysis.qdq_placement import conv_macs as conv_macs
from onnxopt.analysis.qdq_placement import shapes_at as shapes_at
from onnxopt.analysis.regions import build_regions, calibration_tensors, default_formats
from onnxopt.errors import PassError
from onnxopt.ir import Model
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.pass_state import QuantParams
from onnxopt.plan import FLOAT
from onnxopt.quant_scheme import QuantScheme

from ._plan_writer import write_plan
from ._qdq import QDQWriter, _Names
from ._qdq import _is_float as _is_float  # re-exported: imported from here by quantize_dynamic
from ._qdq import activation_params as activation_params
from ._qdq import weight_params as weight_params  # re-exported: imported from here by quantize_dynamic and tests
from .calibrate_activations import activation_ranges

log = logging.getLogger(__name__)


@register_pass
class QuantizeStatic(Pass):
    """Insert QuantizeLinear/DequantizeLinear where the precision plan says (int8 weights, int32 bias)."""

    lossless = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        plan = ctx.plan
        if plan is not None and plan.mode != "static":
            return PassResult(False)
        scheme: QuantScheme = (plan.scheme if plan is not None and plan.scheme is not None else None) \
            or ctx.option("scheme") or QuantScheme()
        if ctx.calibration is None:
            ctx.decline(self.name, "model", "no calibration data (pass --calib data.npz)")
            return PassResult(False)
        rg = build_regions(model, scheme)
        if plan is not None:
            ids = {r.id for r in rg.regions}
            if ids != set(plan.choices):
                raise PassError(f"the precision plan does not match the model it is applied to (regions "
                                f"{sorted(ids ^ set(plan.choices))[:3]} differ): a pass changed the graph after "
                                "PlanPrecision")
            for r in plan.regions:  # the regions as the target shaped them (TensorRT's residual Adds)
                rg.replace_region(r)
        stats = activation_ranges(model, ctx, calibration_tensors(rg, model))
        choices = plan.choices if plan is not None else default_formats(rg, model, scheme, ctx.options, stats)
        for node, reason in rg.declined:
            ctx.decline(self.name, f"{node.op} '{node.name}'", reason)
        for r in rg.regions:
            if choices[r.id].format == FLOAT:
                for node in rg.members[r.id]:
                    ctx.decline(self.name, f"{node.op} '{node.name}'", choices[r.id].reason)
        ranges = {k: (v.threshold_low, v.threshold_high) for k, v in stats.items()}
        counts: dict[str, int] = {}
        params: dict[str, dict] = ctx.setdefault_state(QuantParams).tensors
        writer = QDQWriter(ctx, self.name, _Names(model.graph), counts, params, model.opset)
        write_plan(model.graph, rg, {rid: c.format for rid, c in choices.items()}, ranges, scheme, ctx, writer)
        return PassResult(bool(counts), counts)
