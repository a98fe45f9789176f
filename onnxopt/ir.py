"""The in-memory model passes work on: an onnx-graphsurgeon graph plus the model-level fields gs drops.

Graph helpers live here so that every pass finds producers, consumers, constants and subgraphs the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from onnxopt import weights
from onnxopt.model_io import is_large, subgraph_protos

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class ModelMeta:
    """Model-level fields that onnx-graphsurgeon does not carry through import/export."""

    ir_version: int = 0
    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    doc_string: str = ""
    metadata_props: dict[str, str] = field(default_factory=dict)
    # graph inputs that were also initializers (old exporters); onnx-graphsurgeon drops them from the inputs
    initializer_inputs: list[str] = field(default_factory=list)


class Model:
    """A mutable model: ``graph`` may be edited in place or replaced by a pass."""

    def __init__(self, graph: gs.Graph, meta: ModelMeta | None = None):
        self.graph = graph
        self.meta = meta or ModelMeta()
        # large (model_io.is_large): weights stay in files, computed ones are spilled on export (onnxopt.weights)
        self.large = False

    @classmethod
    def from_onnx(cls, proto: onnx.ModelProto) -> Model:
        meta = ModelMeta(
            ir_version=proto.ir_version,
            producer_name=proto.producer_name,
            producer_version=proto.producer_version,
            domain=proto.domain,
            model_version=proto.model_version,
            doc_string=proto.doc_string,
            metadata_props={p.key: p.value for p in proto.metadata_props},
            initializer_inputs=sorted({t.name for t in proto.graph.initializer} & {i.name for i in proto.graph.input}),
        )
        model = cls(_import(proto), meta)
        model.large = is_large(proto)
        return model

    def to_onnx(self) -> onnx.ModelProto:
        weights.prepare_export(self.graph, spill=self.large)
        proto = gs.export_onnx(self.graph, do_type_check=False)
        _drop_rankless_value_info(proto.graph)
        opsets = [helper.make_opsetid(o.domain, o.version) for o in proto.opset_import]
        needed = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
        proto.ir_version = max(self.meta.ir_version, needed) if self.meta.ir_version else max(needed, 7)
        proto.producer_name = self.meta.producer_name or "onnxopt"
        proto.producer_version = self.meta.producer_version
        proto.domain = self.meta.domain
        proto.model_version = self.meta.model_version
        proto.doc_string = self.meta.doc_string
        del proto.metadata_props[:]
        for k, v in self.meta.metadata_props.items():
            proto.metadata_props.add(key=k, value=v)
        return proto

    def replace_with(self, proto: onnx.ModelProto) -> None:
        """Take the graph of ``proto`` (after a pass that works on protobuf, such as the opset converter)."""
        self.graph = _import(proto)
        self.large = self.large or is_large(proto)

    def release_weights(self) -> None:
        """Let go of the file maps passes read weights through (large models; they load again when next read)."""
        weights.release(self.graph)

    @property
    def opset(self) -> int:
        return int(self.graph.opset)

    def copy(self) -> Model:
        return Model.from_onnx(self.to_onnx())


def _import(proto: onnx.ModelProto) -> gs.Graph:
    graph = gs.import_onnx(proto)
    weights.attach(graph)  # weights a large-model load left in their file are read from it on demand
    return graph


def _drop_rankless_value_info(graph: onnx.GraphProto) -> None:
    """Remove value_info entries (of this graph and its subgraphs) of tensor type without a shape: they say nothing
    of the rank, and onnx's full check rejects some of them. Graph inputs and outputs are left as they are."""
    keep = [vi for vi in graph.value_info
            if not vi.type.HasField("tensor_type") or vi.type.tensor_type.HasField("shape")]
    if len(keep) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(keep)
    for node in graph.node:
        for sub in subgraph_protos(node):
            _drop_rankless_value_info(sub)


def opset_of(graph: gs.Graph, domain: str = "") -> int:
    """Opset version in force for ``domain`` (the default domain unless said)."""
    if domain in DEFAULT_DOMAINS:
        return int(graph.opset)
    return int(graph.import_domains and next(
        (o.version for o in graph.import_domains if o.domain == domain), 1) or 1)


def subgraphs_of(node: gs.Node) -> Iterator[gs.Graph]:
    """The subgraphs held in a node's attributes (If branches, Loop/Scan bodies)."""
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, gs.Graph))


def iter_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """The graph and every subgraph below it, depth first, outer graphs before inner ones."""
    yield graph
    for node in graph.nodes:
        for sub in subgraphs_of(node):
            yield from iter_graphs(sub)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def is_graph_output(tensor: gs.Tensor, graph: gs.Graph) -> bool:
    return any(t is tensor for t in graph.outputs)


