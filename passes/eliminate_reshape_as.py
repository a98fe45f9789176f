"""EliminateReshapeAs: shape plumbing that rebuilds a tensor's own shape (``reshape_as``) and no-op Flattens go."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir import (
    bypass_node,
    bypass_reason,
    constant_value,
    default_domain,
    is_graph_output,
    iter_graphs,
    opset_of,
    producer,
    shape_of,
)
from onnxopt.pass_manager import register_pass
from onnxopt.rewrite import Declined, MatchRewrite, Rewrite, RewritePass, default_domain_match

# ops whose first output has exactly the shape of their first input (the other inputs are scalars or broadcast to
# it unidirectionally, never widening it)
SAME_SHAPE = frozenset({
    "Identity", "Cast", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor",
    "Ceil", "Round", "Sign", "Erf", "Not", "Sin", "Cos", "Softplus", "Softsign", "Elu", "Selu", "Celu",
    "LeakyRelu", "HardSigmoid", "HardSwish", "Gelu", "Mish", "Softmax", "LogSoftmax", "Hardmax", "Clip", "PRelu",
    "Dropout",
})
_DEFAULT = (None, "", "ai.onnx")


def _flatten_noop_reason(node: gs.Node) -> str | None:
    """Why this Flatten changes the shape, or None when its output has its input's shape (rank 2, axis 1)."""
    shape = shape_of(node.inputs[0])
    if shape is None:
        return "input rank unknown"
    if len(shape) != 2:
        return f"input has rank {len(shape)}, not 2"
    if node.attrs.get("axis", 1) not in (1, -1):
        return "axis is not 1"
    return None


def _same_shape_source(y: gs.Tensor, x: gs.Tensor) -> bool:
    """Whether ``y`` provably has the shape of ``x``: y is x, or comes from x through shape-keeping nodes."""
    seen = 0
    while y is not x:
        node = producer(y)
        if node is None or node.domain not in _DEFAULT or not node.inputs or node.outputs[0] is not y or seen > 64:
            return False
        if node.op == "Flatten":
            if _flatten_noop_reason(node) is not None:
                return False
        elif node.op not in SAME_SHAPE:
            return False
        y, seen = node.inputs[0], seen + 1
    return True


def _whole_shape_of(t: gs.Tensor) -> gs.Tensor | None:
    """x when ``t`` is Shape(x) over all of x's dims (no start/end), else None."""
    node = producer(t)
    if node is None or node.op != "Shape" or node.domain not in _DEFAULT or not node.inputs:
        return None
    if node.attrs.get("start", 0) != 0 or node.attrs.get("end") is not None:
        return None
    return node.inputs[0]


# ---- Reshape(y, Shape(x)) where y already has x's shape ---------------------------------------------------------

def _check_reshape_as(node, graph, ctx):
    if len(node.inputs) < 2:
        return "no shape input"
    x = _whole_shape_of(node.inputs[1])
    if x is None:
        return "shape is not Shape(x) of a whole tensor"
    if not _same_shape_source(node.inputs[0], x):
        return "input is not x or x through shape-keeping nodes"
    return bypass_reason(node, graph)


def _apply_bypass(node, graph, ctx):
    reason = bypass_node(node, graph)
    assert reason is None, reason


# ---- Flatten(x) of a rank-2 x on axis 1 --------------------------------------------------------------------------

def _check_flatten(node, graph, ctx):
    return _flatten_noop_reason(node) or bypass_reason(node, graph)


# ---- Concat(Unsqueeze(Gather(Shape(x), i)) for i in 0..rank-1) == Shape(x) (onnxslim's EliminationReshapeAs) -----

def _unsqueeze_axes(node: gs.Node, graph: gs.Graph) -> list[int] | None:
    if opset_of(graph) < 13 or len(node.inputs) < 2:
        axes = node.attrs.get("axes")
        return None if axes is None else [int(a) for a in axes]
    v = constant_value(node.inputs[1])
    return None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]


