"""InferShapes: onnx shape inference (data propagation on) written back as tensor dtypes and shapes."""

from __future__ import annotations

import logging
import math
import os
import tempfile

import onnx
import onnx_graphsurgeon as gs
from onnx import helper
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, dtype_to_onnx, update_import_domains
from onnx_graphsurgeon.ir.tensor import SparseValues

from onnxopt.ir import Model, is_graph_input, iter_graphs
from onnxopt.model_io import iter_graph_protos
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass

log = logging.getLogger(__name__)

_WEIGHT_MIN_ELEMENTS = 1024  # initializers this large are never shape tensors: infer without their data
_PROTO_LIMIT = (1 << 31) - (1 << 24)


def _dims(t: gs.Tensor) -> list | None:
    return None if t.shape is None else list(t.shape)


def _known(shape: list | None) -> int:
    """How much a shape says: rank known counts 1, every static dim 1 more."""
    if shape is None:
        return 0
    return 1 + sum(isinstance(d, int) for d in shape)


def _proto_without_weights(model: Model) -> onnx.ModelProto:
    """The model as protobuf, its large main-graph constants as typed graph inputs: no weight bytes are copied."""
    graph = model.graph
    inputs = [OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs]
    outputs = [OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs]
    io = {t.name for t in graph.inputs + graph.outputs}
    inits, value_info = [], []
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Constant):
            if isinstance(t._values, SparseValues) or math.prod(t.shape) >= _WEIGHT_MIN_ELEMENTS:
                if name not in io:
                    inputs.append(helper.make_tensor_value_info(name, dtype_to_onnx(t.export_dtype), t.shape))
            else:
                inits.append(OnnxExporter.export_tensor_proto(t))
        elif name not in io and (t.dtype is not None or t.shape is not None):
            value_info.append(OnnxExporter.export_value_info_proto(t, False))
    nodes = [OnnxExporter.export_node(n) for n in graph.nodes]
    g = helper.make_graph(nodes, graph.name or "main", inputs, outputs, initializer=inits, value_info=value_info)
    proto = helper.make_model(g, opset_imports=update_import_domains(graph),
                              functions=[OnnxExporter.export_function(f) for f in graph.functions])
    proto.ir_version = max(helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True), 7)
    return proto


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    kw = {"check_type": False, "strict_mode": False, "data_prop": True}
    if proto.ByteSize() < _PROTO_LIMIT:
        return onnx.shape_inference.infer_shapes(proto, **kw)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "out.onnx")
        onnx.save_model(proto, src, save_as_external_data=True, location="in.onnx.data")
        onnx.shape_inference.infer_shapes_path(src, dst, **kw)
        return onnx.load(dst, load_external_data=False)


def _read_type(vi: onnx.ValueInfoProto):
    if not vi.type.HasField("tensor_type"):
        return None, None
    tt = vi.type.tensor_type
    dtype = None
    if tt.elem_type:
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        except Exception:  # types numpy does not know (bfloat16, float8): leave the dtype alone
            dtype = None
    shape = None
    if tt.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return dtype, shape


def _merge(old: list | None, new: list | None) -> list | None:
    """Dim by dim: a static dim wins over a symbolic or unknown one; a symbolic name wins over unknown."""
    if new is None:
        return old
    if old is None or len(old) != len(new):
        return new if old is None else old
    out = []
    for o, n in zip(old, new, strict=True):
        if isinstance(o, int):
            out.append(o)
        elif isinstance(n, int):
            out.append(n)
        else:
            out.append(o if o is not None else n)
    return out


@register_pass
class InferShapes(Pass):
    """Run onnx shape inference (strict_mode=False, data_prop=True) and record dtypes and shapes on tensors.

    Rewrites: intermediate tensors (subgraphs included) get the dtype and shape onnx infers; a dim it
    knows statically replaces an unknown or symbolic one, a symbolic dim stays symbolic (nothing is
    specialised: graph inputs are never touched, graph outputs only get what they lacked).
    Inference runs on an export whose large main-graph initializers are typed inputs, so weights are never
    copied through inference nor count toward protobuf's 2 GB (past that, infer_shapes_path on a file).
    Declines: a model onnx cannot infer (the reason is logged and recorded; the model is unchanged);
    tensors whose type is not a tensor type (sequences, maps, optionals) are left alone.
    Reports changed only when some tensor gained information, so it can sit in a fixed-point group.
    ``InferShapes(follows=other)``: a run placed directly after ``other`` (nothing may run between them) is skipped
    when ``other`` last ran on the same model and modified nothing: it would repeat that run exactly.
    """

    lossless = True

    def __init__(self, follows: InferShapes | None = None):
        self.follows = follows
        self._last: tuple[Model, bool] | None = None  # (model of the last run, whether it modified anything)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if self.follows is not None:
            last, self.follows._last = self.follows._last, None  # consumed: a stale state is never reused
            if last is not None and last[0] is model and not last[1]:
                self._last = (model, False)
                return PassResult(False)
        self._last = (model, True)  # until this run is known to have modified nothing
        try:
            inferred = _infer(_proto_without_weights(model))
        except Exception as e:
            reason = f"shape inference failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.warning("%s; shapes left as they are", reason)
            ctx.decline(self.name, "model", reason)
            return PassResult(False)
        types: dict[str, tuple | None] = {}
        for g in iter_graph_protos(inferred.graph):
            for vi in list(g.value_info) + list(g.output):
                found = _read_type(vi)
                if types.setdefault(vi.name, found) != found:
                    types[vi.name] = None  # sibling subgraphs reuse a name with different types: skip it
        gained, modified = 0, False
        for graph in iter_graphs(model.graph):
            outputs = {id(t) for t in graph.outputs}
            for name, t in graph.tensors().items():
                if not isinstance(t, gs.Variable) or types.get(name) is None or is_graph_input(t, graph):
                    continue
                dtype, shape = types[name]
                old_dims = _dims(t)
                before = _known(old_dims) + (t.dtype is not None)
                if t.dtype is None and dtype is not None:
                    t.dtype = dtype
                    modified = True
                if id(t) in outputs:
                    if t.shape is None and shape is not None:
                        t.shape = shape
                else:
                    merged = _merge(old_dims, shape)
                    if merged is not None:
                        t.shape = merged
                new_dims = _dims(t)
                modified |= new_dims != old_dims
                after = _known(new_dims) + (t.dtype is not None)
                gained += after > before
        self._last = (model, modified)
        return PassResult(gained > 0, {"tensors_refined": gained} if gained else {})
