"""arm: onnxruntime on arm64, CPU provider and XNNPACK provider, QDQ form.

Scheme: S8S8 - int8 asymmetric activations per tensor, int8 symmetric per-channel weights (zero point 0).
Why not U8S8: XNNPACK's quantized Conv takes qs8 (int8 x, int8 y, int8 weights per tensor), qc8 (int8 x and y,
int8 per-channel weights with zero point 0) or qu8 (uint8 everywhere, weights per tensor) and nothing else
("u8s8 is not support", ``GetConvCompType`` in onnxruntime/core/providers/xnnpack/nn/conv_base.cc); per-channel
weights, which depthwise convolutions need for accuracy (REFERENCE.md: MobileNetV2 cosine 0.976 per tensor), exist
only as qc8, so activations are int8. arm64 has no VPMADDUBSW saturation (REFERENCE.md), full-range weights.
AveragePool and Softmax are left float: XNNPACK's quantized versions take uint8 only (average_pool.cc
``IsQuantAvgPoolSupported``, softmax.cc ``IsQuantSoftmaxSupported``, the latter also needs output scale 1/256).

Lint rules, one function each (sources in onnxruntime ``core/providers/xnnpack``):

- ``arm-constant-qparams``: scales and zero points are constant initializers (``detail/utils.cc``
  ``GetQuantizationZeroPointAndScale`` reads them with ``GetConstantInitializer``; a missing one makes the type
  invalid);
- ``arm-activation-per-tensor``: activations per tensor (utils.cc: int8 with several scales is taken only as
  per-channel *weights*);
- ``arm-weight-zero-point``: per-channel int8 weights have zero point 0 (utils.cc "only support 0 as zero point
  for per-channel quantization");
- ``arm-per-channel-uint8``: no per-channel uint8 (utils.cc "per-channel uint8 quantization isn't supported");
- ``arm-mixed-types``: a weighted op's data input and weight have the same 8-bit type (conv_base.cc
  ``GetConvCompType``: u8 activations with s8 weights are rejected);
- ``arm-xnnpack``: a QDQ group (dequantized inputs, quantized output) around an op XNNPACK fuses (Conv,
  ConvTranspose, MaxPool, AveragePool, Softmax, Resize: ``GetQuantizedOpType`` in utils.cc) that XNNPACK
  would still refuse, and why (conv_base.cc: weight not a rank-4 constant; average_pool.cc: not uint8,
  ceil_mode, 1x1 kernel; softmax.cc: not uint8 or output scale not 1/256; tensor/resize.cc: mode not
  linear, rank not 4).

``xnnpack_report(model)`` lists every node XNNPACK would not take at all, and why (QDQ groups around other op
types run on the CPU provider's QDQ kernels): it is advice, not a rule, so ``lint`` does not include it.

Without calibration data: dynamic int8 quantization of MatMul/Gemm weights where the quantizer offers it.
"""

from __future__ import annotations

import logging
from typing import Any

import onnx

from onnxopt.host import HostInfo
from onnxopt.pass_manager import FixedPoint, Pass
from onnxopt.quant_scheme import QuantScheme, TensorQuant

from .base import Target, Violation
from .cost_model import ORT_ARM
from .qdq_lint import (
    GraphView,
    attr,
    constant_qparams,
    dq_feeding,
    is_quantized_group,
    iter_views,
    node_label,
    per_tensor_activations,
    qdq_info,
    qdq_nodes,
    weight_zero_points,
    weighted_inputs,
)

log = logging.getLogger(__name__)
NO_CALIBRATION = "arm without calibration data: dynamic int8 quantization of MatMul/Gemm weights only"
XNNPACK_QDQ_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "Softmax", "Resize")


def rule_constant_qparams(model: onnx.ModelProto) -> list[Violation]:
    return constant_qparams(model, "arm-constant-qparams")


def rule_activation_per_tensor(model: onnx.ModelProto) -> list[Violation]:
    return per_tensor_activations(model, "arm-activation-per-tensor")


def rule_weight_zero_point(model: onnx.ModelProto) -> list[Violation]:
    return weight_zero_points(model, "arm-weight-zero-point", per_channel_only=True)


def rule_per_channel_uint8(model: onnx.ModelProto) -> list[Violation]:
    out = []
    for view in iter_views(model):
        for q in qdq_nodes(view):
            if q.per_channel and q.dtype == "uint8":
                out.append(Violation("arm-per-channel-uint8", node_label(q.node, view),
                                     f"uint8 quantized per channel ({q.scale.size} scales); XNNPACK takes per-channel "
                                     "int8 only"))
    return out


def rule_mixed_types(model: onnx.ModelProto) -> list[Violation]:
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            wi = weighted_inputs(node, view)
            if wi is None or wi.data_dq is None or wi.weight_dq is None:
                continue
            if "?" in (wi.data_dq.dtype, wi.weight_dq.dtype):
                continue
            if wi.data_dq.dtype != wi.weight_dq.dtype:
                out.append(Violation("arm-mixed-types", node_label(node, view),
                                     f"{wi.data_dq.dtype} activations with {wi.weight_dq.dtype} weights; XNNPACK takes "
                                     "S8S8 or U8U8 groups, not mixed ones"))
    return out


