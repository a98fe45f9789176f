"""FoldConvAffine: Conv followed by Mul/Add/Sub/Div by a per-output-channel constant, folded into the Conv."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir import constant_value
from onnxopt.pass_manager import register_pass
from onnxopt.passes.fold_batchnorm import rewrite_weighted, weighted_producer
from onnxopt.rewrite import Declined, MatchRewrite, RewritePass, default_domain_match

CONV_OPS = ("Conv", "ConvTranspose")


@dataclass(frozen=True)
class ConvAffineMatch:
    """The Mul/Add/Sub/Div node, the conv it reads and its constant as a float64 vector over output channels."""

    node: gs.Node
    conv: gs.Node
    per_channel: np.ndarray


def _conv_operand(node: gs.Node, graph: gs.Graph) -> tuple[tuple | None, str | None]:
    """(conv, constant, constant index) when the node is Conv (op) constant, else (None, reason)."""
    if len(node.inputs) != 2:
        return None, "not a binary node"
    commutative = node.op in ("Mul", "Add")
    for ci in ([1, 0] if commutative else [1]):
        c = constant_value(node.inputs[ci])
        if c is None:
            continue
        conv, reason = weighted_producer(node.inputs[1 - ci], graph)
        if conv is None:
            return None, reason
        if conv.op not in CONV_OPS:
            return None, f"input is produced by a {conv.op}, not a Conv"
        return (conv, c, ci), None
    return None, "no operand is a constant" if commutative else "the divisor/subtrahend is not a constant"


def _per_channel(conv: gs.Node, c: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """The constant as a vector over output channels (float64), if it only varies along axis 1 of the output."""
    w = constant_value(conv.inputs[1])
    rank = w.ndim
    m = w.shape[0] if conv.op == "Conv" else w.shape[1] * int(conv.attrs.get("group", 1))
    if c.dtype != w.dtype:
        return None, "constant dtype differs from the weight's"
    if c.ndim > rank:
        return None, "constant has more dims than the output"
    shape = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, m):
        return None, "constant is not per output channel"
    v = c.astype(np.float64).reshape(-1)
    return np.broadcast_to(v, (m,)).copy(), None


def _match(node: gs.Node, graph: gs.Graph, ctx) -> ConvAffineMatch | Declined:
    """The conv and per-channel constant when the node folds into the conv, else the reason it declines."""
    found, reason = _conv_operand(node, graph)
    if found is None:
        return Declined(reason)
    conv, c, _ = found
    v, reason = _per_channel(conv, c)
    if v is None:
        return Declined(reason)
    if node.op == "Div" and (np.any(v == 0) or not np.all(np.isfinite(v))):
        return Declined("divisor has zeros or non-finite values")
    if node.op == "Mul" and not np.all(np.isfinite(v)):
        return Declined("factor has non-finite values")
    return ConvAffineMatch(node, conv, v)


def _apply(m: ConvAffineMatch, graph: gs.Graph, ctx) -> None:
    node, conv, v = m.node, m.conv, m.per_channel
    zeros = np.zeros_like(v)
    if node.op == "Mul":
        rewrite_weighted(conv, graph, v, zeros)
    elif node.op == "Div":
        rewrite_weighted(conv, graph, 1.0 / v, zeros)
    elif node.op == "Add":
        rewrite_weighted(conv, graph, None, v)
    else:
        rewrite_weighted(conv, graph, None, -v)
    out = node.outputs[0]
    node.outputs.clear()
    node.inputs.clear()
    conv.outputs[0] = out


@register_pass
class FoldConvAffine(RewritePass):
    """Fold Conv/ConvTranspose -> Mul/Add/Sub/Div by a per-output-channel constant into the conv's weight and bias.

    Rewrites: conv * c (either side) scales the weight per output channel and the bias; conv / c the same with
    1/c; conv + c (either side) and conv - c shift the bias (a bias input is added when absent). c may be a
    scalar, [1], [C,1,1], [1,C,1,1] (anything that only varies along the output's channel axis; not [C], which
    numpy broadcasting applies to the last axis).
    Declines: the other operand is not a constant; the conv's output has other consumers or is a graph output;
    the conv is in another graph; its weight or bias is not a float constant; the constant varies along another
    axis, has more dims than the output or another dtype; c - conv or c / conv; division by zero or
    non-finite constants; non-default domains.
    """

    rewrites = [MatchRewrite("conv_affine", ("Mul", "Add", "Sub", "Div"), default_domain_match(_match), _apply)]
