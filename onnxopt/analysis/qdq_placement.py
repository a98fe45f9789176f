"""Where Q/DQ can go: which inputs of an op are activations, which ops pass a scale through, and the work an op does.

Facts about ONNX ops and the QDQ form, shared by the planner (``analysis.regions``) and the writer
(``passes.quantize_static``), so that the two agree on what a region's tensors are. Nothing here is a policy: what a
target wants quantized lives in ``targets/``; what stays float and why is the plan's business.

- ``ACTIVATION_INPUTS``: op -> indices of its inputs that are activations (None: all of them);
- ``PASS_THROUGH``: ops whose output takes the input's scale (their output gets Q/DQ only when a quantized op reads
  it); ``SAME_SCALE``: quantized ops whose output must keep the input's scale; ``FUSED_ACTIVATIONS``: Relu/Clip,
  which share the range of the op before them so runtimes fuse them;
- ``placement_reason``: why an op cannot carry Q/DQ at all (not in the scheme, no placement known, output not
  float, weight not constant), or None;
- ``conv_macs`` / ``weighted_macs``: multiply-accumulates at the calibration sizes (``shapes_at``), for the cost
  models of the targets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.ir import Model, constant_value
from onnxopt.quant_scheme import QuantScheme

log = logging.getLogger(__name__)

ACTIVATION_INPUTS: dict[str, tuple[int, ...] | None] = {
    "Conv": (0,), "ConvTranspose": (0,), "Gemm": (0,), "MatMul": (0, 1), "Add": (0, 1), "Mul": (0, 1),
    "MaxPool": (0,), "AveragePool": (0,), "GlobalAveragePool": (0,), "GlobalMaxPool": (0,), "Concat": None,
    "Relu": (0,), "Clip": (0,), "Resize": (0,), "Sigmoid": (0,), "HardSigmoid": (0,), "HardSwish": (0,),
    "LeakyRelu": (0,), "Softmax": (0,), "LayerNormalization": (0,), "Erf": (0,), "Gelu": (0,), "Tanh": (0,),
}
PASS_THROUGH = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Gather"}
SAME_SCALE = {"MaxPool", "GlobalMaxPool"}
FUSED_ACTIVATIONS = {"Relu", "Clip"}
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FLOAT = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64)}


def is_float(t: gs.Tensor) -> bool:
    """A floating-point tensor (an unknown dtype counts as float: the exporter left it untyped)."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values).dtype in _FLOAT
    return t.dtype is None or np.dtype(t.dtype) in _FLOAT


def activations(node: gs.Node, scheme: QuantScheme) -> list[gs.Tensor]:
    """The tensors of ``node`` that get Q/DQ when it is quantized: its float activation inputs, and its output when
    the scheme quantizes outputs (or the op must keep its input's scale)."""
    idx = ACTIVATION_INPUTS[node.op]
    ins = [t for i, t in enumerate(node.inputs) if (idx is None or i in idx) and t.name
           and constant_value(t) is None and is_float(t)]
    return ins + (list(node.outputs[:1]) if scheme.quantize_outputs or node.op in SAME_SCALE else [])


def placement_reason(node: gs.Node, scheme: QuantScheme) -> str | None:
    """Why ``node`` cannot be quantized in this scheme at all, or None. Only hard facts: what may stay float by
    choice (normalizations, exclusions, long tails...) is decided by the plan, where a user can change it."""
    if node.op not in scheme.op_types or (node.domain or "") not in ("", "ai.onnx"):
        return "not an op of the scheme"
    if node.op not in ACTIVATION_INPUTS:
        return "no Q/DQ placement known for this op"
    if not node.outputs or not all(is_float(t) for t in node.outputs[:1]):
        return "output is not floating-point"
    if node.op in WEIGHTED_OPS and node.op != "MatMul" and constant_value(node.inputs[1]) is None:
        return "weight is not a constant"
    return None


def conv_macs(node: gs.Node, shapes: Mapping[str, Sequence[Any]] | None = None) -> int | None:
    """Multiply-accumulates of one Conv/ConvTranspose per batch item, from the tensor's shape (or ``shapes``,
    shapes inferred at the calibration inputs' sizes); None when unknown."""
    w = constant_value(node.inputs[1])
    if w is None:
        return None
    big = node.inputs[0] if node.op == "ConvTranspose" else node.outputs[0]
    shape = big.shape
    if (not shape or len(shape) < 3 or any(not isinstance(d, int) for d in shape[2:])) and shapes:
        shape = shapes.get(big.name)
    if not shape or len(shape) < 3 or any(not isinstance(d, int) or d < 0 for d in shape[2:]):
        return None
    return int(np.asarray(w).size) * int(np.prod(shape[2:]))


def weighted_macs(node: gs.Node, shapes: Mapping[str, Sequence[Any]] | None = None) -> int | None:
    """MACs per batch item of a Conv/ConvTranspose (``conv_macs``), or of a Gemm/MatMul with a constant weight
    (weight elements x rows of the input, batch excluded); None when unknown or not a weighted op."""
    if node.op in ("Conv", "ConvTranspose"):
        return conv_macs(node, shapes)
    if node.op not in ("Gemm", "MatMul") or len(node.inputs) < 2:
        return None
    w = constant_value(node.inputs[1])
    if w is None:
        return None
    shape = node.inputs[0].shape
    if (not shape or any(not isinstance(d, int) for d in shape)) and shapes:
        shape = shapes.get(node.inputs[0].name)
    if not shape or any(not isinstance(d, int) or d < 0 for d in shape):
        return None
    rows = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
    return int(np.asarray(w).size) * rows


def elements(t: gs.Tensor, shapes: Mapping[str, Sequence[Any]] | None = None) -> int | None:
    """Elements of a tensor at the calibration sizes, when its shape is known."""
    shape = t.shape
    if (not shape or any(not isinstance(d, int) for d in shape)) and shapes:
        shape = shapes.get(t.name)
    if shape is None or any(not isinstance(d, int) or d < 0 for d in shape):
        return None
    return int(np.prod(shape)) if shape else 1


def shapes_at(model: Model, data: Any) -> dict[str, list[Any]]:
    """Main-graph tensor shapes inferred with the inputs fixed to the first calibration sample's shapes
    (only for re-readable data; a read-once reader is left for calibration)."""
    if not getattr(data, "reiterable", isinstance(data, (list, tuple))):
        return {}
    try:
        first = next(iter(data))
        proto = model.to_onnx()
        for vi in proto.graph.input:
            if vi.name in first:
                dims = vi.type.tensor_type.shape.dim
                for d, n in zip(dims, np.shape(first[vi.name]), strict=False):
                    d.Clear()
                    d.dim_value = int(n)
        del proto.graph.value_info[:]
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception as exc:  # shapes are a help for the cost models only
        log.debug("no shapes at the calibration sizes: %s", exc)
        return {}
    out = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return out


__all__ = ["ACTIVATION_INPUTS", "FUSED_ACTIVATIONS", "PASS_THROUGH", "SAME_SCALE", "WEIGHTED_OPS", "activations",
           "conv_macs", "elements", "is_float", "placement_reason", "shapes_at", "weighted_macs"]