def is_graph_input(tensor: gs.Tensor, graph: gs.Graph) -> bool:
    return any(t is tensor for t in graph.inputs)


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a tensor known at compile time (an initializer or a Constant node's output), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is not None and node.op == "Constant" and not node.inputs:
        return constant_node_value(node)
    return None


def constant_node_value(node: gs.Node) -> np.ndarray | None:
    """Value of a Constant node, whatever attribute form it uses; None for sparse values."""
    attrs = node.attrs
    if "value" in attrs:
        value = attrs["value"]
        return np.asarray(value.values) if isinstance(value, gs.Constant) else np.asarray(value)
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(list(attrs[key]), dtype=dtype)
    if "value_string" in attrs:
        return np.array(attrs["value_string"], dtype=object)
    if "value_strings" in attrs:
        return np.array(list(attrs["value_strings"]), dtype=object)
    return None


def is_constant(tensor: gs.Tensor) -> bool:
    return constant_value(tensor) is not None


def make_constant(name: str, value: np.ndarray) -> gs.Constant:
    return gs.Constant(name, np.asarray(value, order="C"))  # ascontiguousarray would turn 0-d into shape (1,)


def replace_all_uses(old: gs.Tensor, new: gs.Tensor, graph: gs.Graph) -> None:
    """Make every consumer of ``old`` (subgraph nodes included) read ``new`` instead; graph outputs too."""
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
    for g in iter_graphs(graph):
        for i, t in enumerate(g.outputs):
            if t is old:
                g.outputs[i] = new


def bypass_node(node: gs.Node, graph: gs.Graph, input_index: int = 0, output_index: int = 0) -> str | None:
    """Remove a node whose output equals one of its inputs. Returns the reason it declines, or None when done.

    When the output is a graph output its name must survive: the input's producer then writes the output
    tensor directly, which needs the input to be produced by a node in this graph and used nowhere else.
    """
    reason = bypass_reason(node, graph, input_index, output_index)
    if reason is not None:
        return reason
    src, dst = node.inputs[input_index], node.outputs[output_index]
    if any(is_graph_output(dst, g) for g in iter_graphs(graph)):
        prod = producer(src)
        prod.outputs[prod.outputs.index(src)] = dst
        node.outputs.clear()
        node.inputs.clear()
        return None
    replace_all_uses(dst, src, graph)
    node.outputs.clear()
    node.inputs.clear()
    return None


def dtype_of(t: gs.Tensor) -> np.dtype | None:
    """The numpy dtype of a tensor, or None when unknown (or not a numpy type)."""
    if t.dtype is None:
        return None
    try:
        return np.dtype(t.dtype)
    except TypeError:
        return None


def shape_of(t: gs.Tensor) -> list[int | str | None] | None:
    """The tensor's shape as known (ints for static dims, str/None for dynamic ones), or None if the rank is unknown."""
    if isinstance(t, gs.Constant):
        return list(t.values.shape)
    v = constant_value(t)
    if v is not None:
        return list(v.shape)
    if t.shape is None:
        return None
    return [d if isinstance(d, (int, np.integer)) and d >= 0 else (d if isinstance(d, str) and d else None)
            for d in t.shape]


def static_shape(t: gs.Tensor) -> list[int] | None:
    """The shape when every dim is a known int, else None."""
    s = shape_of(t)
    if s is None or any(not isinstance(d, (int, np.integer)) for d in s):
        return None
    return [int(d) for d in s]


def bypass_reason(node: gs.Node, graph: gs.Graph, input_index: int = 0, output_index: int = 0) -> str | None:
    """The reason ``bypass_node`` would decline for this node, or None when it would succeed (it mutates nothing)."""
    src, dst = node.inputs[input_index], node.outputs[output_index]
    ds, dd = dtype_of(src), dtype_of(dst)
    if ds is not None and dd is not None and ds != dd:
        return "input and output dtypes differ"
    if any(is_graph_output(dst, g) for g in iter_graphs(graph)):
        prod = producer(src)
        if (prod is None or len(src.outputs) != 1 or is_graph_output(src, graph) or is_graph_input(src, graph)
                or not any(n is prod for n in graph.nodes)):
            return "its output is a graph output and its input cannot take that name"
    return None


def other_outputs_unused(node: gs.Node, graph: gs.Graph, keep: int = 0) -> bool:
    """True when no output but ``keep`` has a consumer or is a graph output."""
    for i, t in enumerate(node.outputs):
        if i == keep or not t.name:
            continue
        if t.outputs or any(is_graph_output(t, g) for g in iter_graphs(graph)):
            return False
    return True


def default_domain(check: Callable) -> Callable:
    """Wrap a check so that it declines nodes of any domain but the default one (their semantics are unknown)."""
    def wrapped(node, graph, ctx):
        if node.domain not in (None, "", "ai.onnx"):
            return f"domain '{node.domain}' is not the default one"
        return check(node, graph, ctx)
    return wrapped


def tensor_to_numpy(t: onnx.TensorProto) -> np.ndarray:
    return numpy_helper.to_array(t)


def unique_name(graph: gs.Graph, base: str) -> str:
    """A tensor name not yet used anywhere in the graph tree."""
    used = set()
    for g in iter_graphs(graph):
        used.update(g.tensors().keys())
    if base not in used:
        return base
    i = 1
    while f"{base}_{i}" in used:
        i += 1
    return f"{base}_{i}"
