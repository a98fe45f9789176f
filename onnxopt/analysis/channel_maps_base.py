"""The vocabulary every channel-map handler shares (see ``channel_maps`` for the handler contract).

``Member`` records a constant or attribute to edit when channels go, ``DEFER`` is what a handler returns while no
tensor's channel axis is known yet, and the helpers read ranks, dimensions and constant inputs, and link a tensor to
another whose channel axis moves (``_mapped``) or stays put (``_same``).
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
