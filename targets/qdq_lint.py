"""Target-neutral helpers for linting Q/DQ graphs: find Q/DQ nodes, read their scales, zero points, dtypes and
axes, and say what each weighted op's inputs look like. Targets build their rules on these.

Everything works on ``onnx.ModelProto`` (``onnxopt check`` lints any model, ours or someone else's) and walks
every subgraph (If/Loop/Scan bodies): a name not produced inside a subgraph is looked up in the outer graphs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.tensor_files import tensor_array

from .base import Violation

Q_OPS = ("QuantizeLinear",)
DQ_OPS = ("DequantizeLinear",)
# op -> (weight input index, per-channel axis on the output channel; None: depends on the node)
WEIGHTED_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
DEFAULT_DOMAINS = ("", "ai.onnx")
_ELEM_NAMES = {v: k.lower() for k, v in onnx.TensorProto.DataType.items()}


def dtype_name(elem_type: int) -> str:
    """'int8', 'uint8', 'float', ... for an ONNX element type."""
    return _ELEM_NAMES.get(elem_type, str(elem_type))


@dataclass
class GraphView:
    """One graph with its producers, consumers and constants; ``parent`` resolves names from outer graphs."""

    graph: onnx.GraphProto
    opset: int
    parent: GraphView | None = None
    where: str = ""
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    value_types: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for init in self.graph.initializer:
            self.initializers[init.name] = init
            self.value_types[init.name] = init.data_type
        for vi in [*self.graph.input, *self.graph.output, *self.graph.value_info]:
            if vi.type.HasField("tensor_type"):
                self.value_types[vi.name] = vi.type.tensor_type.elem_type
        for node in self.graph.node:
            for out in node.output:
                if out:
                    self.producers[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
        self.graph_inputs = {i.name for i in self.graph.input} - set(self.initializers)
        self.graph_outputs = [o.name for o in self.graph.output]

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.graph.node)

    def producer(self, name: str) -> onnx.NodeProto | None:
        return self.producers.get(name)

    def users(self, name: str) -> list[onnx.NodeProto]:
        return self.consumers.get(name, [])

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant node output (looked up in outer graphs too), else None."""
        if not name:
            return None
        if name in self.initializers:
            return tensor_array(self.initializers[name])  # a large model's weight: from its file
        node = self.producers.get(name)
        if node is not None:
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
                for a in node.attribute:
                    if a.name == "value":
                        return numpy_helper.to_array(a.t)
                    if a.name in ("value_float", "value_int"):
                        return np.asarray(onnx.helper.get_attribute_value(a))
                    if a.name in ("value_floats", "value_ints"):
                        return np.asarray(onnx.helper.get_attribute_value(a))
            return None
        return self.parent.constant(name) if self.parent is not None else None

    def is_initializer(self, name: str) -> bool:
        """An initializer of this graph or an outer one (Constant nodes are not initializers)."""
        if name in self.initializers:
            return True
        if name in self.producers:
            return False
        return self.parent.is_initializer(name) if self.parent is not None else False

    def elem_type(self, name: str) -> int | None:
        if name in self.value_types:
            return self.value_types[name]
        value = self.constant(name)
        if value is not None:
            return onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        return self.parent.elem_type(name) if self.parent is not None and name not in self.producers else None

    def is_network_io(self, name: str) -> bool:
        return name in self.graph_inputs or name in self.graph_outputs


def model_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            return int(o.version)
    return 1


def iter_views(model: onnx.ModelProto) -> Iterator[GraphView]:
    """The main graph and every subgraph, outer before inner."""
    opset = model_opset(model)

    def walk(graph: onnx.GraphProto, parent: GraphView | None, where: str) -> Iterator[GraphView]:
        view = GraphView(graph, opset, parent, where)
        yield view
        for node in graph.node:
            for a in node.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs):
                    yield from walk(sub, view, f"{where}{node.name or node.op_type}.{a.name}/")

    yield from walk(model.graph, None, "")


