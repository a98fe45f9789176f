"""MergeTransposes: compose Transpose -> Transpose into one Transpose (or none when the composition is identity)."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxopt.ir import bypass_node, bypass_reason, producer, shape_of
from onnxopt.pass_manager import register_pass
from onnxopt.rewrite import Declined, MatchRewrite, RewritePass, default_domain_match


@dataclass(frozen=True)
class TransposePair:
    """The outer Transpose, the inner one it reads, and the composed perm p1[p2]."""

    outer: gs.Node
    inner: gs.Node
    perm: tuple[int, ...]


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


def _match(node: gs.Node, graph: gs.Graph, ctx) -> TransposePair | Declined:
    """The pair and its composed perm when the input is another Transpose's, else the reason it declines."""
    inner = _inner(node)
    if inner is None:
        return Declined("input is not produced by a Transpose")
    p1, p2 = _perm(inner), _perm(node)
    if p1 is None or p2 is None:
        return Declined("a perm is absent and the rank unknown")
    if len(p1) != len(p2):
        return Declined("perms of different lengths")
    return TransposePair(node, inner, tuple(p1[i] for i in p2))


def _apply(m: TransposePair, graph: gs.Graph, ctx) -> None:
    node, composed = m.outer, list(m.perm)
    node.inputs[0] = m.inner.inputs[0]
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

    rewrites = [MatchRewrite("transpose_transpose", ("Transpose",), default_domain_match(_match), _apply)]
