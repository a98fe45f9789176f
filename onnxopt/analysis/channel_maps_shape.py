"""Channel-map handlers of layout ops: pad, resize, concat, split, slice, reshape/flatten, transpose,
squeeze/unsqueeze, reductions and softmax.

They follow the handler contract of ``channel_maps`` (which registers them in ``HANDLERS``): each tracks where the
channel axis goes through the op and which channel indices of input and output are the same channel.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.analysis.channel_maps_base import (
    DEFER,
    Member,
    _const_input,
    _consts_only_after,
    _dim,
    _mapped,
    _rank,
    _same,
)
from onnxopt.ir import constant_value


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
