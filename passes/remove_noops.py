"""RemoveNoOps: drop nodes whose output is provably equal to one of their inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from onnxopt.ir import (
    bypass_node,
    bypass_reason,
    constant_value,
    default_domain,
    dtype_of,
    opset_of,
    other_outputs_unused,
    shape_of,
)
from onnxopt.pass_manager import register_pass
from onnxopt.rewrite import Declined, MatchRewrite, Rewrite, RewritePass, default_domain_match

INT64_MAX = np.iinfo(np.int64).max
INT32_MAX = np.iinfo(np.int32).max


def _int_list(value) -> list[int] | None:
    if value is None:
        return None
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _optional_input(node: gs.Node, i: int) -> gs.Tensor | None:
    if len(node.inputs) > i and node.inputs[i].name:
        return node.inputs[i]
    return None


# ---- the no-op conditions: each returns the decline reason or None ---------------------------------------------

def _check_identity(node, graph, ctx):
    return bypass_reason(node, graph)


def _check_dropout(node, graph, ctx):
    if node.attrs.get("is_test", 1) == 0 and opset_of(graph) < 7:
        return "is_test=0 (training) before opset 7"
    mode = _optional_input(node, 2)
    if mode is not None:
        v = constant_value(mode)
        if v is None:
            return "training_mode is not a constant"
        if bool(np.asarray(v).reshape(-1)[0]):
            return "training_mode is true"
    if not other_outputs_unused(node, graph):
        return "its mask output is used"
    return bypass_reason(node, graph)


def _check_cast(node, graph, ctx):
    src = dtype_of(node.inputs[0])
    if src is None:
        return "input dtype unknown"
    try:
        to = np.dtype(helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
    except (KeyError, TypeError, ValueError):
        return "target dtype not a plain numpy type"
    if src != to:
        return "casts to another dtype"
    return bypass_reason(node, graph)


def _check_cast_like(node, graph, ctx):
    src, like = dtype_of(node.inputs[0]), dtype_of(node.inputs[1])
    if src is None or like is None:
        return "input dtype unknown"
    if src != like:
        return "casts to another dtype"
    return bypass_reason(node, graph)


def _target_and_input_shapes(node: gs.Node) -> tuple[list[int], list] | str:
    """(constant target shape, input shape) of a Reshape/Expand, or the reason they are not known."""
    shape = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if shape is None:
        return "target shape is not a constant"
    in_shape = shape_of(node.inputs[0])
    if in_shape is None:
        return "input rank unknown"
    return _int_list(shape), in_shape


def _check_reshape(node, graph, ctx):
    shapes = _target_and_input_shapes(node)
    if isinstance(shapes, str):
        return shapes
    shape, in_shape = shapes
    if len(shape) != len(in_shape):
        return "changes the rank"
    allowzero = node.attrs.get("allowzero", 0)
    minus_one = 0
    for want, have in zip(shape, in_shape, strict=False):
        if want == 0 and not allowzero:
            continue
        if want == -1:
            minus_one += 1
            continue
        if isinstance(have, (int, np.integer)) and want == have:
            continue
        return "changes the shape" if isinstance(have, (int, np.integer)) else "input has dynamic dims"
    if minus_one > 1:
        return "invalid shape with several -1"
    return bypass_reason(node, graph)


def _check_transpose(node, graph, ctx):
    perm = node.attrs.get("perm")
    if perm is None:
        s = shape_of(node.inputs[0])
        if s is None:
            return "no perm and input rank unknown"
        if len(s) > 1:
            return "reverses the axes"
    elif list(perm) != list(range(len(perm))):
        return "permutes the axes"
    return bypass_reason(node, graph)


def _check_pad(node, graph, ctx):
    if opset_of(graph) < 11:
        pads = node.attrs.get("pads", node.attrs.get("paddings"))
    else:
        pads = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if pads is None:
            return "pads are not a constant"
    pads = _int_list(pads)
    if pads is None or any(p != 0 for p in pads):
        return "pads are not all zero"
    return bypass_reason(node, graph)


def _check_slice(node, graph, ctx):
    if opset_of(graph) < 10:
        starts, ends = _int_list(node.attrs.get("starts")), _int_list(node.attrs.get("ends"))
        axes, steps = _int_list(node.attrs.get("axes")), None
    else:
        vals = []
        for i in range(1, 5):
            t = _optional_input(node, i)
            v = constant_value(t) if t is not None else None
            if t is not None and v is None:
                return "starts/ends/axes/steps are not constants"
            vals.append(_int_list(v))
        starts, ends, axes, steps = vals
    if starts is None or ends is None:
        return "starts/ends unknown"
    in_shape = shape_of(node.inputs[0])
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        return "starts/ends/axes/steps of different lengths"
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        if step != 1:
            return "step is not 1"
        dim = None
        if in_shape is not None and -len(in_shape) <= axis < len(in_shape):
            d = in_shape[axis]
            dim = int(d) if isinstance(d, (int, np.integer)) else None
        elif axis < 0:
            return "negative axis with unknown rank"
        if start != 0 and not (dim is not None and start <= -dim):
            return "start is not the first element"
        if end < INT32_MAX and not (dim is not None and end >= dim):
            return "end is not past the last element" if dim is not None else "input has dynamic dims"
    return bypass_reason(node, graph)


def _check_expand(node, graph, ctx):
    shapes = _target_and_input_shapes(node)
    if isinstance(shapes, str):
        return shapes
    shape, in_shape = shapes
    if len(shape) > len(in_shape):
        return "adds dims"
    for want, have in zip(reversed(shape), reversed(in_shape), strict=False):
        if want == 1 or (isinstance(have, (int, np.integer)) and want == have):
            continue
        return "broadcasts a dim" if isinstance(have, (int, np.integer)) else "input has dynamic dims"
    return bypass_reason(node, graph)


def _check_single_input(node, graph, ctx):
    if len(node.inputs) != 1:
        return "more than one input"
    return bypass_reason(node, graph)


def _check_split(node, graph, ctx):
    if len(node.outputs) != 1:
        return "more than one output"
    if node.attrs.get("num_outputs", 1) != 1:
        return "num_outputs is not 1"
    return bypass_reason(node, graph)


_NEUTRAL = {"Add": (0, True), "Sub": (0, False), "Mul": (1, True), "Div": (1, False)}


def _neutral_operand(node: gs.Node) -> tuple[int | None, str | None]:
    """Index of the variable input when the other input is the neutral constant; else (None, reason)."""
    neutral, commutative = _NEUTRAL[node.op]
    candidates = [1, 0] if commutative else [1]
    for ci in candidates:
        v = constant_value(node.inputs[ci])
        if v is not None and v.size > 0 and v.dtype.kind in "fiu" and np.all(v == neutral):
            return 1 - ci, None
    return None, f"no operand is a constant {neutral}"


@dataclass(frozen=True)
class NeutralMatch:
    """The x + 0 / x * 1 ... node and the index of its variable input x."""

    node: gs.Node
    x_index: int


def _neutral_reason(node: gs.Node, graph: gs.Graph, xi: int) -> str | None:
    """Why the node with variable input ``xi`` and a neutral constant is not bypassed, or None."""
    x, c = node.inputs[xi], node.inputs[1 - xi]
    cshape = list(constant_value(c).shape)
    xshape = shape_of(x)
    if xshape is None:
        if cshape:
            return "input rank unknown, broadcasting might change the shape"
    elif len(cshape) > len(xshape):
        return "broadcasting adds dims"
    else:
        for want, have in zip(reversed(cshape), reversed(xshape), strict=False):
            if want == 1 or (isinstance(have, (int, np.integer)) and want == have):
                continue
            return "broadcasting changes the shape" if isinstance(have, (int, np.integer)) else "input has dynamic dims"
    dx, dc = dtype_of(x), np.dtype(constant_value(c).dtype)
    if dx is None:
        return "input dtype unknown"
    if dx != dc:
        return "operand dtypes differ"
    return bypass_reason(node, graph, input_index=xi)


def _match_arith(node: gs.Node, graph: gs.Graph, ctx) -> NeutralMatch | Declined:
    xi, reason = _neutral_operand(node)
    if xi is None:
        return Declined(reason)
    reason = _neutral_reason(node, graph, xi)
    return Declined(reason) if reason is not None else NeutralMatch(node, xi)


def _apply(node, graph, ctx):
    reason = bypass_node(node, graph)
    assert reason is None, reason


def _apply_arith(m: NeutralMatch, graph: gs.Graph, ctx) -> None:
    reason = bypass_node(m.node, graph, input_index=m.x_index)
    assert reason is None, reason


@register_pass
class RemoveNoOps(RewritePass):
    """Remove nodes whose output equals an input: Identity, inference Dropout, no-op Cast/Reshape/Transpose/Pad/...

    Rewrites (the node is bypassed with ``bypass_node``; its consumers read its input):
    - Identity;
    - Dropout in inference: no training_mode input, or a constant false one (ratio is then irrelevant); before
      opset 7 only with is_test != 0. A Dropout whose mask output is used (or is a graph output) is kept;
    - Cast and CastLike to the dtype the input already has;
    - Reshape with a constant shape that keeps every dim (0 copies a dim unless allowzero, one -1, equal ints);
    - Transpose with the identity perm (or no perm on a rank <= 1 input);
    - Pad whose pads are all zero (any mode);
    - Slice with step 1 that starts at the first element and ends past the last one on every sliced axis;
    - Expand to a shape whose dims are all 1 or equal to the input's dims (no new dims);
    - Concat of a single input; Split into a single output;
    - x + 0, 0 + x, x - 0, x * 1, 1 * x, x / 1 when the constant broadcasts without changing x's shape and has
      x's dtype.
    Declines (logged): the output is a graph output whose name the input cannot take (the input is a graph
    input/output, has other consumers, or comes from another graph); input/output dtypes differ; shapes,
    ranks or dtypes unknown or dynamic where the decision needs them; non-constant shapes, pads, slice
    parameters or training_mode; a used Dropout mask.
    """

    rewrites = [
        Rewrite("identity", ("Identity",), default_domain(_check_identity), _apply),
        Rewrite("dropout", ("Dropout",), default_domain(_check_dropout), _apply),
        Rewrite("cast", ("Cast",), default_domain(_check_cast), _apply),
        Rewrite("cast_like", ("CastLike",), default_domain(_check_cast_like), _apply),
        Rewrite("reshape", ("Reshape",), default_domain(_check_reshape), _apply),
        Rewrite("transpose", ("Transpose",), default_domain(_check_transpose), _apply),
        Rewrite("pad", ("Pad",), default_domain(_check_pad), _apply),
        Rewrite("slice", ("Slice",), default_domain(_check_slice), _apply),
        Rewrite("expand", ("Expand",), default_domain(_check_expand), _apply),
        Rewrite("concat", ("Concat",), default_domain(_check_single_input), _apply),
        Rewrite("split", ("Split",), default_domain(_check_split), _apply),
        MatchRewrite("neutral_arith", ("Add", "Sub", "Mul", "Div"), default_domain_match(_match_arith), _apply_arith),
    ]