def node_label(node: onnx.NodeProto, view: GraphView | None = None) -> str:
    name = node.name or (node.output[0] if node.output else "?")
    prefix = view.where if view is not None else ""
    return f"{prefix}{node.op_type} '{name}'"


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


@dataclass
class QdqInfo:
    """One QuantizeLinear or DequantizeLinear node, read."""

    node: onnx.NodeProto
    is_q: bool
    scale: np.ndarray | None  # None: not a constant
    zero_point: np.ndarray | None  # None: absent or not a constant (see zero_point_given / zero_point_const)
    zero_point_given: bool
    zero_point_const: bool
    dtype: str  # the quantized type ('int8', 'uint8', ...); '?' when unknown
    axis: int
    input_const: bool  # DQ: the quantized input is a constant (a weight)

    @property
    def per_channel(self) -> bool:
        return self.scale is not None and self.scale.size > 1

    @property
    def params_const(self) -> bool:
        return self.scale is not None and (not self.zero_point_given or self.zero_point_const)

    def zero_point_is_zero(self) -> bool:
        return not self.zero_point_given or (self.zero_point is not None and not np.any(self.zero_point))


def qdq_info(node: onnx.NodeProto, view: GraphView) -> QdqInfo:
    is_q = node.op_type in Q_OPS
    scale = view.constant(node.input[1]) if len(node.input) > 1 else None
    zp_name = node.input[2] if len(node.input) > 2 else ""
    zp = view.constant(zp_name) if zp_name else None
    dtype = "?"
    if zp_name:
        t = view.elem_type(zp_name)
        dtype = dtype_name(t) if t else "?"
    elif is_q:
        out_t = attr(node, "output_dtype", 0)
        dtype = dtype_name(out_t) if out_t else "uint8"
    else:
        t = view.elem_type(node.input[0])
        if t is None:
            src = view.producer(node.input[0])
            if src is not None and src.op_type in Q_OPS:
                dtype = qdq_info(src, view).dtype
        else:
            dtype = dtype_name(t)
    return QdqInfo(node=node, is_q=is_q, scale=scale, zero_point=zp, zero_point_given=bool(zp_name),
                   zero_point_const=zp is not None, dtype=dtype, axis=int(attr(node, "axis", 1)),
                   input_const=not is_q and view.constant(node.input[0]) is not None)


def qdq_nodes(view: GraphView) -> Iterator[QdqInfo]:
    for node in view.graph.node:
        if node.op_type in Q_OPS + DQ_OPS and node.domain in DEFAULT_DOMAINS:
            yield qdq_info(node, view)


def dq_feeding(name: str, view: GraphView) -> QdqInfo | None:
    """The DequantizeLinear that produces ``name``, if one does."""
    node = view.producer(name)
    if node is not None and node.op_type in DQ_OPS:
        return qdq_info(node, view)
    return None


def q_behind(dq: QdqInfo, view: GraphView) -> QdqInfo | None:
    """The QuantizeLinear that feeds a DequantizeLinear, if one does."""
    node = view.producer(dq.node.input[0])
    if node is not None and node.op_type in Q_OPS:
        return qdq_info(node, view)
    return None


def float_source(name: str, view: GraphView) -> onnx.NodeProto | None:
    """The node that produced the float value behind ``name``, looking through one DQ and its Q."""
    dq = dq_feeding(name, view)
    if dq is None:
        return view.producer(name)
    q = q_behind(dq, view)
    return view.producer(q.node.input[0]) if q is not None else None


def is_quantized_input(node: onnx.NodeProto, index: int, view: GraphView) -> bool:
    return index < len(node.input) and dq_feeding(node.input[index], view) is not None


def is_quantized_group(node: onnx.NodeProto, view: GraphView) -> bool:
    """A node that reads at least one dequantized activation (a QDQ node group in onnxruntime's terms)."""
    if node.op_type in Q_OPS + DQ_OPS:
        return False
    return any(is_quantized_input(node, i, view) for i in range(len(node.input)))


