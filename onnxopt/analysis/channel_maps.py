"""Per-op channel index maps for dependency analysis, and how each op is rewritten when channels go.

A handler ``h(cg, node)`` tells the channel graph ``cg`` (see ``dependency_groups.ChannelGraph``) which axis of each
data tensor carries channels and which channel indices of its tensors are the same channel (``link``), and it
registers ``Member``s: the constants and attributes to edit when channels are removed. It returns ``None`` when done,
``DEFER`` when no tensor's channel axis is known yet, or a reason string, which locks every tensor of the node.
An op without a handler locks its tensors: never guess.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir import constant_value

DEFER = "__defer__"


@dataclass
class Member:
    """Something to edit when channels of ``tensor`` go.

    kind ``slice``: keep the channels of constant input ``index`` of ``node`` along ``axis``; ``group``: set the
    ``group`` attribute to kept/``per``; ``split``/``slice_range``/``reshape``/``resize``: recompute that op's
    sizes. ``role`` (weight_in, weight_out, bias, bn_scale, bn_var, param, attr) drives importance scores.
    """

    kind: str
    node: gs.Node
    tensor: str
    index: int = 0
    axis: int = 0
    role: str = "param"
    extra: dict[str, Any] = field(default_factory=dict)


def _rank(t: gs.Tensor) -> int | None:
    v = constant_value(t)
    if v is not None:
        return v.ndim
    return len(t.shape) if t.shape is not None else None


def _dim(t: gs.Tensor, axis: int) -> int | None:
    v = constant_value(t)
    shape = v.shape if v is not None else t.shape
    if shape is None or axis < 0 or axis >= len(shape):
        return None
    d = shape[axis]
    return int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None


def _const_input(node: gs.Node, i: int) -> tuple[bool, np.ndarray | None]:
    """(present, value) of optional input ``i``; value None when present but not constant."""
    if len(node.inputs) <= i or not node.inputs[i].name:
        return False, None
    return True, constant_value(node.inputs[i])


def _mapped(cg, x: gs.Tensor, y: gs.Tensor, fwd: Callable[[int], int | None], bwd: Callable[[int], int | None]
            ) -> str | None:
    """Link x and y channel for channel, the axis moved by ``fwd`` (x -> y) / ``bwd`` (y -> x)."""
    ax, ay = cg.axis_of(x), cg.axis_of(y)
    if ax is None and ay is None:
        return DEFER
    if ax is None:
        ax = bwd(ay)
        if ax is None:
            return "the channel axis does not survive this op"
    else:
        o = fwd(ax)
        if o is None:
            return "the op works along the channel axis"
        if ay is not None and ay != o:
            return "channel axes of input and output disagree"
        ay = o
    return cg.declare(x, ax) or cg.declare(y, ay) or cg.link_identity(x, y)


def _same(cg, x: gs.Tensor, y: gs.Tensor) -> str | None:
    return _mapped(cg, x, y, lambda a: a, lambda a: a)


def _consts_only_after(node: gs.Node, first: int) -> str | None:
    for i in range(first, len(node.inputs)):
        if node.inputs[i].name and constant_value(node.inputs[i]) is None:
            return f"input {i} is not constant"
    return None


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


# ---- layout ops ---------------------------------------------------------------------------------------------

def _axes_arg(node: gs.Node, attr: str = "axes", index: int = 1) -> tuple[bool, list[int] | None]:
    """(given, axes) from the attribute or the constant input; axes None when given but not constant."""
    if attr in node.attrs:
        return True, [int(a) for a in node.attrs[attr]]
    present, v = _const_input(node, index)
    if not present:
        return False, None
    return True, None if v is None else [int(a) for a in np.atleast_1d(v)]


def h_pad(cg, node: gs.Node) -> str | None:
    x, y = node.inputs[0], node.outputs[0]
    r = _rank(x)
    pads = node.attrs.get("pads")
    if pads is None:
        present, v = _const_input(node, 1)
        if v is None:
            return "pads are not constant"
        pads = [int(p) for p in v]
    given, axes = _axes_arg(node, "__none__", 3)
    if given and axes is None:
        return "axes are not constant"
    axes = [a % r for a in axes] if axes else list(range(r or 0))
    if _consts_only_after(node, 1):
        return "pad value is not constant"

    def fwd(a: int) -> int | None:
        if a in axes:
            k = axes.index(a)
            if pads[k] or pads[k + len(axes)]:
                return None
        return a

    return _mapped(cg, x, y, fwd, fwd)


def h_resize(cg, node: gs.Node) -> str | None:
    if "axes" in node.attrs:
        return "the axes attribute is not supported"
    x, y = node.inputs[0], node.outputs[0]
    if _consts_only_after(node, 1):
        return "roi, scales or sizes are not constant"
    scales_i, sizes_i = (1, None) if node.op == "Upsample" else (2, 3)
    _, scales = _const_input(node, scales_i)
    _, sizes = _const_input(node, sizes_i) if sizes_i else (False, None)
    if node.op == "Upsample" and scales is None and "scales" in node.attrs:
        scales = np.array(node.attrs["scales"])
    r = _same(cg, x, y)
    if r:
        return r
    ax = cg.axis_of(x)
    if sizes is not None and sizes.size:
        cg.member(Member("resize", node, y.name, sizes_i, ax, "attr"))
    elif scales is None or scales.size <= ax or scales[ax] != 1:
        return "scales the channel axis"
    return None


def _common_axis(cg, tensors: list[gs.Tensor]) -> int | str | None:
    axes = {cg.axis_of(t) for t in tensors} - {None}
    if not axes:
        return DEFER
    if len(axes) > 1:
        return "tensors carry channels on different axes"
    return axes.pop()


def h_concat(cg, node: gs.Node) -> str | None:
    xs, y = list(node.inputs), node.outputs[0]
    if any(constant_value(t) is not None for t in xs):
        return "concatenates a constant"
    ry = _rank(y)
    if ry is None:
        return "rank unknown"
    cat = int(node.attrs.get("axis", 0)) % ry
    ax = _common_axis(cg, xs + [y])
    if not isinstance(ax, int):
        return ax
    for t in xs + [y]:
        r = cg.declare(t, ax)
        if r:
            return r
    if cat != ax:
        for t in xs:
            r = cg.link_identity(t, y)
            if r:
                return r
        return None
    off = 0
    for t in xs:
        n = cg.size(t)
        cg.link(t, np.arange(n), y, np.arange(off, off + n))
        off += n
    return None if off == cg.size(y) else "sizes do not add up"


def h_split(cg, node: gs.Node) -> str | None:
    x, ys = node.inputs[0], [o for o in node.outputs]
    rx = _rank(x)
    if rx is None:
        return "rank unknown"
    ax = _common_axis(cg, [x] + ys)
    if not isinstance(ax, int):
        return ax
    for t in [x] + ys:
        r = cg.declare(t, ax)
        if r:
            return r
    if int(node.attrs.get("axis", 0)) % rx != ax:
        for t in ys:
            r = cg.link_identity(x, t)
            if r:
                return r
        return None
    present, v = _const_input(node, 1)
    if present and v is None:
        return "split sizes are not constant"
    off = 0
    for t in ys:
        n = cg.size(t)
        cg.link(x, np.arange(off, off + n), t, np.arange(n))
        off += n
    if off != cg.size(x):
        return "sizes do not add up"
    cg.member(Member("split", node, x.name, role="attr"))
    return None


def h_slice(cg, node: gs.Node) -> str | None:
    x, y = node.inputs[0], node.outputs[0]
    rx = _rank(x)
    if rx is None or _consts_only_after(node, 1):
        return "starts/ends/axes/steps are not constant"
    vals = [constant_value(node.inputs[i]) if len(node.inputs) > i and node.inputs[i].name else None
            for i in range(1, 5)]
    starts, ends = [int(v) for v in vals[0]], [int(v) for v in vals[1]]
    axes = [int(a) % rx for a in vals[2]] if vals[2] is not None else list(range(len(starts)))
    steps = [int(s) for s in vals[3]] if vals[3] is not None else [1] * len(starts)
    ax = _common_axis(cg, [x, y])
    if not isinstance(ax, int):
        return ax
    if ax not in axes:
        return _same(cg, x, y)
    k = axes.index(ax)
    if steps[k] != 1:
        return "strided slice along the channel axis"
    r = cg.declare(x, ax) or cg.declare(y, ax)
    if r:
        return r
    c = cg.size(x)
    s, e = starts[k], ends[k]
    s = min(max(s + c if s < 0 else s, 0), c)
    e = min(max(e + c if e < 0 else e, 0), c)
    if e - s != cg.size(y):
        return "slice size does not match the output"
    cg.link(x, np.arange(s, e), y, np.arange(e - s))
    cg.member(Member("slice_range", node, x.name, role="attr", extra={"k": k, "start": s, "end": e, "out": y.name}))
    return None


def _channel_map(in_shape: list[int], axis: int, out_shape: list[int]) -> tuple[int, np.ndarray] | None:
    """Output axis whose every index holds exactly one input channel, and that channel per index."""
    chan = (np.arange(int(np.prod(in_shape))) // int(np.prod(in_shape[axis + 1:]))) % in_shape[axis]
    o = chan.reshape(out_shape)
    for a in range(len(out_shape)):
        m = np.moveaxis(o, a, 0).reshape(out_shape[a], -1)
        if out_shape[a] >= in_shape[axis] and (m == m[:, :1]).all():
            return a, m[:, 0]
    return None


def h_reshape(cg, node: gs.Node) -> str | None:
    x, y = node.inputs[0], node.outputs[0]
    ax = cg.axis_of(x)
    if ax is None:
        return DEFER if cg.axis_of(y) is None else "the channel axis is not known on the input"
    if node.op == "Flatten":
        a = int(node.attrs.get("axis", 1)) % max(len(x.shape or [1]), 1)
        target = None
    else:
        target = constant_value(node.inputs[1])
        if target is None:
            return "dynamic reshape (the target shape is computed at run time)"
        target = [int(t) for t in target]
    shape = list(x.shape or [])
    dyn = [i for i, d in enumerate(shape) if not (isinstance(d, (int, np.integer)) and d >= 0)]
    if not shape or any(i != 0 for i in dyn) or ax == 0:
        return "input shape is not static (beyond the batch)"
    shape = [1 if i in dyn else int(d) for i, d in enumerate(shape)]
    if node.op == "Flatten":
        if ax < a:
            return "flatten merges the channel axis into the rows"
        out = [int(np.prod(shape[:a])), int(np.prod(shape[a:]))]
    else:
        if node.attrs.get("allowzero", 0) and 0 in target:
            return "allowzero"
        out = [shape[i] if t == 0 else t for i, t in enumerate(target)]
        if -1 in out:
            known = int(np.prod([d for d in out if d != -1]))
            out[out.index(-1)] = int(np.prod(shape)) // max(known, 1)
        if int(np.prod(out)) != int(np.prod(shape)):
            return "target shape does not match"
        if dyn and (target[0] not in (0, -1) or int(np.prod(out[1:])) != int(np.prod(shape[1:]))):
            return "reshape mixes the dynamic batch with other dimensions"
    found = _channel_map(shape, ax, out)
    if found is None:
        return "reshape mixes channels with other dimensions"
    oa, chans = found
    if target is not None and target[oa] == 0 and oa != ax:
        return "target copies a dimension that changes"
    r = cg.declare(y, oa)
    if r:
        return r
    for c in range(cg.size(x)):
        cg.link(x, np.array([c]), y, np.nonzero(chans == c)[0])
    if target is not None and target[oa] > 0:
        cg.member(Member("reshape", node, y.name, 1, oa, "attr"))
    return None


def h_transpose(cg, node: gs.Node) -> str | None:
    r = _rank(node.inputs[0])
    perm = [int(p) for p in node.attrs.get("perm", list(range(r or 0))[::-1])]
    return _mapped(cg, node.inputs[0], node.outputs[0], lambda a: perm.index(a), lambda a: perm[a])


def h_squeeze(cg, node: gs.Node) -> str | None:
    x, y = node.inputs[0], node.outputs[0]
    rx, ry = _rank(x), _rank(y)
    given, axes = _axes_arg(node)
    if rx is None or ry is None or (given and axes is None):
        return "axes or ranks unknown"
    if node.op == "Squeeze":
        gone = sorted(a % rx for a in axes) if axes else [i for i in range(rx) if _dim(x, i) == 1]
        keep = [i for i in range(rx) if i not in gone]
    else:
        new = sorted(a % ry for a in axes)
        keep = [i for i in range(ry) if i not in new]
        return _mapped(cg, x, y, lambda a: keep[a], lambda a: keep.index(a) if a in keep else None)
    return _mapped(cg, x, y, lambda a: keep.index(a) if a in keep else None, lambda a: keep[a])


def h_reduce(cg, node: gs.Node) -> str | None:
    x, y = node.inputs[0], node.outputs[0]
    rx = _rank(x)
    given, axes = _axes_arg(node)
    if rx is None or (given and axes is None):
        return "axes unknown"
    if not axes:
        return "reduces every axis"
    axes = sorted(a % rx for a in axes)
    if node.attrs.get("keepdims", 1):
        return _mapped(cg, x, y, lambda a: None if a in axes else a, lambda a: None if a in axes else a)
    keep = [i for i in range(rx) if i not in axes]
    return _mapped(cg, x, y, lambda a: keep.index(a) if a in keep else None, lambda a: keep[a])


def h_softmax(cg, node: gs.Node) -> str | None:
    x, y = node.inputs[0], node.outputs[0]
    rx = _rank(x)
    if rx is None or cg.opset < 13:
        return "rank unknown or opset < 13 (coerced 2-D softmax)"
    axis = int(node.attrs.get("axis", -1)) % rx
    return _mapped(cg, x, y, lambda a: None if a == axis else a, lambda a: None if a == axis else a)


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
