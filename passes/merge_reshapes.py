"""MergeReshapes: a view op (Reshape/Flatten/Squeeze/Unsqueeze) of a view op becomes one Reshape of the source."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir import constant_value, make_constant, opset_of, producer, shape_of, unique_name
from onnxopt.pass_manager import register_pass
from onnxopt.rewrite import Declined, MatchRewrite, RewritePass, default_domain_match

VIEW_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
INFER = "infer"


@dataclass(frozen=True)
class ShapeMatch:
    """The node to rewrite and the constant shape its Reshape gets."""

    node: gs.Node
    shape: tuple[int, ...]


def _axes(node: gs.Node, graph: gs.Graph) -> list[int] | None:
    """Constant axes of Squeeze/Unsqueeze (attribute before opset 13, input after); [] when absent."""
    if opset_of(graph) < 13:
        axes = node.attrs.get("axes")
        return [] if axes is None else [int(a) for a in axes]
    if len(node.inputs) < 2 or not node.inputs[1].name:
        return []
    v = constant_value(node.inputs[1])
    return None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]


def _reshape_shape(node: gs.Node) -> list[int] | None:
    v = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if v is None:
        return None
    shape = [int(d) for d in np.asarray(v).reshape(-1)]
    if node.attrs.get("allowzero", 0) and 0 in shape:
        return None
    return shape


def _dim(shape, i):
    if shape is None or i >= len(shape):
        return None
    d = shape[i]
    return int(d) if isinstance(d, (int, np.integer)) else None


def _outer_spec(node: gs.Node, graph: gs.Graph) -> tuple[list | None, str | None]:
    """The outer node's result shape relative to its input y: ints, ("copy", i) for y's dim i at position i, INFER."""
    y = shape_of(node.inputs[0])
    if node.op == "Reshape":
        shape = _reshape_shape(node)
        if shape is None:
            return None, "shape is not a constant (or allowzero with zeros)"
        return [("copy", i) if d == 0 else (INFER if d == -1 else d) for i, d in enumerate(shape)], None
    if node.op == "Flatten":
        axis = int(node.attrs.get("axis", 1))
        if axis < 0:
            if y is None:
                return None, "negative axis and unknown rank"
            axis += len(y)
        if axis == 0:
            return [1, INFER], None
        head = [_dim(y, i) for i in range(axis)] if y is not None else [None]
        if all(d is not None for d in head):
            return [int(np.prod(head)), INFER], None
        if axis == 1:
            return [("copy", 0), INFER], None
        tail = [_dim(y, i) for i in range(axis, len(y))] if y is not None else [None]
        if all(d is not None for d in tail):
            return [INFER, int(np.prod(tail))], None
        return None, "both sides of the flatten axis have dynamic dims"
    axes = _axes(node, graph)
    if axes is None:
        return None, "axes are not constant"
    if y is None:
        return None, "input rank unknown"
    r = len(y)
    if node.op == "Squeeze":
        if not axes:
            if any(_dim(y, i) is None for i in range(r)):
                return None, "squeeze without axes on dynamic dims"
            axes = [i for i in range(r) if y[i] == 1]
        axes = sorted(a + r if a < 0 else a for a in axes)
        kept = [j for j in range(r) if j not in axes]
        spec = []
        for k, j in enumerate(kept):
            spec.append(_dim(y, j) if _dim(y, j) is not None else (("copy", j) if k == j else INFER))
        return spec, None
    n = r + len(axes)
    axes = sorted(a + n if a < 0 else a for a in axes)
    spec, j = [], 0
    for k in range(n):
        if k in axes:
            spec.append(1)
            continue
        spec.append(_dim(y, j) if _dim(y, j) is not None else (("copy", j) if k == j else INFER))
        j += 1
    return spec, None


def _copy_source(inner: gs.Node, graph: gs.Graph, i: int):
    """Dim i of the inner node's output: an int, "x" when it equals the inner input's dim i, else None."""
    d = _dim(shape_of(inner.outputs[0]), i)
    if d is not None:
        return d
    if inner.op == "Reshape":
        shape = _reshape_shape(inner)
        if shape is not None and i < len(shape):
            return "x" if shape[i] == 0 else (shape[i] if shape[i] > 0 else None)
        return None
    if inner.op == "Flatten":
        return "x" if i == 0 and int(inner.attrs.get("axis", 1)) == 1 else None
    axes = _axes(inner, graph)
    if not axes:
        return None
    rank = shape_of(inner.inputs[0]) if inner.op == "Squeeze" else shape_of(inner.outputs[0])
    if any(a < 0 for a in axes):
        if rank is None:
            return None
        axes = [a + len(rank) if a < 0 else a for a in axes]
    return "x" if i < min(axes) else None


def _merged_shape(node: gs.Node, graph: gs.Graph) -> tuple[list[int] | None, str | None]:
    inner = producer(node.inputs[0])
    if inner is None or inner.op not in VIEW_OPS or inner.domain not in (None, "", "ai.onnx"):
        return None, "input is not produced by a Reshape/Flatten/Squeeze/Unsqueeze"
    if inner.op == "Reshape" and _reshape_shape(inner) is None:
        return None, "inner Reshape's shape is not a constant (or allowzero with zeros)"
    if inner.op in ("Squeeze", "Unsqueeze") and _axes(inner, graph) is None:
        return None, "inner axes are not constant"
    if node.op != "Reshape" and inner.op != "Reshape":
        return None, "neither node is a Reshape"
    spec, reason = _outer_spec(node, graph)
    if spec is None:
        return None, reason
    out, copies, infers = [], [], sum(1 for s in spec if s == INFER)
    for s in spec:
        if isinstance(s, tuple):
            src = _copy_source(inner, graph, s[1])
            if src == "x":
                out.append(0)
                copies.append(True)
                continue
            if src is not None:
                out.append(src)
            elif infers == 0:
                out.append(-1)
                infers = 1
            else:
                return None, "a copied dim is unknown and another dim is already inferred"
        else:
            out.append(-1 if s == INFER else s)
        copies.append(False)
    if infers > 1:
        return None, "more than one dim would be inferred"
    if any(d == 0 and not c for d, c in zip(out, copies, strict=False)):
        return None, "zero-size dims"
    return out, None


def _match(node: gs.Node, graph: gs.Graph, ctx) -> ShapeMatch | Declined:
    """The merged shape when the view of a view becomes one Reshape of the source, else the reason it declines."""
    if opset_of(graph) < 5:
        return Declined("opset < 5 has no shape-input Reshape")
    shape, reason = _merged_shape(node, graph)
    return Declined(reason) if reason is not None else ShapeMatch(node, tuple(shape))


def _apply(m: ShapeMatch, graph: gs.Graph, ctx) -> None:
    node = m.node
    src = producer(node.inputs[0]).inputs[0]
    const = make_constant(unique_name(graph, f"{node.outputs[0].name}_shape"), np.array(m.shape, dtype=np.int64))
    if node.op == "Reshape":
        node.inputs[0] = src
        node.inputs[1] = const
        node.attrs.pop("allowzero", None)
        return
    out = node.outputs[0]
    node.outputs.clear()
    node.inputs.clear()
    graph.nodes.append(gs.Node("Reshape", name=unique_name(graph, f"{node.name or out.name}_reshape"),
                               inputs=[src, const], outputs=[out]))


SHAPE_INT_TYPES = (6, 7)  # int32, int64: Casts between them keep shape values (dims below 2**31)


def _shape_entries(t: gs.Tensor, x: gs.Tensor, depth: int = 0) -> list | None:
    """A 1-D int tensor as a list of ints and ("dim", j) (x's dim j), when it is built from constants and Shape(x)."""
    v = constant_value(t)
    if v is not None:
        return [int(d) for d in np.asarray(v).reshape(-1)] if v.ndim <= 1 and v.dtype.kind in "iu" else None
    node = producer(t)
    if node is None or depth > 16 or node.domain not in (None, "", "ai.onnx"):
        return None
    if node.op == "Cast" and int(node.attrs.get("to", 0)) in SHAPE_INT_TYPES:
        return _shape_entries(node.inputs[0], x, depth + 1)
    if node.op == "Shape" and node.inputs[0] is x:
        rank = shape_of(x)
        if rank is None:
            return None
        dims = [("dim", j) for j in range(len(rank))]
        return dims[int(node.attrs.get("start", 0)):node.attrs.get("end")]
    if node.op == "Concat":
        out = []
        for part in node.inputs:
            entries = _shape_entries(part, x, depth + 1)
            if entries is None or isinstance(entries, tuple):
                return None
            out.extend(entries)
        return out
    if node.op == "Slice" and len(node.inputs) >= 3:
        params = [constant_value(i) for i in node.inputs[1:]]
        if any(p is None for p in params):
            return None
        params = [[int(a) for a in np.asarray(p).reshape(-1)] for p in params]
        if len(params[0]) != 1 or (len(params) > 2 and params[2] not in ([0], [-1])) or (
                len(params) > 3 and params[3] != [1]):
            return None
        src = _shape_entries(node.inputs[0], x, depth + 1)
        return None if src is None else src[params[0][0]:params[1][0]]
    if node.op in ("Gather", "Unsqueeze"):
        if node.op == "Gather":
            idx = constant_value(node.inputs[1])
            if idx is None or int(node.attrs.get("axis", 0)) != 0 or idx.ndim > 1:
                return None
            src = _shape_entries(node.inputs[0], x, depth + 1)
            if src is None:
                return None
            picked = [src[int(i)] for i in np.asarray(idx).reshape(-1)]
            return picked if idx.ndim == 1 else (picked, "scalar")
        src = _shape_entries(node.inputs[0], x, depth + 1)
        axes = [int(a) for a in np.asarray(constant_value(node.inputs[1])).reshape(-1)] \
            if len(node.inputs) > 1 and constant_value(node.inputs[1]) is not None else node.attrs.get("axes")
        if isinstance(src, tuple) and list(axes or []) in ([0], [-1]):
            return src[0]
        return None
    return None


def _constant_shape(node: gs.Node) -> tuple[list[int] | None, str | None]:
    """Reshape(x, shape computed from Shape(x) and constants) -> the equivalent constant shape."""
    if node.attrs.get("allowzero", 0):
        return None, "allowzero=1"
    if len(node.inputs) < 2 or constant_value(node.inputs[1]) is not None:
        return None, "shape already constant"
    x = node.inputs[0]
    entries = _shape_entries(node.inputs[1], x)
    if entries is None or isinstance(entries, tuple):
        return None, "shape is not built from Shape(input) and constants"
    in_shape = shape_of(x)
    out, infers = [], sum(1 for e in entries if e == -1)
    for p, e in enumerate(entries):
        if not isinstance(e, tuple):
            out.append(e)
        elif e[1] == p:
            out.append(0)
        elif _dim(in_shape, e[1]) not in (None, 0):
            out.append(_dim(in_shape, e[1]))
        elif infers == 0:
            out.append(-1)
            infers = 1
        else:
            return None, "a moved dynamic dim while another dim is inferred"
    if infers > 1:
        return None, "more than one dim would be inferred"
    return out, None


def _match_constant_shape(node: gs.Node, graph: gs.Graph, ctx) -> ShapeMatch | Declined:
    shape, reason = _constant_shape(node)
    return Declined(reason) if reason is not None else ShapeMatch(node, tuple(shape))


def _apply_constant_shape(m: ShapeMatch, graph: gs.Graph, ctx) -> None:
    node = m.node
    node.inputs[1] = make_constant(unique_name(graph, f"{node.outputs[0].name}_shape"), np.array(m.shape, np.int64))


@register_pass
class MergeReshapes(RewritePass):
    """Merge chains of Reshape/Flatten/Squeeze/Unsqueeze (at least one a Reshape) into one Reshape of the source.

    Rewrites: an outer view node (Reshape with a constant shape, Flatten, Squeeze, Unsqueeze with constant axes)
    whose input comes from an inner view node, one of the two being a Reshape, becomes Reshape(source, shape).
    The new shape keeps 0 (copy) only where the copied dim is provably the source's dim at the same position,
    uses the static dims that shape inference knows, and infers at most one dim with -1. The inner node stays if
    it has other consumers and disappears otherwise.
    Also: Reshape(x, shape) whose shape is computed from Shape(x) (start/end), Slice/Gather/Unsqueeze of it,
    Concat, int32/int64 Casts and constants gets that shape as a constant: x's dim j at position j becomes 0
    (copy), a static dim its value, one dynamic dim moved elsewhere -1 (Casts assume dims below 2**31).
    Declines: non-constant shapes or axes (unless built as above); allowzero=1 with zeros in the shape;
    unknown rank where needed;
    a dynamic dim that cannot be copied while another dim is already inferred; zero-size dims; Flatten whose
    both sides have dynamic dims; non-default domains; opset < 5.
    """

    rewrites = [
        MatchRewrite("merge_views", VIEW_OPS, default_domain_match(_match), _apply),
        MatchRewrite("shape_from_own_shape", ("Reshape",), default_domain_match(_match_constant_shape),
                     _apply_constant_shape),
    ]
