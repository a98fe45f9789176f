"""The TensorRT lint: one function per rule; each returns Violations with a one-line message.

Rules and their sources (checked at the source, not copied from REFERENCE.md):

- ``trt-opset``: opset >= 13. TensorRT developer guide, "Explicit Quantization / ONNX Support": the
  quantization-axis attribute (required for per-channel Q/DQ) was added in opset 13.
  https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html
- ``trt-zero-point``: every QuantizeLinear/DequantizeLinear zero point is 0. onnx-tensorrt ``docs/operators.md``:
  QuantizeLinear "`y_zero_point` must be 0", DequantizeLinear "`x_zero_point` must be zero"; TensorRT guide
  "Working with Quantized Types": "TensorRT employs a symmetric quantization scheme".
- ``trt-qdq-dtype``: Q/DQ carry int8 (FP8 accepted; INT4 only for weights); uint8 is for network inputs and
  outputs only. onnx-tensorrt ``docs/operators.md`` (DequantizeLinear: INT8), TensorRT guide "Working with
  Quantized Types" (INT8, INT4 weight-only, FP8E4M3, FP4E2M1 - no UINT8).
- ``trt-integer-ops``: no QOperator or integer ops. onnx-tensorrt ``docs/operators.md`` marks QLinearConv,
  QLinearMatMul, ConvInteger, MatMulInteger and DynamicQuantizeLinear "N" (and the com.microsoft QLinear*/QGemm
  contrib ops are not ONNX ops at all).
- ``trt-weight-range``: int8 weights in [-127, 127]. TensorRT's symmetric int8 weights (guide "Working with
  Quantized Types": symmetric scheme; MQBench's TensorRT backend page: weights [lb, ub] = [-127, 127],
  activations [-128, 127]); REFERENCE.md.
- ``trt-weight-axis``: per-channel weight scales on the output-channel axis (Conv 0, ConvTranspose 1, Gemm 0 with
  transB else 1, MatMul last). TensorRT guide "Explicit Quantization": weights are quantized per output channel
  (K); ConvTranspose keeps K on axis 1 of its (C, K/g, ...) weight.
- ``trt-activation-per-tensor``: activations quantized per tensor (TensorRT guide "Explicit Quantization":
  per-channel is for weights; activations use per-tensor scales).
- ``trt-weight-constant``: Conv/ConvTranspose weights are initializers (onnx-tensorrt ``docs/operators.md``:
  "Weights `W` must be an initializer"), so the weight Q/DQ is folded at build time.
- ``trt-output-qdq``: no Q/DQ on the output of a weighted op unless what reads it is a weighted op's data
  input (TensorRT guide "Q/DQ Layer-Placement Recommendations": quantize all inputs of weighted operations,
  do not quantize their outputs by default).
- ``trt-residual-add``: on a residual Add, Q/DQ on the skip input only, never on the branch a weighted op
  produced, so Conv+Add fuses (same section: "quantize the residual input in ResNet-like models"; its
  figures show Q/DQ on the identity branch only). Exactly: an Add with two inputs of which at least one comes
  from a weighted op (directly or behind its Q/DQ) is flagged when (a) both inputs carry Q/DQ; (b) only a
  weighted-op input carries Q/DQ while the other input does not come from a weighted op; (c) neither input
  carries Q/DQ while one comes straight from a Conv/ConvTranspose and the other is a floating-point activation
  (not a constant) that could carry one: TensorRT fuses Conv+Add into an int8 kernel only when the Add's other
  input is quantized; a float skip leaves the Add (and the Conv output) in float. When both inputs are
  convolutions (a ResNet downsample block), the shortcut - the shorter path from the two convs' lowest common
  ancestor, the 1x1 downsample conv - is the one to quantize (NVIDIA TensorRT Model Optimizer,
  ``modelopt.onnx.quantization.graph_utils.build_non_residual_input_map``: "Input in the longest path to LCA is
  the non-residual input", which stays unquantized; TensorFlow quantization toolkit, "Add Custom QDQ Insertion
  Case" / ``ResNetV1QDQCase``: Q/DQ on the residual connection of the Add). Transformer residual Adds
  (MatMul/Gemm branches) are not held to (c): TensorRT fuses those in its own MHA/FFN kernels and keeping them
  float is measured to keep fidelity.
- ``trt-concat-scale``: the dequantized inputs of a Concat share one scale (TensorRT guide: Q/DQ are
  propagated across Concat; inputs with different scales cannot be fused into one int8 concatenation).
- ``trt-high-precision``: LayerNormalization and Softmax are left in higher precision (no Q/DQ on their
  inputs or outputs). TensorRT best practices keep normalization and attention softmax in FP16/FP32;
  REFERENCE.md.
- ``trt-custom-domain``: every node is a standard ONNX op (default domain). onnx-tensorrt's ``docs/operators.md``
  lists only ai.onnx ops; anything else reaches the parser's fallback plugin importer, which succeeds only when
  a TensorRT plugin of that name is registered (onnxruntime contrib ops such as com.microsoft.Gelu are not).
- ``trt-constant-qparams``: scales and zero points are build-time constants (TensorRT's IQuantizeLayer /
  IDequantizeLayer take their scale as a constant; onnx-tensorrt imports scale from an initializer).

Not checkable without a GPU: whether TensorRT consumed every Q/DQ pair (a build with ``trtexec --verbose``).
"""

