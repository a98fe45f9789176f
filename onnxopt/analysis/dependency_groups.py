"""Dependency groups for channel pruning: which channels must be removed together, and which may not be.

Every channel of every tracked tensor is an *atom*; the per-op index maps of ``channel_maps`` union the atoms that are
the same channel (a residual Add joins its branches index for index, a Concat places its inputs at offsets, a
Flatten maps one channel to its block of features, a depthwise Conv ties each output to its input...). A connected
component of atoms is one removable channel; components that touch the same tensors form a *group* (what a user
calls "the output channels of conv_3 and everything tied to them").

A component is locked, with the reason kept, when it touches a graph input or output, a tensor used inside a
subgraph, a tensor of an op without an index map (or whose map declined: dynamic reshape, non-constant weights...),
a node the user excluded, or when no weight creates it. Analysis works on the main graph; ops in subgraphs are not
pruned (their outer-scope tensors are locked).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.analysis.channel_maps import DEFER, HANDLERS, Member
from onnxopt.ir import Model, iter_graphs, subgraphs_of

log = logging.getLogger(__name__)


class ChannelGraph:
    """Union-find over channel atoms, the channel axis of each tracked tensor, locks and members."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.opset = int(graph.opset)
        self.axis: dict[str, int] = {}
        self._size: dict[str, int] = {}
        self.base: dict[str, int] = {}
        self.parent: list[int] = []
        self.owner: list[str] = []
        self.locks: dict[str, str] = {}
        self.members: list[Member] = []
        self.sources: set[str] = set()
        self.tensors: dict[str, gs.Tensor] = {}

    # -- declarations used by the handlers
    def axis_of(self, t: gs.Tensor) -> int | None:
        return self.axis.get(t.name)

    def size(self, t: gs.Tensor | str) -> int:
        return self._size[t if isinstance(t, str) else t.name]

    def declare(self, t: gs.Tensor, axis: int) -> str | None:
        """Track ``t`` with channels on ``axis``; returns the reason it cannot, or None."""
        if t.name in self.axis:
            if self.axis[t.name] == axis:
                return None
            return f"'{t.name}' carries channels on axes {self.axis[t.name]} and {axis}"
        if isinstance(t, gs.Constant):
            return f"'{t.name}' is a constant"
        if t.shape is None or axis < 0 or axis >= len(t.shape):
            return f"shape of '{t.name}' unknown"
        c = t.shape[axis]
        if not isinstance(c, (int, np.integer)) or c <= 0:
            return f"channel dimension of '{t.name}' is dynamic"
        self.axis[t.name], self._size[t.name], self.base[t.name] = axis, int(c), len(self.parent)
        self.parent.extend(range(len(self.parent), len(self.parent) + int(c)))
        self.owner.extend([t.name] * int(c))
        self.tensors[t.name] = t
        return None

    def _find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def link(self, x: gs.Tensor, ix: np.ndarray, y: gs.Tensor, iy: np.ndarray) -> None:
        """Union x[ix[k]] with y[iy[k]]; a single ``ix`` is joined to every ``iy`` (one channel -> a block)."""
        bx, by = self.base[x.name], self.base[y.name]
        if len(ix) == 1:
            for b in iy:
                self._union(bx + int(ix[0]), by + int(b))
            return
        for a, b in zip(ix, iy, strict=True):
            self._union(bx + int(a), by + int(b))

    def link_many(self, parts: list[tuple[gs.Tensor, np.ndarray]]) -> None:
        first = self.base[parts[0][0].name] + int(parts[0][1][0])
        for t, idx in parts:
            for i in idx:
                self._union(first, self.base[t.name] + int(i))

    def link_identity(self, x: gs.Tensor, y: gs.Tensor) -> str | None:
        if self.size(x) != self.size(y):
            return f"channel counts of '{x.name}' and '{y.name}' differ"
        n = self.size(x)
        self.link(x, np.arange(n), y, np.arange(n))
        return None

    def lock(self, t: gs.Tensor | str, reason: str) -> None:
        name = t if isinstance(t, str) else t.name
        if name and name not in self.locks:
            self.locks[name] = reason

    def lock_node(self, node: gs.Node, reason: str) -> None:
        for t in list(node.inputs) + list(node.outputs):
            if not isinstance(t, gs.Constant):
                self.lock(t, reason)

    def member(self, m: Member) -> None:
        self.members.append(m)

    def source(self, t: gs.Tensor) -> None:
        self.sources.add(t.name)


@dataclass
class Group:
    """Channels removed together. ``channels[k]`` maps tensor name -> local channel indices of component k."""

    id: int
    tensors: list[str]
    channels: list[dict[str, np.ndarray]]
    members: list[Member] = field(default_factory=list)
    locked: str | None = None

    @property
    def size(self) -> int:
        return len(self.channels)

    @property
    def producers(self) -> list[str]:
        return sorted({m.node.name for m in self.members if m.role == "weight_out"})

    @property
    def consumers(self) -> list[str]:
        return sorted({m.node.name for m in self.members if m.role == "weight_in"})

    @property
    def name(self) -> str:
        names = self.producers or self.tensors[:1]
        return names[0] + (f" (+{len(names) - 1})" if len(names) > 1 else "")