def _rank(name: str, view: GraphView) -> int | None:
    for vi in [*view.graph.value_info, *view.graph.input, *view.graph.output]:
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def xnnpack_refusal(node: onnx.NodeProto, view: GraphView) -> str | None:
    """Why XNNPACK would not take this QDQ group (None: it would, as far as the graph shows)."""
    op = node.op_type
    if op not in XNNPACK_QDQ_OPS:
        return (f"XNNPACK fuses no QDQ group around {op} (only {', '.join(XNNPACK_QDQ_OPS)}); "
                "it runs on the CPU provider")
    dq = dq_feeding(node.input[0], view)
    out_q = [u for u in view.users(node.output[0]) if u.op_type == "QuantizeLinear"]
    y = qdq_info(out_q[0], view) if out_q else None
    if op in ("Conv", "ConvTranspose"):
        wi = weighted_inputs(node, view)
        if wi is None or wi.weight_value is None or wi.weight_value.ndim != 4:
            return "weight is not a constant rank-4 tensor (XNNPACK does 2-D convolutions with constant weights)"
        if y is None:
            return "output is not quantized (a QDQ Conv needs Q on its output)"
    if op == "AveragePool":
        if (dq and dq.dtype != "uint8") or (y and y.dtype != "uint8"):
            return "quantized AveragePool must be uint8 in and out"
        if attr(node, "ceil_mode", 0):
            return "ceil_mode=1 is not supported"
        if list(attr(node, "kernel_shape", [])) == [1, 1]:
            return "1x1 average pool is not supported"
    if op == "Softmax":
        if (dq and dq.dtype != "uint8") or (y and y.dtype != "uint8"):
            return "quantized Softmax must be uint8 in and out"
        if y is not None and y.scale is not None and abs(float(y.scale.reshape(-1)[0]) - 1 / 256) > 1e-4:
            return "quantized Softmax output scale must be 1/256 with zero point 0"
    if op == "Resize":
        if attr(node, "mode", b"nearest") not in (b"linear", "linear"):
            return "Resize mode is not linear (XNNPACK does bilinear only)"
        rank = _rank(node.input[0], view)
        if rank is not None and rank != 4:
            return f"Resize input has rank {rank}; XNNPACK takes 4-D NCHW"
    return None


def rule_xnnpack(model: onnx.ModelProto) -> list[Violation]:
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            quantized_out = any(u.op_type == "QuantizeLinear" for o in node.output for u in view.users(o))
            if node.op_type in XNNPACK_QDQ_OPS and is_quantized_group(node, view) and quantized_out:
                why = xnnpack_refusal(node, view)
                if why:
                    out.append(Violation("arm-xnnpack", node_label(node, view), why))
    return out


def xnnpack_report(model: onnx.ModelProto) -> list[Violation]:
    """Every quantized node group XNNPACK would not take, with the reason (advice; not part of ``lint``)."""
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            if is_quantized_group(node, view):
                why = xnnpack_refusal(node, view)
                if why:
                    out.append(Violation("xnnpack-not-taken", node_label(node, view), why))
    return out


RULES = (rule_constant_qparams, rule_activation_per_tensor, rule_weight_zero_point, rule_per_channel_uint8,
         rule_mixed_types, rule_xnnpack)


class Arm(Target):
    name = "arm"
    cost_model = ORT_ARM
    description = "onnxruntime arm64 CPU + XNNPACK: QDQ S8S8, per-channel int8 weights with zero point 0"
    scheme = QuantScheme(
        activations=TensorQuant(dtype="int8", symmetric=False),
        weights=TensorQuant(dtype="int8", symmetric=True, per_channel=True),
        op_types=frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "MaxPool", "GlobalAveragePool",
                            "Concat", "Relu", "Clip", "Resize", "Sigmoid", "HardSigmoid", "HardSwish",
                            "LeakyRelu"}),
        extra={"matmulnbits_accuracy_level": 4},  # --weights int4/...: MatMulNBits, int8 compute (SDOT/UDOT)
    )
    no_calibration = NO_CALIBRATION

    def host_mismatch(self, host: HostInfo) -> str | None:
        """Any arm64 host: its int8 has no saturating path (dot-product cores are only faster)."""
        return None if host.arch == "arm64" else f"this host is {host.arch}, not arm64"

    def lowering(self, options: dict[str, Any]) -> list[Pass | FixedPoint]:
        if options.get("calibration") is None:  # bool() of a CalibrationDataReader raises
            log.info(NO_CALIBRATION)
        return []

    def lint(self, model: onnx.ModelProto) -> list[Violation]:
        return [v for rule in RULES for v in rule(model)]


__all__ = ["Arm", "RULES", "xnnpack_report"]