from __future__ import annotations

import numpy as np
import onnx

from .base import Violation
from .qdq_lint import (
    DEFAULT_DOMAINS,
    Q_OPS,
    WEIGHTED_OPS,
    constant_qparams,
    dq_feeding,
    iter_views,
    model_opset,
    node_label,
    norm_axis,
    per_tensor_activations,
    q_behind,
    qdq_info,
    qdq_nodes,
    weighted_inputs,
)

MIN_OPSET = 13
INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
                         "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool",
                         "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax",
                         "QGemm", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})
HIGH_PRECISION_OPS = frozenset({"LayerNormalization", "Softmax"})
ALLOWED_DTYPES = frozenset({"int8", "float8e4m3fn"})
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, None})


def rule_opset(model: onnx.ModelProto) -> list[Violation]:
    opset = model_opset(model)
    if opset >= MIN_OPSET:
        return []
    return [Violation("trt-opset", "model", f"opset {opset} < {MIN_OPSET}: per-channel Q/DQ needs the axis "
                      "attribute of opset 13 (upgrade the opset)")]


def rule_zero_point(model: onnx.ModelProto) -> list[Violation]:
    out = []
    for view in iter_views(model):
        for q in qdq_nodes(view):
            if q.zero_point_const and not q.zero_point_is_zero():
                out.append(Violation("trt-zero-point", node_label(q.node, view),
                                     f"zero point {_fmt(q.zero_point)} is not 0; TensorRT takes symmetric "
                                     "quantization only"))
    return out


def rule_qdq_dtype(model: onnx.ModelProto) -> list[Violation]:
    out = []
    for view in iter_views(model):
        for q in qdq_nodes(view):
            if q.dtype in ALLOWED_DTYPES or q.dtype == "?":
                continue
            if q.dtype == "int4" and q.input_const:
                continue
            if q.dtype == "uint8" and _at_network_io(q, view):
                continue
            why = "uint8 is only for network inputs and outputs" if q.dtype == "uint8" else "TensorRT takes int8"
            out.append(Violation("trt-qdq-dtype", node_label(q.node, view), f"quantizes to {q.dtype}; {why}"))
    return out


def _at_network_io(q, view) -> bool:
    if q.is_q:
        return q.node.input[0] in view.graph_inputs or q.node.output[0] in view.graph_outputs
    return q.node.input[0] in view.graph_inputs or q.node.output[0] in view.graph_outputs


def rule_integer_ops(model: onnx.ModelProto) -> list[Violation]:
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            if node.op_type in INTEGER_OPS:
                out.append(Violation("trt-integer-ops", node_label(node, view),
                                     f"{node.op_type} is not imported by TensorRT's ONNX parser; use Q/DQ around "
                                     "float ops (explicit quantization)"))
    return out


