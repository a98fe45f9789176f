"""FoldShapes: Shape/Size of tensors whose dims are static become constants, partially where only some are."""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir import DEFAULT_DOMAINS, Model, constant_value, is_graph_output, iter_graphs
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass


def shape_value(node: gs.Node) -> list[int | str | None] | None:
    """The dims a Shape node returns (honouring start/end), static ones as int; None when the rank is unknown."""
    shape = node.inputs[0].shape if node.inputs else None
    if shape is None:
        return None
    dims = [d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else None) for d in shape]
    start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
    return dims[start:end] if end is not None else dims[start:]


def _static(dims: list) -> bool:
    return all(isinstance(d, int) for d in dims)


def _gather_pick(user: gs.Node, dims: list) -> np.ndarray | None:
    """Gather(shape, constant indices) picking only static dims: its value, else None."""
    if user.op != "Gather" or user.attrs.get("axis", 0) not in (0, -1) or len(user.inputs) < 2:
        return None
    idx = constant_value(user.inputs[1])
    if idx is None or idx.dtype.kind not in "iu":
        return None
    flat = [int(i) for i in idx.reshape(-1)]
    if any(not -len(dims) <= i < len(dims) for i in flat):
        return None
    picked = [dims[i] for i in flat]
    if not _static(picked):
        return None
    return np.array(picked, dtype=np.int64).reshape(idx.shape)


def _slice_pick(user: gs.Node, dims: list) -> np.ndarray | None:
    """Slice(shape, constant starts/ends[/axes/steps]) picking only static dims: its value, else None."""
    if user.op != "Slice" or len(user.inputs) < 3:
        return None
    vals = [constant_value(t) if t.name else None for t in user.inputs[1:]]
    if any(v is None for v in vals[:2]) or any(v is None and t.name for v, t in zip(vals, user.inputs[1:],
                                                                                    strict=True)):
        return None
    if vals[0].size != 1 or vals[1].size != 1:
        return None
    starts, ends = int(vals[0].reshape(-1)[0]), int(vals[1].reshape(-1)[0])
    axes = int(vals[2].reshape(-1)[0]) if len(vals) > 2 and vals[2] is not None else 0
    steps = int(vals[3].reshape(-1)[0]) if len(vals) > 3 and vals[3] is not None else 1
    if axes not in (0, -1) or steps == 0:
        return None
    clamp = len(dims)
    starts = max(min(starts, clamp), -clamp - 1)
    ends = max(min(ends, clamp), -clamp - 1)
    picked = dims[slice(starts, ends, steps)]
    if not _static(picked):
        return None
    return np.array(picked, dtype=np.int64)


def _replace_output(node: gs.Node, value: np.ndarray) -> None:
    out = node.outputs[0]
    node.outputs.clear()
    node.inputs.clear()
    out.to_constant(np.asarray(value, order="C"))


@register_pass
class FoldShapes(Pass):
    """Fold Shape and Size of tensors whose dims are known statically (after InferShapes) into constants.

    Rewrites:
    - Shape(x) (start/end honoured) when every selected dim of x is static -> int64 initializer;
    - Size(x) when every dim of x is static -> int64 scalar initializer;
    - where x has dynamic dims, a Gather(Shape(x), constant indices) or Slice(Shape(x), constant
      starts/ends/axes/steps) that picks only static dims -> initializer; the Shape stays for its other users.
    The rest of a Shape -> Gather -> Concat -> Reshape chain then folds in FoldConstants.
    Declines: x of unknown rank (run InferShapes first); Shape/Size reading dynamic dims (symbolic dims are
    never specialised); nodes whose output is a graph output; ops of other domains.
    """

    lossless = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        stats = {"shapes": 0, "sizes": 0, "partial": 0}
        for graph in list(iter_graphs(model.graph)):
            done: set[int] = set()
            for node in list(graph.nodes):
                if node.op not in ("Shape", "Size") or (node.domain or "") not in DEFAULT_DOMAINS or not node.outputs:
                    continue
                where = f"{node.op} '{node.name}'"
                if isinstance(node.inputs[0], gs.Constant):
                    continue  # FoldConstants evaluates it
                dims = shape_value(node) if node.op == "Shape" else node.inputs[0].shape
                if dims is None:
                    ctx.decline(self.name, where, "input rank unknown (run InferShapes first)")
                    continue
                dims = list(dims)
                if is_graph_output(node.outputs[0], graph):
                    ctx.decline(self.name, where, "its output is a graph output")
                    continue
                if _static(dims):
                    value = (np.array(math.prod(dims), dtype=np.int64) if node.op == "Size"
                             else np.array(dims, dtype=np.int64))
                    _replace_output(node, value)
                    done.add(id(node))
                    stats["sizes" if node.op == "Size" else "shapes"] += 1
                    continue
                partial = 0
                if node.op == "Shape":
                    for user in list(node.outputs[0].outputs):
                        if user.inputs[0] is not node.outputs[0] or any(is_graph_output(t, graph)
                                                                        for t in user.outputs):
                            continue
                        value = _gather_pick(user, dims)
                        if value is None:
                            value = _slice_pick(user, dims)
                        if value is not None:
                            _replace_output(user, value)
                            done.add(id(user))
                            partial += 1
                stats["partial"] += partial
                if not partial:
                    ctx.decline(self.name, where, f"dims {dims} are not all static; dynamic dims stay dynamic")
            if done:
                graph.nodes = [n for n in graph.nodes if id(n) not in done]
        return PassResult(any(stats.values()), {k: v for k, v in stats.items() if v})