@dataclass
class Analysis:
    graph: gs.Graph
    cg: ChannelGraph
    groups: list[Group]

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.locked is None]

    @property
    def locked(self) -> list[Group]:
        return [g for g in self.groups if g.locked is not None]


def _lock_boundaries(cg: ChannelGraph, graph: gs.Graph, exclude: set[str]) -> None:
    for t in graph.inputs:
        cg.lock(t, f"reaches graph input '{t.name}'")
    for t in graph.outputs:
        cg.lock(t, f"reaches graph output '{t.name}'")
    for node in graph.nodes:
        if node.name in exclude:
            cg.lock_node(node, f"node '{node.name}' is excluded (--prune-exclude)")
        for sub in subgraphs_of(node):
            for g in iter_graphs(sub):
                for n in g.nodes:
                    for t in n.inputs:
                        cg.lock(t, f"used inside a subgraph of '{node.name}'")


def build_channel_graph(graph: gs.Graph, exclude: set[str] | None = None) -> ChannelGraph:
    """Run every node's index map (repeating those that wait for an axis) and lock what cannot be pruned."""
    cg = ChannelGraph(graph)
    _lock_boundaries(cg, graph, set(exclude or ()))
    pending = list(graph.nodes)
    while pending:
        deferred, progress = [], False
        for node in pending:
            handler = HANDLERS.get(node.op) if (node.domain or "") in ("", "ai.onnx") else None
            if handler is None:
                cg.lock_node(node, f"{node.op} '{node.name}' has no channel index map")
                continue
            reason = handler(cg, node)
            if reason == DEFER:
                deferred.append(node)
                continue
            progress = True
            if reason:
                cg.lock_node(node, f"{node.op} '{node.name}': {reason}")
        if not progress:
            for node in deferred:
                cg.lock_node(node, f"{node.op} '{node.name}': channel axis could not be determined")
            break
        pending = deferred
    return cg


def _groups(cg: ChannelGraph) -> list[Group]:
    roots = np.array([cg._find(a) for a in range(len(cg.parent))], dtype=np.int64)
    comps: dict[int, dict[str, list[int]]] = {}
    for name, base in cg.base.items():
        for i in range(cg.size(name)):
            comps.setdefault(int(roots[base + i]), {}).setdefault(name, []).append(i)
    by_sig: dict[tuple[str, ...], list[dict[str, list[int]]]] = {}
    for comp in sorted(comps.values(), key=lambda c: min(cg.base[t] + i[0] for t, i in c.items())):
        by_sig.setdefault(tuple(sorted(comp)), []).append(comp)
    groups = []
    for sig, chans in by_sig.items():
        g = Group(len(groups), list(sig), [{t: np.array(i) for t, i in c.items()} for c in chans])
        g.members = [m for m in cg.members if m.tensor in sig]
        locks = [cg.locks[t] for t in sig if t in cg.locks]
        if locks:
            g.locked = locks[0]
        elif not any(t in cg.sources for t in sig):
            g.locked = "no weight creates these channels"
        groups.append(g)
    return groups


def analyze(model: Model, exclude: set[str] | None = None, infer: bool = True) -> Analysis:
    """Dependency groups of ``model``'s main graph. With ``infer``, shapes are inferred first (model updated)."""
    if infer:
        model.replace_with(onnx.shape_inference.infer_shapes(model.to_onnx(), data_prop=True))
    cg = build_channel_graph(model.graph, exclude)
    groups = _groups(cg)
    for g in groups:
        if g.locked:
            log.debug("channels of %s locked: %s", g.name, g.locked)
    return Analysis(model.graph, cg, groups)


def describe_groups(model_proto: onnx.ModelProto | Model, exclude: set[str] | None = None) -> dict:
    """Groups found and why the others are locked, as data and as ``lines`` for ``onnxopt inspect --prunable``."""
    model = model_proto if isinstance(model_proto, Model) else Model.from_onnx(model_proto)
    a = analyze(model, exclude)
    groups = [{"id": g.id, "name": g.name, "channels": g.size, "tensors": g.tensors, "producers": g.producers,
               "consumers": g.consumers, "prunable": g.locked is None, "reason": g.locked} for g in a.groups]
    prunable = [g for g in groups if g["prunable"]]
    locked = [g for g in groups if not g["prunable"]]
    lines = [f"prunable groups: {len(prunable)} ({sum(g['channels'] for g in prunable)} channels); "
             f"locked: {len(locked)} ({sum(g['channels'] for g in locked)} channels)"]
    for g in prunable:
        cons = ", ".join(g["consumers"][:4]) + (" ..." if len(g["consumers"]) > 4 else "")
        lines.append(f"  group {g['id']}: {g['channels']} channels of {', '.join(g['producers'])}"
                     f" -> {cons or 'no weighted consumer'} ({len(g['tensors'])} tensors)")
    reasons: dict[str, list[str]] = {}
    for g in locked:
        reasons.setdefault(g["reason"], []).append(f"{g['name']} [{g['channels']}]")
    lines.append("locked:")
    for reason, names in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  {reason}: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}")
    return {"groups": groups, "lines": lines}