@dataclass
class WeightedInputs:
    """What a Conv/ConvTranspose/Gemm/MatMul reads: its data input's DQ, its weight's DQ, the weight value."""

    node: onnx.NodeProto
    data_dq: QdqInfo | None
    weight_dq: QdqInfo | None
    weight_const: bool  # the weight is a constant (directly, or behind DQ, or behind Q -> DQ)
    weight_value: np.ndarray | None  # the stored weight (quantized ints when behind a DQ of a constant)
    output_axis: int | None  # the weight axis that holds output channels


def weight_output_axis(node: onnx.NodeProto, weight_rank: int | None) -> int | None:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        return None if weight_rank is None else weight_rank - 1
    return None


def weighted_inputs(node: onnx.NodeProto, view: GraphView) -> WeightedInputs | None:
    """``None`` for nodes that are not weighted ops (or a MatMul of two activations)."""
    if node.op_type not in WEIGHTED_OPS or node.domain not in DEFAULT_DOMAINS or len(node.input) < 2:
        return None
    w = node.input[WEIGHTED_OPS[node.op_type]]
    wdq = dq_feeding(w, view)
    value = view.constant(w)
    if wdq is not None:
        value = view.constant(wdq.node.input[0])
        if value is None:
            q = q_behind(wdq, view)
            value = view.constant(q.node.input[0]) if q is not None else None
    if value is None and node.op_type == "MatMul":
        return None
    data_dq = dq_feeding(node.input[0], view)
    return WeightedInputs(node, data_dq, wdq, value is not None, value,
                          weight_output_axis(node, None if value is None else value.ndim))


def norm_axis(axis: int, rank: int | None) -> int:
    return axis + rank if axis < 0 and rank is not None else axis


# ----------------------------------------------------------------------------------------------------------------
# target-neutral rules: a target picks the ones that hold for it and names them with its prefix

Rule = Callable[[onnx.ModelProto], list[Violation]]


def constant_qparams(model: onnx.ModelProto, rule: str) -> list[Violation]:
    """Every Q/DQ scale and zero point is a constant (an initializer or a Constant)."""
    out = []
    for view in iter_views(model):
        for q in qdq_nodes(view):
            if not q.params_const:
                what = "scale" if q.scale is None else "zero point"
                out.append(Violation(rule, node_label(q.node, view), f"{what} is computed at run time; "
                                     "it must be a constant initializer"))
    return out


def per_tensor_activations(model: onnx.ModelProto, rule: str) -> list[Violation]:
    """Activations (Q/DQ of a non-constant tensor) are quantized per tensor."""
    out = []
    for view in iter_views(model):
        for q in qdq_nodes(view):
            if q.per_channel and not q.input_const and not (q.is_q and view.constant(q.node.input[0]) is not None):
                out.append(Violation(rule, node_label(q.node, view),
                                     f"activation quantized per channel ({q.scale.size} scales on axis {q.axis}); "
                                     "activations must be per tensor"))
    return out


def weight_zero_points(model: onnx.ModelProto, rule: str, per_channel_only: bool = False) -> list[Violation]:
    """Weight DQs of weighted ops have zero point 0 (all of them, or only the per-channel ones)."""
    out = []
    for view in iter_views(model):
        for node in view.nodes:
            wi = weighted_inputs(node, view)
            if wi is None or wi.weight_dq is None or (per_channel_only and not wi.weight_dq.per_channel):
                continue
            if wi.weight_dq.zero_point_const and not wi.weight_dq.zero_point_is_zero():
                kind = "per-channel " if wi.weight_dq.per_channel else ""
                out.append(Violation(rule, node_label(node, view),
                                     f"{kind}weight zero point is not 0 (max |zp| "
                                     f"{int(np.abs(wi.weight_dq.zero_point.astype(np.int64)).max())})"))
    return out
