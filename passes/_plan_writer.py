"""Writes the Q/DQ nodes a precision plan asks for, exactly: the writer decides no format.

Given the regions (``analysis.regions.RegionGraph``) and each region's format, for every graph (regions in a
weight-only format are left to the weight quantizer, ``passes/quantize_weights.py``):

- the tensors of every quantized region get one QuantizeLinear -> DequantizeLinear pair (readers of the tensor in
  the same graph read the DequantizeLinear; a graph output keeps its name); its dtype is the scheme's activation type
  for ``int8`` regions, int16 (symmetric) where any quantized region touching it is ``a16w8``;
- scales are shared where an op must not change them: Concat inputs and output (``scheme.share_concat_scale``),
  MaxPool in and out, a Relu/Clip right after a quantized op (its only reader) takes its output's range for both;
  pass-through ops (Reshape, Transpose, Flatten, ...) give their output the input's scale when a quantized op reads
  it; a Relu / Clip(0, hi) whose shared zero point is the type's minimum is dropped (the QuantizeLinear clamps);
- a "residual-skip" region (TensorRT's residual Add) puts Q/DQ on its shortcut input only, its Add stays float;
- weighted ops of quantized regions get int8 weights (and int32 biases) through ``QDQWriter.weights``;
- ranges come from ``ranges`` (tensor -> (low, high)); a tensor without one is declined and left float;
- the recurrent state (``quant_regions.recurrent_state_regions``) leaves the graph float: only its quantized readers
  read the Q/DQ copy, and pass-through ops on its path do not propagate scales. Pass-through ops the user excluded
  (``exclude_nodes``/``exclude_ops``) do not either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.analysis.qdq_placement import FUSED_ACTIVATIONS, PASS_THROUGH, SAME_SCALE, is_float
from onnxopt.analysis.quant_regions import recurrent_state_regions
from onnxopt.analysis.regions import RegionGraph
from onnxopt.ir import constant_value, iter_graphs, producer
from onnxopt.pass_manager import PassContext
from onnxopt.plan import format_spec, has_activation_qdq
from onnxopt.quant_scheme import QuantScheme, TensorQuant

from ._qdq import WEIGHTED, QDQWriter, activation_params


class ScaleGroups:
    """Union-find over tensor names; a member marked ``defer`` takes the group's range, gives none."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.defer: set[str] = set()

    def find(self, a: str) -> str:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


@dataclass
class Placement:
    """What the writer puts in one graph: the quantized nodes, the tensors with Q/DQ, their scale groups and type."""

    qnodes: list[gs.Node] = field(default_factory=list)
    tensors: dict[str, gs.Tensor] = field(default_factory=dict)
    groups: ScaleGroups = field(default_factory=ScaleGroups)
    quant: dict[str, TensorQuant] = field(default_factory=dict)


def _activation_quant(scheme: QuantScheme, fmt: str) -> TensorQuant:
    dtype = format_spec(fmt).activations
    if dtype == "int16":
        return TensorQuant(dtype="int16", symmetric=True)
    return scheme.activations


def place(graph: gs.Graph, rg: RegionGraph, formats: Mapping[str, str], scheme: QuantScheme,
          options: Mapping[str, Any], state: Mapping[int, str]) -> Placement:
    """The Q/DQ placement of ``graph`` for these formats (the module docstring lists the rules)."""
    p = Placement()
    quantized = [r for r in rg.regions if has_activation_qdq(formats[r.id]) and rg.graphs[r.id] is graph]
    # a residual-skip region (TensorRT) only puts Q/DQ on its shortcut: its Add is not a quantized op
    p.qnodes = [n for n in graph.nodes if rg.node_region.get(id(n)) in {r.id for r in quantized if r.role == "op"}]
    qids = {id(n) for n in p.qnodes}
    tmap = {t.name: t for n in graph.nodes for t in [*n.inputs, *n.outputs] if t.name}

    def add(t: gs.Tensor, q: TensorQuant) -> bool:
        if constant_value(t) is not None or not is_float(t) or not t.name:
            return False
        p.tensors[t.name] = t
        p.groups.find(t.name)
        old = p.quant.get(t.name)
        p.quant[t.name] = q if old is None or q.qrange[1] - q.qrange[0] > old.qrange[1] - old.qrange[0] else old
        return True

    for r in quantized:
        q = _activation_quant(scheme, formats[r.id])
        for name in r.tensors:
            if name in tmap:
                add(tmap[name], q)
    for node in p.qnodes:  # scale sharing among quantized ops
        out = node.outputs[0].name
        if out not in p.tensors:
            continue
        if node.op == "Concat" and scheme.share_concat_scale:
            for t in node.inputs:
                if t.name in p.tensors:
                    p.groups.union(out, t.name)
        elif node.op in SAME_SCALE and node.inputs[0].name in p.tensors:
            p.groups.union(node.inputs[0].name, out)
        elif node.op in FUSED_ACTIVATIONS:
            src = node.inputs[0]
            prod = producer(src)
            if (src.name in p.tensors and prod is not None and id(prod) in qids and len(src.outputs) == 1
                    and not any(t is src for t in graph.outputs)):
                p.groups.union(out, src.name)
                p.groups.defer.add(src.name)
    excl_ops = set(options.get("exclude_ops") or ())
    excl_nodes = set(options.get("exclude_nodes") or ()) | set(scheme.exclude_nodes)
    order = [n for n in graph.nodes if n.op in PASS_THROUGH and id(n) not in qids and id(n) not in state
             and n.op not in excl_ops and n.name not in excl_nodes]
    wanted: set[str] = set(p.tensors)
    for node in reversed(order):
        out = node.outputs[0] if node.outputs else None
        if out is None or not is_float(out):
            continue
        if any(id(c) in qids for c in out.outputs) or out.name in wanted:
            wanted.add(node.inputs[0].name)
    for node in order:
        src = node.inputs[0]
        if src.name not in p.tensors:
            continue
        for out in node.outputs:
            if out.name in wanted and add(out, p.quant[src.name]):
                p.groups.union(src.name, out.name)
                p.groups.defer.add(out.name)
    return p


