"""Per-op channel index maps for dependency analysis, and how each op is rewritten when channels go.

A handler ``h(cg, node)`` tells the channel graph ``cg`` (see ``dependency_groups.ChannelGraph``) which axis of each
data tensor carries channels and which channel indices of its tensors are the same channel (``link``), and it
registers ``Member``s: the constants and attributes to edit when channels are removed. It returns ``None`` when done,
``DEFER`` when no tensor's channel axis is known yet, or a reason string, which locks every tensor of the node.
An op without a handler locks its tensors: never guess.

The shared vocabulary (``Member``, ``DEFER``, rank/axis helpers) lives in ``channel_maps_base``, the handlers of
layout ops in ``channel_maps_shape``; this module holds the weighted and per-channel ops and the ``HANDLERS`` table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.analysis.channel_maps_base import (
    DEFER,
    Member,
    _const_input,
    _consts_only_after,
    _dim,
    _rank,
    _same,
)
from onnxopt.analysis.channel_maps_shape import (
    h_concat,
    h_pad,
    h_reduce,
    h_reshape,
    h_resize,
    h_slice,
    h_softmax,
    h_split,
    h_squeeze,
    h_transpose,
)
from onnxopt.ir import constant_value

# ---- weighted ops -------------------------------------------------------------------------------------------

def h_conv(cg, node: gs.Node) -> str | None:
    x, y = node.inputs[0], node.outputs[0]
    w = constant_value(node.inputs[1])
    if w is None:
        return "weights are not constant"
    has_b, b = _const_input(node, 2)
    if has_b and b is None:
        return "bias is not constant"
    r = cg.declare(x, 1) or cg.declare(y, 1)
    if r:
        return r
    g = int(node.attrs.get("group", 1))
    transposed = node.op == "ConvTranspose"
    cout = w.shape[1] * g if transposed else w.shape[0]
    if cg.size(y) != cout or cg.size(x) != (w.shape[0] if transposed else w.shape[1] * g):
        return "weight shape does not match the channel counts"
    if g == 1:
        cg.member(Member("slice", node, x.name, 1, 0 if transposed else 1, "weight_in"))
        cg.member(Member("slice", node, y.name, 1, 1 if transposed else 0, "weight_out"))
    else:
        k_in, k_out = cg.size(x) // g, cout // g
        for j in range(g):
            cg.link_many([(x, np.arange(j * k_in, (j + 1) * k_in)), (y, np.arange(j * k_out, (j + 1) * k_out))])
        if transposed:
            cg.member(Member("slice", node, x.name, 1, 0, "weight_out"))
        else:
            cg.member(Member("slice", node, y.name, 1, 0, "weight_out"))
        cg.member(Member("group", node, y.name, role="attr", extra={"per": k_out}))
    if has_b:
        cg.member(Member("slice", node, y.name, 2, 0, "bias"))
    cg.source(y)
    return None


def h_gemm(cg, node: gs.Node) -> str | None:
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    av, bv = constant_value(a), constant_value(b)
    ta, tb = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    has_c, c = _const_input(node, 2)
    if has_c and c is None:
        return "C is not constant"
    if bv is not None and av is None:
        data, in_axis, out_axis = a, (0 if ta else 1), 1
        w_in, w_out, widx = (1 if tb else 0), (0 if tb else 1), 1
    elif av is not None and bv is None:
        data, in_axis, out_axis = b, (1 if tb else 0), 0
        w_in, w_out, widx = (0 if ta else 1), (1 if ta else 0), 0
    else:
        return "needs exactly one constant operand"
    r = cg.declare(data, in_axis) or cg.declare(y, out_axis)
    if r:
        return r
    cg.member(Member("slice", node, data.name, widx, w_in, "weight_in"))
    cg.member(Member("slice", node, y.name, widx, w_out, "weight_out"))
    if has_c and c.ndim > 0:
        c_axis = c.ndim - (2 - out_axis)
        if c_axis >= 0 and c.shape[c_axis] == cg.size(y) and cg.size(y) != 1:
            cg.member(Member("slice", node, y.name, 2, c_axis, "bias"))
        elif c_axis >= 0 and c.shape[c_axis] != 1:
            return "C does not broadcast along the output features"
    cg.source(y)
    return None


def h_matmul(cg, node: gs.Node) -> str | None:
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    av, bv = constant_value(a), constant_value(b)
    ry = _rank(y)
    if bv is not None and av is None and bv.ndim == 2 and (_rank(a) or 0) >= 2 and ry:
        r = cg.declare(a, _rank(a) - 1) or cg.declare(y, ry - 1)
        if r:
            return r
        cg.member(Member("slice", node, a.name, 1, 0, "weight_in"))
        cg.member(Member("slice", node, y.name, 1, 1, "weight_out"))
    elif av is not None and bv is None and av.ndim == 2 and (_rank(b) or 0) >= 2 and ry:
        r = cg.declare(b, _rank(b) - 2) or cg.declare(y, ry - 2)
        if r:
            return r
        cg.member(Member("slice", node, b.name, 0, 1, "weight_in"))
        cg.member(Member("slice", node, y.name, 0, 0, "weight_out"))
    else:
        return "needs one 2-D constant operand and a data operand of rank >= 2"
    cg.source(y)
    return None


# ---- per-channel ops ----------------------------------------------------------------------------------------

def h_batchnorm(cg, node: gs.Node) -> str | None:
    if len([o for o in node.outputs if o.name]) > 1:
        return "training-mode outputs"
    r = _consts_only_after(node, 1) or cg.declare(node.inputs[0], 1) or _same(cg, node.inputs[0], node.outputs[0])
    if r:
        return r
    y = node.outputs[0].name
    roles = {1: "bn_scale", 2: "param", 3: "param", 4: "bn_var"}
    for i in range(1, len(node.inputs)):
        if node.op == "InstanceNormalization" or i in roles:
            cg.member(Member("slice", node, y, i, 0, roles.get(i, "param")))
    return None


def h_unary(cg, node: gs.Node) -> str | None:
    if node.op == "Dropout" and len([o for o in node.outputs if o.name]) > 1:
        return "uses the mask output"
    return _consts_only_after(node, 1) or _same(cg, node.inputs[0], node.outputs[0])


def h_elementwise(cg, node: gs.Node) -> str | None:
    y = node.outputs[0]
    ry = _rank(y)
    if ry is None:
        return "output rank unknown"
    data = [t for t in node.inputs if constant_value(t) is None]
    if not data:
        return None
    ax = cg.axis_of(y)
    for t in data:
        a = cg.axis_of(t)
        if a is not None:
            cand = a + ry - (_rank(t) or 0)
            if ax is not None and cand != ax:
                return "inputs carry channels on different axes"
            ax = cand
    if ax is None:
        return DEFER
    r = cg.declare(y, ax)
    if r:
        return r
    c = cg.size(y)
    for i, t in enumerate(node.inputs):
        rt = _rank(t)
        if rt is None:
            return "input rank unknown"
        a = ax - (ry - rt)
        d = _dim(t, a) if a >= 0 else 1
        if constant_value(t) is not None:
            if a >= 0 and d == c and c != 1:
                cg.member(Member("slice", node, y.name, i, a, "param"))
            elif d != 1:
                return f"constant input {i} does not broadcast along the channel axis"
            continue
        if d == c and c != 1:
            r = cg.declare(t, a) or cg.link_identity(t, y)
            if r:
                return r
        elif d == 1:
            cg.lock(t, f"broadcast along the channel axis by {node.op} '{node.name}'")
            if a >= 0:
                cg.declare(t, a)
        else:
            return f"input {i} shape unknown along the channel axis"
    return None


def h_pool(cg, node: gs.Node) -> str | None:
    if len([o for o in node.outputs if o.name]) > 1:
        return "uses the indices output"
    return cg.declare(node.inputs[0], 1) or _same(cg, node.inputs[0], node.outputs[0])


UNARY = ("Relu", "LeakyRelu", "PRelu_", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
         "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Identity",
         "Dropout", "Cast", "Floor", "Ceil", "Round", "Sin", "Cos", "Clip", "ThresholdedRelu", "Sign", "Swish")
ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu")
POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")

HANDLERS: dict[str, Callable[[Any, gs.Node], str | None]] = {
    "Conv": h_conv, "ConvTranspose": h_conv, "Gemm": h_gemm, "MatMul": h_matmul,
    "BatchNormalization": h_batchnorm, "InstanceNormalization": h_batchnorm,
    **{op: h_unary for op in UNARY}, **{op: h_elementwise for op in ELEMENTWISE}, **{op: h_pool for op in POOLS},
    "Pad": h_pad, "Resize": h_resize, "Upsample": h_resize, "Concat": h_concat, "Split": h_split,
    "Slice": h_slice, "Flatten": h_reshape, "Reshape": h_reshape, "Transpose": h_transpose,
    "Squeeze": h_squeeze, "Unsqueeze": h_squeeze, "Softmax": h_softmax, "LogSoftmax": h_softmax,
    **{op: h_reduce for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2",
                               "ReduceProd", "ReduceSumSquare", "ReduceLogSumExp")},
}