def _concat_dims(node: gs.Node, graph: gs.Graph) -> tuple[gs.Tensor | None, str | None]:
    """The Shape(x) output that this Concat rebuilds dim by dim, or the reason it is not one."""
    if node.attrs.get("axis") not in (0, -1):
        return None, "axis is not 0"
    shape_out, rank = None, len(node.inputs)
    for pos, t in enumerate(node.inputs):
        unsq = producer(t)
        if unsq is None or unsq.op != "Unsqueeze" or unsq.domain not in _DEFAULT or unsq.outputs[0] is not t:
            return None, f"input {pos} is not an Unsqueeze"
        if _unsqueeze_axes(unsq, graph) not in ([0], [-1]):
            return None, f"input {pos} is not unsqueezed on axis 0"
        gather = producer(unsq.inputs[0])
        if gather is None or gather.op != "Gather" or gather.domain not in _DEFAULT or len(gather.inputs) < 2:
            return None, f"input {pos} is not Unsqueeze(Gather)"
        if gather.attrs.get("axis", 0) not in (0, -1):
            return None, f"input {pos} gathers on another axis"
        idx = constant_value(gather.inputs[1])
        if idx is None or idx.shape != () or idx.dtype.kind not in "iu" or int(idx) not in (pos, pos - rank):
            return None, f"input {pos} does not pick dim {pos} as a scalar"
        src = gather.inputs[0]
        if shape_out is None:
            shape_out = src
        elif src is not shape_out:
            return None, "the dims come from different tensors"
    x = _whole_shape_of(shape_out) if shape_out is not None else None
    if x is None:
        return None, "the dims are not picked from Shape(x) of a whole tensor"
    x_shape = shape_of(x)
    if x_shape is None or len(x_shape) != rank:
        return None, "x's rank is unknown" if x_shape is None else f"x has rank {len(x_shape)}, not {rank}"
    return shape_out, None


@dataclass(frozen=True)
class OwnDimsMatch:
    """The Concat that rebuilds Shape(x) dim by dim, and that Shape(x) output its consumers read instead."""

    concat: gs.Node
    shape_out: gs.Tensor


def _match_concat(node: gs.Node, graph: gs.Graph, ctx) -> OwnDimsMatch | Declined:
    if not node.inputs:
        return Declined("no inputs")
    shape_out, reason = _concat_dims(node, graph)
    if reason is not None:
        return Declined(reason)
    if any(is_graph_output(node.outputs[0], g) for g in iter_graphs(graph)):
        return Declined("its output is a graph output")
    return OwnDimsMatch(node, shape_out)


def _apply_concat(m: OwnDimsMatch, graph: gs.Graph, ctx) -> None:
    node, shape_out = m.concat, m.shape_out
    out = node.outputs[0]
    for user in list(out.outputs):
        for i, t in enumerate(user.inputs):
            if t is out:
                user.inputs[i] = shape_out
    node.outputs.clear()
    node.inputs.clear()


@register_pass
class EliminateReshapeAs(RewritePass):
    """Remove shape plumbing that only rebuilds a tensor's own shape (exporters' ``reshape_as``), and no-op Flattens.

    Rewrites:
    - Concat(Unsqueeze(Gather(Shape(x), 0), [0]), ..., Unsqueeze(Gather(Shape(x), r-1), [0])) on axis 0, with r
      the rank of x and every index a scalar (negative ones allowed) -> Shape(x) (onnxslim's EliminationReshapeAs);
    - Reshape(y, Shape(x)) where y is x or comes from x through nodes that keep the shape (unary elementwise ops,
      Softmax/LogSoftmax/Hardmax, Clip, PRelu, Cast, Dropout, no-op Flatten) -> y (bypassed);
    - Flatten(x) of a rank-2 x with axis 1 (or -1) -> x (bypassed).
    Declines: a Shape with start/end; a chain through any other op; Gather indices that are not scalar constants
    in order; ranks unknown; a Concat output that is a graph output; a bypassed node whose output is a graph
    output its input cannot take the name of (see ``bypass_node``); non-default domains.
    """

    lossless = True
    rewrites = [
        Rewrite("flatten_noop", ("Flatten",), default_domain(_check_flatten), _apply_bypass),
        Rewrite("reshape_as_own_shape", ("Reshape",), default_domain(_check_reshape_as), _apply_bypass),
        MatchRewrite("concat_of_own_dims", ("Concat",), default_domain_match(_match_concat), _apply_concat),
    ]