def rule_weight_range(model: onnx.ModelProto) -> list[Violation]:
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            wi = weighted_inputs(node, view)
            if wi is None or wi.weight_dq is None or wi.weight_value is None:
                continue
            value = wi.weight_value
            if value.dtype == np.int8:
                low = int(value.min()) if value.size else 0
            elif value.dtype.kind == "f" and wi.weight_dq.scale is not None:
                low = _quantized_min(value, wi.weight_dq, wi.output_axis)
            else:
                continue
            if low < -127:
                out.append(Violation("trt-weight-range", node_label(node, view),
                                     f"int8 weight reaches {low}; TensorRT weights use the narrow range [-127, 127]"))
    return out


def _quantized_min(w: np.ndarray, dq, axis: int | None) -> int:
    scale = dq.scale.astype(np.float64)
    if scale.size > 1 and axis is not None:
        shape = [1] * w.ndim
        shape[norm_axis(dq.axis, w.ndim)] = -1
        scale = scale.reshape(shape)
    return int(np.rint(w / scale).min()) if w.size else 0


def rule_weight_axis(model: onnx.ModelProto) -> list[Violation]:
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            wi = weighted_inputs(node, view)
            if wi is None or wi.weight_dq is None or not wi.weight_dq.per_channel or wi.weight_value is None:
                continue
            axis = norm_axis(wi.weight_dq.axis, wi.weight_value.ndim)
            if wi.output_axis is not None and axis != wi.output_axis:
                out.append(Violation("trt-weight-axis", node_label(node, view),
                                     f"per-channel weight scales on axis {axis}; {node.op_type} needs the "
                                     f"output-channel axis {wi.output_axis}"))
    return out


def rule_activation_per_tensor(model: onnx.ModelProto) -> list[Violation]:
    return per_tensor_activations(model, "trt-activation-per-tensor")


def rule_weight_constant(model: onnx.ModelProto) -> list[Violation]:
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in DEFAULT_DOMAINS:
                continue
            wi = weighted_inputs(node, view)
            if wi is not None and not wi.weight_const:
                out.append(Violation("trt-weight-constant", node_label(node, view),
                                     "weight is computed at run time; TensorRT needs it as an initializer"))
    return out


def _weighted_data_input(node: onnx.NodeProto, name: str) -> bool:
    return node.op_type in WEIGHTED_OPS and node.domain in DEFAULT_DOMAINS and node.input[0] == name


def rule_output_qdq(model: onnx.ModelProto) -> list[Violation]:
    """A Q fed by a weighted op whose dequantized value is read by something other than weighted-op data inputs
    (residual Adds are ``trt-residual-add``'s), or is a network output."""
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            if node.op_type not in Q_OPS:
                continue
            src = view.producer(node.input[0])
            if src is None or src.op_type not in WEIGHTED_OPS:
                continue
            readers: list[str] = []
            for dq in view.users(node.output[0]):
                if dq.op_type != "DequantizeLinear":
                    continue
                if dq.output[0] in view.graph_outputs:
                    readers.append("the network output")
                readers += [u.op_type for u in view.users(dq.output[0])
                            if not _weighted_data_input(u, dq.output[0]) and u.op_type != "Add"]
            if readers:
                out.append(Violation("trt-output-qdq", node_label(node, view),
                                     f"Q/DQ on the output of {src.op_type} '{src.name}' read by "
                                     f"{', '.join(sorted(set(readers)))}; TensorRT wants Q/DQ on weighted-op "
                                     "inputs only"))
    return out


