"""Quantizable regions of a model, and the default formats the plan starts from (with the reason for each float one).

A region is what the plan gives one format (``onnxopt.plan.Region``): every op that can carry Q/DQ in the scheme
(``qdq_placement.placement_reason``) is in exactly one. Ops that must share one format are merged (connected
components of a networkx graph whose edges are "must agree"): today a Relu/Clip that is the only reader of the op
before it joins that op's region, since the two share one scale and the runtime fuses them (a Conv and its Relu are
one region, "a weighted op with its activation inputs"). Tensors read by several regions (a Concat's inputs, a
residual Add's inputs) are not a reason to merge: each region puts Q/DQ on the tensors it touches, and the writer
gives tensors that must share a scale one scale.

``default_formats`` is the first plan: int8 everywhere, except where a rule says float, and then why:

- the user's exclusions (``exclude_nodes``, ``exclude_ops``, ``scheme.exclude_nodes``);
- the structural and statistical rules of ``quant_regions`` (normalizations written out, GELU, op types the scheme
  keeps float, the recurrent state's path, Concats of very different ranges, long-tailed tensors);
- an Add/Mul with a constant input (a bias or scale the runtime folds into the op before it, in float);
- a region whose tensors calibration never saw (an If branch not taken);
- a region whose output no quantized region reads (through pass-through ops), unless it holds a Conv/Gemm/MatMul
  (with a constant weight or two activations), is a Relu/Clip right after a quantized weighted op, or is a region
  the target put there for fusion (``role`` "residual-skip"): int8 there only adds Q/DQ work and error.

Nodes that cannot be quantized at all are returned in ``RegionGraph.declined`` with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx
import onnx_graphsurgeon as gs

from onnxopt.ir import Model, constant_value, iter_graphs, producer
from onnxopt.plan import FLOAT, INT8, Region, RegionPlan, has_activation_qdq
from onnxopt.quant_scheme import QuantScheme

from .qdq_placement import (
    FUSED_ACTIVATIONS,
    PASS_THROUGH,
    WEIGHTED_OPS,
    activations,
    elements,
    placement_reason,
    weighted_macs,
)
from .quant_regions import (
    DEFAULT_CONCAT_FACTOR,
    DEFAULT_LONG_TAIL_FACTOR,
    float_regions,
    long_tailed_tensors,
    recurrent_state_regions,
    wide_range_concats,
)

NEVER_SEEN = "calibration never saw its tensors (a branch not taken?)"
CONSTANT_INPUT = "one input is a constant (folded into the op before it in float)"
UNREAD = "no quantized op reads its output"


@dataclass(frozen=True)
class TensorUse:
    """Who writes and reads one region tensor: region ids, None for an op outside every region or a graph output."""

    elements: int | None
    producer: str | None
    readers: tuple[str | None, ...]


@dataclass
class RegionGraph:
    """The regions of one model state, with their nodes (in graph order) and the uses of their tensors."""

    regions: list[Region]
    members: dict[str, list[gs.Node]]
    node_region: dict[int, str]
    tensors: dict[str, TensorUse] = field(default_factory=dict)
    declined: list[tuple[gs.Node, str]] = field(default_factory=list)
    graphs: dict[str, gs.Graph] = field(default_factory=dict)  # region id -> the graph its nodes live in

    def region(self, rid: str) -> Region:
        return next(r for r in self.regions if r.id == rid)

    def replace_region(self, region: Region) -> None:
        """Swap in a changed region (a target narrowing its tensors), keeping the order."""
        self.regions = [region if r.id == region.id else r for r in self.regions]


def node_keys(graph: gs.Graph) -> dict[int, str]:
    """A stable, readable key per node of the model: its name when unique, else ``Op:first_output``."""
    nodes = [n for g in iter_graphs(graph) for n in g.nodes]
    count: dict[str, int] = {}
    for n in nodes:
        if n.name:
            count[n.name] = count.get(n.name, 0) + 1
    keys: dict[int, str] = {}
    for i, n in enumerate(nodes):
        if n.name and count[n.name] == 1:
            keys[id(n)] = n.name
        elif n.outputs and n.outputs[0].name:
            keys[id(n)] = f"{n.op}:{n.outputs[0].name}"
        else:
            keys[id(n)] = f"{n.op}#{i}"
    return keys


def build_regions(model: Model, scheme: QuantScheme, shapes: Mapping[str, Sequence[Any]] | None = None
                  ) -> RegionGraph:
    """Every op of ``scheme`` that can carry Q/DQ, grouped into regions (see the module docstring)."""
    keys = node_keys(model.graph)
    merge = nx.Graph()
    where: dict[int, gs.Graph] = {}
    order: dict[int, int] = {}
    by_id: dict[int, gs.Node] = {}
    declined: list[tuple[gs.Node, str]] = []
    for g in iter_graphs(model.graph):
        for node in g.nodes:
            reason = placement_reason(node, scheme)
            if reason is None:
                merge.add_node(id(node))
                where[id(node)], order[id(node)], by_id[id(node)] = g, len(order), node
            elif reason != "not an op of the scheme":
                declined.append((node, reason))
    for nid in list(merge.nodes):
        node = by_id[nid]
        if node.op not in FUSED_ACTIVATIONS:
            continue
        src = node.inputs[0]
        prod = producer(src)
        if (prod is not None and id(prod) in merge and len(src.outputs) == 1
                and not any(t is src for t in where[nid].outputs)):
            merge.add_edge(nid, id(prod))
    regions: list[Region] = []
    members: dict[str, list[gs.Node]] = {}
    node_region: dict[int, str] = {}
    graphs: dict[str, gs.Graph] = {}
    for comp in sorted(nx.connected_components(merge), key=lambda c: min(order[i] for i in c)):
        nodes = [by_id[i] for i in sorted(comp, key=order.__getitem__)]
        rid = keys[id(nodes[0])]
        tensors: list[str] = []
        for n in nodes:
            tensors += [t.name for t in activations(n, scheme) if t.name not in tensors]
        macs = [m for n in nodes if n.op in WEIGHTED_OPS and (m := weighted_macs(n, shapes)) is not None]
        weights = sum(int(w.size) for n in nodes if n.op in WEIGHTED_OPS and len(n.inputs) > 1
                      and (w := constant_value(n.inputs[1])) is not None)
        regions.append(Region(rid, tuple(keys[id(n)] for n in nodes), tuple(n.op for n in nodes), tuple(tensors),
                              sum(macs) if macs else None, weights))
        members[rid] = nodes
        graphs[rid] = where[id(nodes[0])]
        for n in nodes:
            node_region[id(n)] = rid
    rg = RegionGraph(regions, members, node_region, declined=declined, graphs=graphs)
    rg.tensors = tensor_uses(rg, shapes)
    return rg


def tensor_uses(rg: RegionGraph, shapes: Mapping[str, Sequence[Any]] | None = None) -> dict[str, TensorUse]:
    """Writer and readers (as regions) of every tensor a region puts Q/DQ on."""
    found: dict[str, TensorUse] = {}
    for r in rg.regions:
        g = rg.graphs[r.id]
        tmap = {t.name: t for n in rg.members[r.id] for t in [*n.inputs, *n.outputs]}
        for name in r.tensors:
            t = tmap.get(name)
            if t is None or name in found:
                continue
            p = producer(t)
            readers = [rg.node_region.get(id(c)) for c in t.outputs]
            if any(o is t for o in g.outputs):
                readers.append(None)
            found[name] = TensorUse(elements(t, shapes), None if p is None else rg.node_region.get(id(p)),
                                    tuple(readers))
    return found


def _reads_quantized(t: gs.Tensor, quantized: set[int], skip: set[int], depth: int = 0) -> bool:
    for c in t.outputs:
        if id(c) in quantized and id(c) not in skip:
            return True
        if c.op in PASS_THROUGH and depth < 8 and c.outputs and _reads_quantized(c.outputs[0], quantized, skip,
                                                                                depth + 1):
            return True
    return False


def drop_unread(rg: RegionGraph, formats: Mapping[str, str]) -> dict[str, str]:
    """``{region: UNREAD}`` for the quantized regions whose int8 only adds work (see the module docstring),
    repeated until none is left, since dropping one can leave the region before it unread."""
    formats = dict(formats)
    dropped: dict[str, str] = {}
    while True:
        qnodes = {id(n) for rid, f in formats.items() if has_activation_qdq(f) for n in rg.members[rid]}
        drop = []
        for r in rg.regions:
            if not has_activation_qdq(formats[r.id]) or r.role != "op" or any(op in WEIGHTED_OPS for op in r.op_types):
                continue
            nodes = rg.members[r.id]
            if len(nodes) == 1 and nodes[0].op in FUSED_ACTIVATIONS:
                p = producer(nodes[0].inputs[0])
                if p is not None and p.op in WEIGHTED_OPS and id(p) in qnodes:
                    continue  # Relu/Clip right after a quantized weighted op: fused with it
            mine = {id(n) for n in nodes}
            if not any(_reads_quantized(n.outputs[0], qnodes, mine) for n in nodes if n.outputs):
                drop.append(r.id)
        if not drop:
            return dropped
        for rid in drop:
            formats[rid] = FLOAT
            dropped[rid] = UNREAD


def default_formats(rg: RegionGraph, model: Model, scheme: QuantScheme, options: Mapping[str, Any],
                    stats: Mapping[str, Any] | None = None, fixed: Mapping[str, RegionPlan] | None = None
                    ) -> dict[str, RegionPlan]:
    """int8 for every region but those a rule keeps float (see the module docstring). ``stats``: calibration
    ``TensorRange``s by tensor (None: the statistical rules are skipped); ``fixed``: choices a target already made."""
    excl_ops = set(options.get("exclude_ops") or ())
    excl_nodes = set(options.get("exclude_nodes") or ()) | set(scheme.exclude_nodes)
    keep = set(scheme.keep_float) - set(scheme.op_types)
    reasons: dict[int, str] = dict(recurrent_state_regions(model.graph))
    ranges = None if stats is None else {k: (v.threshold_low, v.threshold_high) for k, v in stats.items()}
    long_tail = {} if stats is None else long_tailed_tensors(
        stats, float(options.get("long_tail_factor", DEFAULT_LONG_TAIL_FACTOR)))
    factor = float(options.get("concat_range_factor", DEFAULT_CONCAT_FACTOR))
    for g in iter_graphs(model.graph):
        for k, v in float_regions(g, keep).items():
            reasons.setdefault(k, v)
        if ranges is not None:
            for k, v in wide_range_concats(g, ranges, factor).items():
                reasons.setdefault(k, v)
    choices: dict[str, RegionPlan] = {}
    for r in rg.regions:
        if fixed and r.id in fixed:
            choices[r.id] = fixed[r.id]
            continue
        why = None
        for n in rg.members[r.id]:
            why = (("excluded by name" if n.name and n.name in excl_nodes else None)
                   or ("op type excluded" if n.op in excl_ops else None)
                   or reasons.get(id(n))
                   or next((long_tail[t.name] for t in activations(n, scheme) if t.name in long_tail), None)
                   or (CONSTANT_INPUT if n.op in ("Add", "Mul") and any(constant_value(t) is not None
                                                                      for t in n.inputs) else None))
            if why:
                break
        if why is None and ranges is not None and any(t not in ranges for t in r.tensors):
            why = NEVER_SEEN
        choices[r.id] = RegionPlan(FLOAT, why) if why else RegionPlan(INT8, "int8 by default")
    unread = drop_unread(rg, {rid: c.format for rid, c in choices.items()})
    for rid in unread:
        if not (fixed and rid in fixed):
            choices[rid] = replace(choices[rid], format=FLOAT, reason=UNREAD)
    return choices


def calibration_tensors(rg: RegionGraph, model: Model) -> list[str]:
    """Tensors whose ranges the plan and the writer need: every region tensor and every Concat input."""
    names: list[str] = []
    seen: set[str] = set()
    known = {t.name for t in model.graph.inputs} | {o.name for g in iter_graphs(model.graph) for n in g.nodes
                                                    for o in n.outputs}
    extra: Iterable[str] = (t.name for g in iter_graphs(model.graph) for n in g.nodes if n.op == "Concat"
                            for t in n.inputs)
    for name in [*(t for r in rg.regions for t in r.tensors), *extra]:
        if name in known and name not in seen:
            seen.add(name)
            names.append(name)
    return sorted(names)


__all__ = ["CONSTANT_INPUT", "NEVER_SEEN", "UNREAD", "RegionGraph", "TensorUse", "build_regions",
           "calibration_tensors", "default_formats", "drop_unread", "node_keys", "tensor_uses"]
