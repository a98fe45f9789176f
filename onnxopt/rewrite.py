"""Rewrites as data: a pattern (op types), a check that returns why it declines, and the rewrite itself.

A ``RewritePass`` applies its list of rewrites to every matching node of every graph, subgraphs included,
and records each decline in the context with its reason.

Two forms: ``Rewrite`` (``check`` returns None or the reason it declines; ``apply(node, graph, ctx)``) and
``MatchRewrite`` (``match`` returns what it matched, or a ``Declined`` with the reason; ``apply(matched, graph,
ctx)`` receives it, so nothing is matched twice).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs

from onnxopt.ir import Model, default_domain, iter_graphs
from onnxopt.pass_manager import Pass, PassContext, PassResult

Check = Callable[[gs.Node, gs.Graph, PassContext], "str | None"]
Apply = Callable[[gs.Node, gs.Graph, PassContext], None]


@dataclass(frozen=True)
class Declined:
    """What a ``MatchRewrite``'s match returns when the node does not match: the reason."""

    reason: str


@dataclass(frozen=True)
class Rewrite:
    """``check`` returns None when the rewrite applies, else the reason it declines."""

    name: str
    op_types: tuple[str, ...]
    check: Check
    apply: Apply


@dataclass(frozen=True)
class MatchRewrite:
    """``match(node, graph, ctx)`` returns the matched parts (any object) or ``Declined(reason)``;
    ``apply(matched, graph, ctx)`` rewrites with them."""

    name: str
    op_types: tuple[str, ...]
    match: Callable[[gs.Node, gs.Graph, PassContext], object]
    apply: Callable[[object, gs.Graph, PassContext], None]


def default_domain_match(match: Callable[[gs.Node, gs.Graph, PassContext], object]
                         ) -> Callable[[gs.Node, gs.Graph, PassContext], object]:
    """``ir.default_domain`` for a ``MatchRewrite``'s match: nodes of other domains are ``Declined`` with the
    same reason."""
    domain_check = default_domain(lambda node, graph, ctx: None)

    def wrapped(node: gs.Node, graph: gs.Graph, ctx: PassContext) -> object:
        reason = domain_check(node, graph, ctx)
        return Declined(reason) if reason is not None else match(node, graph, ctx)
    return wrapped


class RewritePass(Pass):
    """Base class: apply ``rewrites`` node by node over every graph; clean up once at the end."""

    rewrites: ClassVar[list[Rewrite | MatchRewrite]] = []

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        stats: dict[str, int] = {}
        for graph in list(iter_graphs(model.graph)):
            touched = False
            for node in list(graph.nodes):
                for rw in self.rewrites:
                    if node.op not in rw.op_types or not node.outputs:
                        continue
                    if isinstance(rw, MatchRewrite):
                        matched = rw.match(node, graph, ctx)
                        reason = matched.reason if isinstance(matched, Declined) else None
                    else:
                        matched, reason = node, rw.check(node, graph, ctx)
                    if reason is not None:
                        ctx.decline(self.name, f"{node.op} '{node.name}'", f"{rw.name}: {reason}")
                        continue
                    rw.apply(matched, graph, ctx)  # a Rewrite's matched is the node itself
                    stats[rw.name] = stats.get(rw.name, 0) + 1
                    touched = True
                    break
            if touched:
                graph.cleanup(remove_unused_graph_inputs=False, remove_unused_node_outputs=False).toposort()
        return PassResult(bool(stats), stats)