def rule_residual_add(model: onnx.ModelProto) -> list[Violation]:
    """Both inputs of an Add quantized while one comes from a weighted op (no Conv+Add fusion possible); only the
    weighted-op branch quantized while the skip is not a weighted op's output; or neither quantized while one is a
    Conv output and the other a float activation (see the module docstring, ``trt-residual-add``)."""
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            if node.op_type != "Add" or len(node.input) != 2:
                continue
            quantized, weighted, conv = [], [], []
            for name in node.input:
                dq = dq_feeding(name, view)
                q = q_behind(dq, view) if dq is not None else None
                src = view.producer(q.node.input[0]) if q is not None else view.producer(name)
                quantized.append(dq is not None)
                weighted.append(src is not None and src.op_type in WEIGHTED_OPS)
                conv.append(dq is None and src is not None and src.op_type in ("Conv", "ConvTranspose")
                            and src.domain in DEFAULT_DOMAINS)
            if not any(weighted):
                continue
            if not any(quantized) and any(conv):
                i = conv.index(True)
                other = node.input[1 - i]
                if view.constant(other) is None and view.elem_type(other) in _FLOAT_TYPES:
                    what = ("the shortcut conv (the shorter path from the convs' common input)" if weighted[1 - i]
                            else "the skip input")
                    out.append(Violation("trt-residual-add", node_label(node, view),
                                         f"neither input carries Q/DQ; quantize {what} so the Conv on input {i} "
                                         "fuses with the Add"))
                continue
            if all(quantized):
                i = weighted.index(True)
                out.append(Violation("trt-residual-add", node_label(node, view),
                                     f"both inputs carry Q/DQ; keep input {i} (the weighted-op branch) float so "
                                     "the Add fuses into it, Q/DQ on the skip input only"))
            elif any(quantized):
                i = quantized.index(True)
                if weighted[i] and not weighted[1 - i]:
                    out.append(Violation("trt-residual-add", node_label(node, view),
                                         f"Q/DQ on input {i} (the weighted-op branch) instead of the skip input"))
    return out


def rule_concat_scale(model: onnx.ModelProto) -> list[Violation]:
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            if node.op_type != "Concat":
                continue
            scales = []
            for name in node.input:
                dq = dq_feeding(name, view)
                if dq is not None and dq.scale is not None and dq.scale.size == 1:
                    scales.append(float(dq.scale.reshape(-1)[0]))
            if len(scales) > 1 and not np.allclose(scales, scales[0], rtol=1e-6, atol=0):
                out.append(Violation("trt-concat-scale", node_label(node, view),
                                     f"dequantized inputs use {len(set(scales))} different scales "
                                     f"({min(scales):.3g}..{max(scales):.3g}); Concat inputs must share one"))
    return out


def rule_high_precision(model: onnx.ModelProto) -> list[Violation]:
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            if node.op_type not in HIGH_PRECISION_OPS:
                continue
            q_in = dq_feeding(node.input[0], view) is not None
            q_out = any(u.op_type in Q_OPS for o in node.output for u in view.users(o))
            if q_in or q_out:
                where = "input" if q_in else "output"
                out.append(Violation("trt-high-precision", node_label(node, view),
                                     f"Q/DQ on its {where}; {node.op_type} stays in higher precision (fp16/fp32)"))
    return out


def rule_constant_qparams(model: onnx.ModelProto) -> list[Violation]:
    return constant_qparams(model, "trt-constant-qparams")


def rule_custom_domain(model: onnx.ModelProto) -> list[Violation]:
    return [Violation("trt-custom-domain", node_label(node, view),
                      f"{node.domain}.{node.op_type} is not a standard ONNX op: TensorRT imports it only through a "
                      f"plugin registered under that name")
            for view in iter_views(model) for node in view.nodes if node.domain not in ("", "ai.onnx")]


RULES = (rule_opset, rule_zero_point, rule_qdq_dtype, rule_integer_ops, rule_weight_range, rule_weight_axis,
         rule_activation_per_tensor, rule_weight_constant, rule_output_qdq, rule_residual_add, rule_concat_scale,
         rule_high_precision, rule_constant_qparams, rule_custom_domain)


def lint(model: onnx.ModelProto) -> list[Violation]:
    return [v for rule in RULES for v in rule(model)]


def _fmt(a: np.ndarray | None) -> str:
    if a is None:
        return "?"
    flat = a.reshape(-1)
    return str(int(flat[0])) if flat.size == 1 else f"[{int(flat.min())}..{int(flat.max())}]"


__all__ = ["RULES", "lint", "qdq_info"]
