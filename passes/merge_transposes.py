"""MergeTransposes: compose Transpose -> Transpose into one Transpose (or none when the composition is identity)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxopt.ir import bypass_node, bypass_reason, default_domain, producer, shape_of
from onnxopt.pass_manager import register_pass
from onnxopt.rewrite import Rewrite, RewritePass


def _perm(node: gs.Node) -> list[int] | None:
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(p) for p in perm]
    s = shape_of(node.inputs[0])
    return None if s is None else list(reversed(range(len(s))))


def _inner(node: gs.Node) -> gs.Node | None:
    inner = producer(node.inputs[0])
    if inner is None or inner.op != "Transpose" or inner.domain not in (None, "", "ai.onnx"):
        return None
    return inner


def _check(node, graph, ctx):
    inner = _inner(node)
    if inner is None:
        return "input is not produced by a Transpose"
    p1, p2 = _perm(inner), _perm(node)
    if p1 is None or p2 is None:
        return "a perm is absent and the rank unknown"
    if len(p1) != len(p2):
        return "perms of different lengths"
    return None


def _apply(node, graph, ctx):
    inner = _inner(node)
    p1, p2 = _perm(inner), _perm(node)
    composed = [p1[i] for i in p2]
    node.inputs[0] = inner.inputs[0]
    node.attrs["perm"] = composed
    if composed == list(range(len(composed))) and bypass_reason(node, graph) is None:
        bypass_node(node, graph)


@register_pass
class MergeTransposes(RewritePass):
    """Compose Transpose(p1) -> Transpose(p2) into Transpose(p1[p2]); remove it when that is the identity.

    Rewrites: the outer Transpose reads the inner one's input with the composed perm (the inner one stays if it
    has other consumers, and disappears otherwise); an identity composition is bypassed.
    Declines: a perm is absent and the rank is unknown; perms of different lengths; non-default domain.
    When the identity composition writes a graph output whose name the input cannot take, one Transpose with
    the identity perm is kept (one node instead of two).
    """

    rewrites = [Rewrite("transpose_transpose", ("Transpose",), default_domain(_check), _apply)]