def write_plan(model_graph: gs.Graph, rg: RegionGraph, formats: Mapping[str, str], ranges: Mapping[str, Any],
               scheme: QuantScheme, ctx: PassContext, writer: QDQWriter) -> None:
    """Apply ``formats`` to every graph of the model (``model_graph``: the main graph)."""
    state = recurrent_state_regions(model_graph)
    for g in list(iter_graphs(model_graph)):
        p = place(g, rg, formats, scheme, ctx.options, state)
        _apply(g, p, ranges, scheme, ctx, writer, state)
        g.cleanup(remove_unused_graph_inputs=False, remove_unused_node_outputs=False).toposort()


def _apply(graph: gs.Graph, p: Placement, ranges: Mapping[str, Any], scheme: QuantScheme, ctx: PassContext,
           writer: QDQWriter, state: Mapping[int, str]) -> None:
    stats, params = writer.stats, writer.params
    span: dict[str, list[float]] = {}
    gq: dict[str, TensorQuant] = {}
    for name in p.tensors:
        root = p.groups.find(name)
        q = p.quant[name]
        if root not in gq or q.qrange[1] - q.qrange[0] > gq[root].qrange[1] - gq[root].qrange[0]:
            gq[root] = q  # a group takes the widest type of its members
        if name in p.groups.defer or name not in ranges:
            continue
        lo, hi = ranges[name]
        r = span.setdefault(root, [lo, hi])
        r[0], r[1] = min(r[0], lo), max(r[1], hi)
    act: dict[str, tuple[float, int, TensorQuant]] = {}
    for name in p.tensors:
        root = p.groups.find(name)
        if root not in span:
            ctx.decline(writer.pass_name, f"tensor '{name}'",
                        "calibration never saw this tensor (a branch not taken?)")
            continue
        q = gq[root]
        scale, zp = activation_params(span[root][0], span[root][1], q)
        act[name] = (scale, zp, q)
        params[name] = {"kind": "activation", "min": span[root][0], "max": span[root][1], "scale": scale,
                        "zero_point": zp, "dtype": q.dtype}
    _drop_fused_activations(graph, p, act, stats)
    node_ids = {id(n) for n in graph.nodes}
    state_outs = {t.name for t in graph.outputs if (prod := producer(t)) is not None and id(prod) in state}
    for name, (scale, zp, q) in act.items():
        writer.activation(graph, p.tensors[name], scale, zp, q, node_ids, name not in state_outs)
        stats["activations"] = stats.get("activations", 0) + 1
    weight_cache: dict[tuple[str, int | None], gs.Variable] = {}
    for node in p.qnodes:
        if node.op in WEIGHTED:
            writer.weights(graph, node, scheme, weight_cache)


def _drop_fused_activations(graph: gs.Graph, p: Placement, act: dict[str, tuple[float, int, TensorQuant]],
                            stats: dict[str, int]) -> None:
    """Relu / Clip(0, hi) right after a quantized op whose shared zero point is its type's minimum: the
    QuantizeLinear already clamps at 0 (and at the calibrated maximum, which is inside Clip's), so the node goes, as
    onnxruntime's quantizer does; graph outputs keep theirs."""
    node_ids = {id(n) for n in graph.nodes}
    for node in p.qnodes:
        if node.op not in FUSED_ACTIVATIONS or not node.outputs:
            continue
        src, out = node.inputs[0], node.outputs[0]
        if src.name not in p.groups.defer or out.name not in act or act[out.name][1] != act[out.name][2].qrange[0]:
            continue
        if any(o is out for o in graph.outputs):
            continue
        if any(id(c) not in node_ids for c in out.outputs):  # read inside a subgraph: no Q/DQ reaches it there
            continue
        if node.op == "Clip":
            lo = constant_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else None
            lo = node.attrs.get("min") if lo is None and len(node.inputs) < 2 else lo
            if lo is None or float(np.asarray(lo)) != 0.0:
                continue
        for c in list(out.outputs):
            for i, t in enumerate(c.inputs):
                if t is out:
                    c.inputs[i] = src
        del act[out.name]
        node.inputs.clear()
        node.outputs.clear()
        stats["activations_folded"] = stats.get("activations_folded", 0) + 1


__all__ = ["Placement", "ScaleGroups", "place", "write_plan"]
