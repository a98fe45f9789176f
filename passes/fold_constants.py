"""FoldConstants: evaluate nodes whose inputs are all constant and replace them by initializers."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from onnxopt.ir import DEFAULT_DOMAINS, Model, constant_value, is_graph_output, iter_graphs, subgraphs_of
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass

log = logging.getLogger(__name__)

DEFAULT_FOLD_SIZE_LIMIT = 1 << 22  # elements a fold may add over its inputs (16 MiB of float32)
DEFAULT_FOLD_WEIGHT_SIZE_LIMIT = 1 << 28  # the same, when the result only feeds parameter slots (weights)

NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})
# The quantized-weight form (int8 weight -> DequantizeLinear) is what quantized models are made of: folding it
# would turn every int8 weight back into float.
KEPT_FORMS = {"DequantizeLinear": "DequantizeLinear of a constant is the quantized-weight form; kept"}
# Inputs that are parameters (weights) of an op: any input index, or those from an index on.
PARAMETER_SLOTS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 0, "MatMul": 0, "BatchNormalization": 1,
                   "InstanceNormalization": 1, "LayerNormalization": 1, "PRelu": 1, "LSTM": 1, "GRU": 1, "RNN": 1}


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: exact numpy for the data-movement ops that dominate shape arithmetic, onnxruntime for the rest,
# onnx's reference evaluator where onnxruntime cannot run the node.

def _ints(a: np.ndarray | None) -> list[int]:
    return [] if a is None else [int(v) for v in np.asarray(a).reshape(-1)]


def _np_eval(node: gs.Node, vals: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray] | None:
    """Exact numpy kernels for data movement; None when the node is not one of them."""
    op, a = node.op, node.attrs
    x = vals[0] if vals else None
    if op == "Identity":
        return [x]
    if op == "Shape":
        dims = list(np.shape(x))
        start, end = a.get("start", 0), a.get("end", None)
        return [np.array(dims[start:end] if end is not None else dims[start:], dtype=np.int64)]
    if op == "Size":
        return [np.array(np.size(x), dtype=np.int64)]
    if op == "ConstantOfShape":
        value = a.get("value")
        fill = np.asarray(value.values if isinstance(value, gs.Constant) else
                          (value if value is not None else np.zeros(1, np.float32)))
        first = fill.reshape(-1)[0]
        shape = tuple(_ints(x))
        return [np.zeros(shape, fill.dtype) if first == 0 else np.full(shape, first, dtype=fill.dtype)]
    if op in ("Unsqueeze", "Squeeze"):
        axes = _ints(vals[1]) if opset >= 13 and len(vals) > 1 and vals[1] is not None else list(a.get("axes", []))
        if op == "Squeeze":
            return [np.squeeze(x, axis=tuple(axes)) if axes else np.squeeze(x)]
        out_rank = x.ndim + len(axes)
        return [np.expand_dims(x, tuple(sorted(ax % out_rank for ax in axes)))]
    if op == "Concat":
        return [np.concatenate([v for v in vals if v is not None], axis=a["axis"])]
    if op == "Gather":
        axis = a.get("axis", 0)
        idx = np.asarray(vals[1]).astype(np.int64)
        idx = np.where(idx < 0, idx + x.shape[axis], idx)
        return [np.take(x, idx, axis=axis)]
    if op == "Reshape":
        shape = _ints(vals[1])
        if not a.get("allowzero", 0):
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return [np.reshape(x, shape)]
    if op == "Transpose":
        perm = a.get("perm")
        return [np.transpose(x, perm if perm is not None else None)]
    if op == "Flatten":
        axis = a.get("axis", 1)
        axis = axis + x.ndim if axis < 0 else axis
        return [np.reshape(x, (math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))]
    return None


def _ort_eval(node: gs.Node, vals: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """Run one node in onnxruntime (optimizations off) on its constant inputs."""
    import onnxruntime as ort

    proto, feeds, out_names = _one_node_model(node, vals, opset)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(out_names, feeds)


def _ref_eval(node: gs.Node, vals: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    proto, feeds, out_names = _one_node_model(node, vals, opset)
    return ReferenceEvaluator(proto).run(out_names, feeds)


def _one_node_model(node: gs.Node, vals: Sequence[np.ndarray | None], opset: int):
    in_names = [f"i{i}" if t.name else "" for i, t in enumerate(node.inputs)]
    out_names = [f"o{i}" for i in range(len(node.outputs))]
    attrs = {}
    for k, v in node.attrs.items():
        if isinstance(v, gs.Constant):
            v = onnx.numpy_helper.from_array(np.asarray(v.values))
        attrs[k] = v
    onode = helper.make_node(node.op, in_names, out_names, domain=node.domain or "", **attrs)
    feeds = {n: np.asarray(v) for n, v in zip(in_names, vals, strict=True) if n}
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(feeds[n].dtype), feeds[n].shape)
              for n in in_names if n]
    graph = helper.make_graph([onode], "fold", inputs, [helper.make_empty_tensor_value_info(n) for n in out_names])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    types = {vi.name: vi for vi in inferred.graph.value_info}
    for i, name in enumerate(out_names):
        if name in types:
            proto.graph.output[i].CopyFrom(types[name])
    return proto, feeds, out_names


def evaluate(node: gs.Node, vals: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """Outputs of ``node`` on constant inputs: numpy, then onnxruntime, then the reference evaluator."""
    try:
        out = _np_eval(node, vals, opset)
    except Exception:  # a malformed node: let a runtime say what is wrong
        out = None
    if out is not None:
        return out
    try:
        return _ort_eval(node, vals, opset)
    except Exception as e:
        log.debug("onnxruntime cannot fold %s '%s' (%s); trying the reference evaluator", node.op, node.name, e)
        return _ref_eval(node, vals, opset)


# ---------------------------------------------------------------------------------------------------------------

def predicted_size(node: gs.Node, vals: Sequence[np.ndarray | None]) -> int | None:
    """Elements the node will produce, when known without running it (static output shapes or cheap rules)."""
    try:
        if node.op == "ConstantOfShape":
            return math.prod(_ints(vals[0]))
        if node.op == "Expand":
            return math.prod(np.broadcast_shapes(np.shape(vals[0]), tuple(_ints(vals[1]))))
        if node.op == "Tile":
            return math.prod(d * r for d, r in zip(np.shape(vals[0]), _ints(vals[1]), strict=True))
        if node.op == "Range":
            start, limit, delta = (float(np.asarray(v)) for v in vals[:3])
            return max(math.ceil((limit - start) / delta), 0)
    except Exception:
        return None
    total = 0
    for t in node.outputs:
        if t.shape is None or not all(isinstance(d, int) for d in t.shape):
            return None
        total += math.prod(t.shape)
    return total


def feeds_only_parameters(node: gs.Node) -> bool:
    """True when every use of every output is a parameter slot (a weight) of a weighted op."""
    for t in node.outputs:
        if not t.outputs:
            return False
        for user in t.outputs:
            first = PARAMETER_SLOTS.get(user.op)
            if first is None or any(inp is t and i < first for i, inp in enumerate(user.inputs)):
                return False
    return True


def decline_reason(node: gs.Node, graph: gs.Graph, vals: Sequence[np.ndarray | None]) -> str | None:
    if node.op in NONDETERMINISTIC:
        return "nondeterministic op"
    if (node.domain or "") not in DEFAULT_DOMAINS:
        return f"op of domain '{node.domain}' is not folded"
    if any(True for _ in subgraphs_of(node)):
        return "op with subgraphs is not folded"
    if node.op in KEPT_FORMS:
        return KEPT_FORMS[node.op]
    if any(is_graph_output(t, graph) for t in node.outputs):
        return "an output is a graph output (an output cannot be an initializer)"
    return None


def _size_reason(node: gs.Node, out_size: int, in_size: int, ctx: PassContext) -> str | None:
    limit = int(ctx.option("fold_size_limit", DEFAULT_FOLD_SIZE_LIMIT))
    kind = "fold_size_limit"
    if feeds_only_parameters(node):
        limit = max(limit, int(ctx.option("fold_weight_size_limit", DEFAULT_FOLD_WEIGHT_SIZE_LIMIT)))
        kind = "fold_weight_size_limit"
    if out_size - in_size > limit:
        return f"output of {out_size} elements exceeds its inputs ({in_size}) by more than {kind}={limit}"
    return None


def fold_graph(graph: gs.Graph, opset: int, ctx: PassContext, pass_name: str) -> int:
    """Fold every foldable node of one graph in topological order; returns how many nodes were folded."""
    folded: set[int] = set()
    for node in list(graph.toposort(recurse_subgraphs=False).nodes):
        if node.op == "Constant" or not node.outputs:
            continue
        # initializers count as constant without reading their values: weights of nodes that cannot fold stay unloaded
        if not all(not t.name or isinstance(t, gs.Constant) or constant_value(t) is not None for t in node.inputs):
            continue
        vals = [None if not t.name else constant_value(t) for t in node.inputs]
        where = f"{node.op} '{node.name}'"
        reason = decline_reason(node, graph, vals)
        in_size = sum(int(np.size(v)) for v in vals if v is not None)
        if reason is None:
            predicted = predicted_size(node, vals)
            if predicted is not None:
                reason = _size_reason(node, predicted, in_size, ctx)
        if reason is None:
            try:
                outs = evaluate(node, vals, opset)
            except Exception as e:
                reason = f"evaluation failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if reason is None:
            outs = [np.asarray(o) for o in outs]
            reason = _size_reason(node, sum(int(o.size) for o in outs), in_size, ctx)
        if reason is None:
            reason = _dtype_mismatch(node, outs)
        if reason is not None:
            ctx.decline(pass_name, where, reason)
            continue
        targets = list(node.outputs)
        node.outputs.clear()
        node.inputs.clear()
        for t, value in zip(targets, outs, strict=False):
            if t.name:
                t.to_constant(np.asarray(value, order="C"))
        folded.add(id(node))
    if folded:
        graph.nodes = [n for n in graph.nodes if id(n) not in folded]
    return len(folded)


def _dtype_mismatch(node: gs.Node, outs: list[np.ndarray]) -> str | None:
    for t, o in zip(node.outputs, outs, strict=False):
        try:
            declared = np.dtype(t.dtype) if t.name and t.dtype is not None else None
        except TypeError:
            return f"declared dtype {t.dtype} has no numpy equivalent"
        if declared is not None and declared != o.dtype:
            return f"evaluated dtype {o.dtype} differs from the declared {declared}"
        if o.dtype == object and o.size and not isinstance(o.reshape(-1)[0], (str, bytes)):
            return "output is not a tensor of numbers or strings"
    return None


@register_pass
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constant and replace their outputs by initializers.

    Rewrites: any default-domain node whose inputs are all initializers or Constant outputs (of its own
    graph or an enclosing one; inside If/Loop/Scan bodies the result stays local to the body) is evaluated
    and its outputs become initializers. Evaluation: exact numpy for data-movement ops (Shape, Size,
    ConstantOfShape, Gather, Concat, (Un)Squeeze, Reshape, Transpose, Flatten, Identity), else onnxruntime
    on a one-node model (optimizations off), else onnx's ReferenceEvaluator.
    Size cap: a fold whose output has more elements than its inputs together, by more than
    ctx.option("fold_size_limit", 4Mi elements), is declined; when every use of the result is a parameter
    slot of a weighted op (Conv/Gemm/MatMul weights, BatchNormalization statistics...) the runtime holds that
    tensor anyway and the cap is ctx.option("fold_weight_size_limit", 256Mi elements). Sizes are checked
    before evaluating where known (static shapes, ConstantOfShape, Expand, Tile, Range).
    Declines: nondeterministic ops (RandomNormal, RandomUniform, *Like, Multinomial, Bernoulli); ops of
    other domains; ops holding subgraphs (If, Loop, Scan); DequantizeLinear (the quantized-weight form);
    nodes whose output is a graph output; outputs over the size cap; nodes no engine can evaluate; results
    whose dtype differs from the declared one. Constant nodes are left to ConstantsToInitializers.
    """

    lossless = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opset = model.opset
        folded = sum(fold_graph(g, opset, ctx, self.name) for g in list(iter_graphs(model.graph)))
        return PassResult(folded > 0, {"folded": folded} if folded else {})
