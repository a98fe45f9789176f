"""The quantized weighted layers of a QDQ graph, read and rewritten in place (bias correction, weight fitting).

``quantized_layers(graph, ...)`` finds every Conv / Gemm / MatMul whose weight is a DequantizeLinear of constant
integers (per tensor, or per output channel), and reads its integer weights, scale, zero point, integer range, the
input's activation quantization (when the input is a DequantizeLinear with constant parameters) and its bias.
``write_weight`` puts new integers (and scales) in; a changed weight scale requantizes an int32 bias, whose scale
is input scale x weight scale. ``write_bias`` writes a new bias: the int32 values of its DequantizeLinear, a float
constant, or a new int32 bias (or float, when the scheme keeps biases float) where the layer had none.

A helper module (leading underscore): ``passes/__init__.py`` does not import it as a pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxopt.analysis.layerwise import Layer
from onnxopt.analysis.layerwise_solvers import Grid
from onnxopt.ir import constant_value, producer, unique_name
from onnxopt.quant_scheme import DTYPE_RANGES, TensorQuant

from ._weight_writer import constant

_STORAGE = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8", np.dtype(np.int16): "int16",
            np.dtype(np.uint16): "uint16", np.dtype(ml_dtypes.int4): "int4", np.dtype(ml_dtypes.uint4): "uint4"}


@dataclass
class QuantizedLayer:
    """One weighted op of a QDQ graph and its quantization."""

    node: gs.Node
    layer: Layer
    dq: gs.Node
    q: np.ndarray  # integer weights (float64 holding integers), the weight's shape
    scale: np.ndarray  # [cout] per channel, or shape () per tensor
    zero_point: np.ndarray
    qmin: int
    qmax: int
    storage: np.dtype
    input_quant: tuple[float, int, int, int] | None  # (scale, zero point, qmin, qmax) of the input's Q/DQ

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1

    def grid(self, scale: np.ndarray | None = None) -> Grid:
        """The grid in the layer's matrix form ([g, 1, cg] per channel, [1, 1, 1] per tensor)."""
        s = self.scale if scale is None else scale
        lay = self.layer
        shape = (lay.groups, 1, lay.cg) if s.size > 1 else (1, 1, 1)
        return Grid(np.asarray(s, np.float64).reshape(shape), np.asarray(self.zero_point, np.float64).reshape(shape),
                    self.qmin, self.qmax)

    def weight(self) -> np.ndarray:
        """The dequantized weight, the weight's shape."""
        return self.layer.weight(self.grid().value(self.layer.matrix(self.q)))

    def bias(self) -> np.ndarray:
        """The dequantized bias, [cout] (zeros without one)."""
        t = self.bias_tensor()
        if t is None:
            return np.zeros(self.layer.cout)
        p = producer(t)
        if p is not None and p.op == "DequantizeLinear":
            qb, sb = constant_value(p.inputs[0]), constant_value(p.inputs[1])
            zb = constant_value(p.inputs[2]) if len(p.inputs) > 2 else 0
            return np.broadcast_to((np.asarray(qb, np.float64) - np.asarray(zb, np.float64)) * sb,
                                   (self.layer.cout,)).copy()
        return np.broadcast_to(np.asarray(constant_value(t), np.float64), (self.layer.cout,)).copy()

    def bias_tensor(self) -> gs.Tensor | None:
        if self.node.op in ("Conv", "Gemm") and len(self.node.inputs) > 2 and self.node.inputs[2].name:
            return self.node.inputs[2]
        return None

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` through the input's QuantizeLinear -> DequantizeLinear (unchanged when the input has none)."""
        if self.input_quant is None:
            return x
        s, z, lo, hi = self.input_quant
        return (np.clip(np.rint(np.asarray(x, np.float64) / s) + z, lo, hi) - z) * s


def float_weights(proto: onnx.ModelProto) -> tuple[dict[str, onnx.NodeProto], dict[str, onnx.TensorProto]]:
    """Nodes by name and constant tensors (initializers, Constant nodes) by name of the float reference; read one
    with ``tensor_files.tensor_array`` (a large model's weight from its file, only when asked for)."""
    consts = {t.name: t for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    return {n.name: n for n in proto.graph.node if n.name}, consts


def scheme_of(ctx: Any) -> Any:
    """The QuantScheme the model was quantized in: the precision plan's, else the ``scheme`` option (or None)."""
    plan = getattr(ctx, "plan", None)
    if plan is not None and getattr(plan, "scheme", None) is not None:
        return plan.scheme
    return ctx.option("scheme")


def _weight_range(storage: np.dtype, zp: np.ndarray, weights: TensorQuant | None, dtype: str | None
                  ) -> tuple[int, int]:
    """The integer range the quantizer used: the scheme's weight format (with the dtype the quantizer recorded for
    this weight, when it recorded one) if it is stored in this dtype, else the storage type's whole range; symmetric
    formats use [-qmax, qmax] as ``_qdq.weight_params`` does."""
    tq = weights
    if tq is not None and dtype and dtype != tq.dtype and dtype in DTYPE_RANGES:
        tq = replace(tq, dtype=dtype)
    if tq is not None and tq.np_dtype == storage:
        lo, hi = tq.qrange
        if tq.symmetric and lo < 0:
            lo = -hi
        return lo, hi
    lo, hi = DTYPE_RANGES[_STORAGE[storage]]
    return (-hi if lo < 0 and not np.any(zp) else lo), hi


def _input_quant(t: gs.Tensor) -> tuple[float, int, int, int] | None:
    p = producer(t)
    if p is None or p.op != "DequantizeLinear" or len(p.inputs) < 3:
        return None
    s, z = constant_value(p.inputs[1]), constant_value(p.inputs[2])
    if s is None or z is None or np.asarray(s).size != 1 or np.asarray(z).dtype not in _STORAGE:
        return None
    lo, hi = DTYPE_RANGES[_STORAGE[np.asarray(z).dtype]]
    return float(np.asarray(s).reshape(())), int(np.asarray(z).reshape(())), lo, hi


def _stored(t: gs.Tensor) -> np.ndarray | None:
    """A constant's stored values; sub-byte tensors (int4/uint4, packed two to a byte) through onnx's own reader,
    which unpacks them (onnx-graphsurgeon reads the packed bytes as one value each)."""
    values = getattr(t, "_values", None)
    if isinstance(values, LazyValues) and values.tensor.data_type in (TensorProto.INT4, TensorProto.UINT4):
        return numpy_helper.to_array(values.tensor)
    return constant_value(t)


def read_layer(node: gs.Node, weights: TensorQuant | None, dtype: str | None = None) -> QuantizedLayer | str:
    """``node`` as a quantized layer, or why it is not one."""
    if node.op not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
        return f"{node.op} has no weight"
    dq = producer(node.inputs[1])
    if dq is None or dq.op != "DequantizeLinear":
        return "weight is not quantized (no DequantizeLinear)"
    if len(dq.inputs) < 2 or "block_size" in dq.attrs and dq.attrs["block_size"]:
        return "blocked weight quantization is not fitted"
    q, s = _stored(dq.inputs[0]), constant_value(dq.inputs[1])
    z = constant_value(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2].name else None
    if q is None or s is None:
        return "weight or scale of the DequantizeLinear is not constant"
    q = np.asarray(q)
    if q.dtype not in _STORAGE:
        return f"weights stored as {q.dtype} are not fitted"
    if len(dq.outputs[0].outputs) != 1:
        return "quantized weight shared by several nodes"
    lay = Layer.of(node, q)
    if isinstance(lay, str):
        return lay
    s = np.asarray(s, np.float64)
    z = np.zeros(s.shape, dtype=q.dtype) if z is None else np.asarray(z)
    if s.size > 1:
        axis = int(dq.attrs.get("axis", 1))
        if axis % q.ndim != lay.out_axis() or s.size != lay.cout:
            return "weight scale is not per output channel"
    lo, hi = _weight_range(q.dtype, z, weights, dtype)
    if q.size:  # the grid holds every stored value (a quantizer may use -8 of int4 with a signed scale)
        lo, hi = min(lo, int(np.asarray(q, np.int32).min())), max(hi, int(np.asarray(q, np.int32).max()))
    return QuantizedLayer(node, lay, dq, q.astype(np.float64), s.reshape(-1) if s.size > 1 else s.reshape(()),
                          z.astype(np.float64).reshape(s.shape).reshape(-1) if s.size > 1 else
                          z.astype(np.float64).reshape(()), lo, hi, q.dtype, _input_quant(node.inputs[0]))


def quantized_layers(graph: gs.Graph, weights: TensorQuant | None, dtypes: Mapping[str, Any] | None = None
                     ) -> tuple[list[QuantizedLayer], list[tuple[gs.Node, str]]]:
    """The quantized layers of ``graph`` (main graph only) in graph order, and the weighted nodes it passed over
    with the reason. ``dtypes``: node name -> the weight format the quantizer recorded for it (optional)."""
    found, declined = [], []
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
            continue
        if node.op == "MatMul" and constant_value(node.inputs[1]) is None and producer(node.inputs[1]) is not None \
                and producer(node.inputs[1]).op != "DequantizeLinear":
            continue  # a MatMul of two activations
        r = read_layer(node, weights, (dtypes or {}).get(node.name))
        (declined.append((node, r)) if isinstance(r, str) else found.append(r))
    return found, declined


def write_weight(graph: gs.Graph, ql: QuantizedLayer, q: np.ndarray, scale: np.ndarray | None = None) -> None:
    """New integer weights (the weight's shape) and, when given, a new scale (same shape as the old one)."""
    dq = ql.dq
    qv = np.clip(np.rint(q), ql.qmin, ql.qmax).astype(ql.storage)
    dq.inputs[0] = constant(unique_name(graph, f"{dq.inputs[0].name}_fit"), qv)  # int4 packed the ONNX way
    ql.q = qv.astype(np.float64)
    if scale is not None and not np.array_equal(scale, ql.scale):
        old = ql.scale
        s32 = np.asarray(scale, np.float32).reshape(np.shape(constant_value(dq.inputs[1])))
        dq.inputs[1] = gs.Constant(unique_name(graph, f"{dq.inputs[1].name}_fit"), s32)
        ql.scale = np.asarray(s32, np.float64).reshape(old.shape)
        _rescale_bias(graph, ql, old)


def _rescale_bias(graph: gs.Graph, ql: QuantizedLayer, old_scale: np.ndarray) -> None:
    """An int32 bias whose scale is input scale x weight scale follows a new weight scale (same float values)."""
    t = ql.bias_tensor()
    p = producer(t) if t is not None else None
    if p is None or p.op != "DequantizeLinear" or ql.input_quant is None:
        return
    b = ql.bias()
    sb = _bias_scale(ql)
    old_sb = constant_value(p.inputs[1])
    if sb is None or old_sb is None or np.shape(old_sb) != sb.shape:
        return
    _set_int_bias(graph, p, b, sb)


def _bias_scale(ql: QuantizedLayer) -> np.ndarray | None:
    """Input scale x weight scale, as the quantizer writes it (``_qdq.QDQWriter._bias``): one per output channel for
    per-channel weights, a scalar for per-tensor ones; None when the input is not quantized. Runtimes that fuse the
    layer into an integer op read the int32 bias in this scale whatever its DequantizeLinear says."""
    if ql.input_quant is None:
        return None
    return np.asarray(ql.input_quant[0] * np.asarray(ql.scale, np.float64), np.float32)


def _set_int_bias(graph: gs.Graph, dq: gs.Node, b: np.ndarray, scale: np.ndarray) -> None:
    safe = np.where(scale > 0, scale, 1.0).astype(np.float64)
    qb = np.clip(np.rint(b / safe), -(2**31), 2**31 - 1).astype(np.int32)
    dq.inputs[0] = gs.Constant(unique_name(graph, f"{dq.inputs[0].name}_fit"), qb)
    dq.inputs[1] = gs.Constant(unique_name(graph, f"{dq.inputs[1].name}_fit"), np.asarray(scale, np.float32))
    if len(dq.inputs) > 2:
        dq.inputs[2] = gs.Constant(unique_name(graph, f"{dq.inputs[2].name}_fit"), np.zeros(scale.shape, np.int32))
    dq.attrs.pop("axis", None)
    if scale.size > 1:
        dq.attrs["axis"] = 0


def write_bias(graph: gs.Graph, ql: QuantizedLayer, b: np.ndarray, int32: bool) -> str | None:
    """Set the layer's bias to ``b`` [cout]; returns why not (MatMul has no bias slot), else None."""
    node, cout = ql.node, ql.layer.cout
    if node.op == "MatMul":
        return "MatMul has no bias input"
    t = ql.bias_tensor()
    p = producer(t) if t is not None else None
    sb = _bias_scale(ql)
    if p is not None and p.op == "DequantizeLinear":
        old = np.asarray(constant_value(p.inputs[1]), np.float32)
        _set_int_bias(graph, p, b, sb if sb is not None and sb.shape == old.shape else old)
        return None
    if t is not None or not int32 or sb is None:  # a float bias, or one the scheme keeps float
        const = gs.Constant(unique_name(graph, f"{node.name}_bias_corrected"), np.asarray(b, np.float32))
        if t is not None:
            node.inputs[2] = const
        else:
            node.inputs.append(const)
        return None
    name = unique_name(graph, f"{node.name}_bias")
    out = gs.Variable(f"{name}_dequantized", dtype=np.float32, shape=[cout])
    dq = gs.Node("DequantizeLinear", f"{name}_DequantizeLinear", attrs={"axis": 0} if sb.size > 1 else {},
                 inputs=[gs.Constant(f"{name}_quantized", np.zeros(cout, np.int32)),
                         gs.Constant(f"{name}_scale", sb), gs.Constant(f"{name}_zero_point", np.zeros(sb.shape,
                                                                                                     np.int32))],
                 outputs=[out])
    graph.nodes.insert(next(i for i, n in enumerate(graph.nodes) if n is node), dq)  # stays topologically sorted
    _set_int_bias(graph, dq, b, sb)
    node.inputs.append(out)
    return None
