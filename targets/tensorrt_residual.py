"""TensorRT's residual rule: on an Add whose two inputs come from weighted ops, Q/DQ goes on the shortcut only.

Why it is TensorRT's: TensorRT fuses a Conv with the Add that follows it when the Conv's output reaches the Add
unquantized and the other Add input carries Q/DQ; onnxruntime fuses differently and wants both inputs quantized.
So this is target policy and lives here, not in the quantizer or the general analyses.

``residual_shortcut(add)``: which input of a two-weighted-op residual Add is the shortcut (the 1x1 downsample conv
of a ResNet block, the previous block's projection in MobileNetV2), else None. Works on float and on Q/DQ graphs
(a DequantizeLinear input is followed back to the float tensor its QuantizeLinear reads).

Rule (NVIDIA TensorRT Model Optimizer, ``modelopt.onnx.quantization.graph_utils.build_non_residual_input_map``):
when both Add inputs come from weighted ops, the input on the longer path to their lowest common ancestor is the
non-residual (main) branch, which stays unquantized so its Conv fuses with the Add; the other is the residual input
and carries Q/DQ. Equal paths (modelopt then takes input 1 as the main branch): the op with the smaller constant
weight is the shortcut (the 1x1 downsample conv against the 3x3 main conv), then input 0.

The paths are measured on a networkx DiGraph of the two branches' ancestors (at most ``ANCESTORS`` nodes each),
Q/DQ nodes weighing 0 so the rule reads the same before and after quantization; the lowest common ancestor is the
common ancestor with the fewest nodes to both (then the most balanced).

``residual_skip_regions(rg)``: the planner's form of the rule: each such Add region becomes role "residual-skip"
with Q/DQ on its shortcut input only, kept even when no quantized op reads the Add (``analysis.regions``).
"""

from __future__ import annotations

from dataclasses import replace

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.analysis.regions import RegionGraph
from onnxopt.ir import constant_value, producer

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
QDQ = ("QuantizeLinear", "DequantizeLinear")
ANCESTORS = 256


def _source(t: gs.Tensor) -> gs.Tensor:
    """The float tensor behind a DequantizeLinear output (DQ <- Q <- float), else ``t`` itself."""
    dq = producer(t)
    q = producer(dq.inputs[0]) if dq is not None and dq.op == "DequantizeLinear" else None
    return q.inputs[0] if q is not None and q.op == "QuantizeLinear" else t


def _ancestry(start: gs.Node, limit: int = ANCESTORS) -> dict[int, int]:
    """id(ancestor) -> fewest non-Q/DQ nodes between ``start`` and it (``start`` at 0)."""
    g = nx.DiGraph()
    g.add_node(id(start))
    frontier, seen = [start], {id(start)}
    while frontier and len(seen) < limit:
        nxt = []
        for n in frontier:
            for t in n.inputs:
                p = producer(t)
                if p is None:
                    continue
                g.add_edge(id(n), id(p), weight=0 if p.op in QDQ else 1)
                if id(p) not in seen:
                    seen.add(id(p))
                    nxt.append(p)
        frontier = nxt
    return dict(nx.single_source_dijkstra_path_length(g, id(start), weight="weight"))


def _weight_size(node: gs.Node) -> float:
    """Element count of a weighted op's constant weight (behind its DequantizeLinear), inf when not constant."""
    t = _source(node.inputs[1]) if len(node.inputs) > 1 else None
    w = constant_value(t) if t is not None else None
    if w is None and t is not None and (dq := producer(t)) is not None and dq.op == "DequantizeLinear":
        w = constant_value(dq.inputs[0])
    return float(np.asarray(w).size) if w is not None else float("inf")


def residual_shortcut(add: gs.Node) -> int | None:
    """The input index of a two-weighted-op residual Add that is the shortcut, else None (module docstring)."""
    if len(add.inputs) != 2:
        return None
    prods = [producer(_source(t)) for t in add.inputs]
    if any(p is None or p.op not in WEIGHTED for p in prods) or prods[0] is prods[1]:
        return None
    d0, d1 = _ancestry(prods[0]), _ancestry(prods[1])
    common = set(d0) & set(d1)
    if not common:
        return None
    lca = min(common, key=lambda k: (d0[k] + d1[k], max(d0[k], d1[k])))
    if d0[lca] != d1[lca]:
        return 1 if d0[lca] > d1[lca] else 0
    sizes = [_weight_size(p) for p in prods]
    return 1 if sizes[1] < sizes[0] else 0


def residual_skip_regions(rg: RegionGraph) -> list[str]:
    """Turn every single-Add region on two weighted ops into a "residual-skip" region (Q/DQ on the shortcut only);
    returns their ids."""
    changed = []
    for r in list(rg.regions):
        nodes = rg.members[r.id]
        if len(nodes) != 1 or nodes[0].op != "Add":
            continue
        s = residual_shortcut(nodes[0])
        if s is None or not nodes[0].inputs[s].name:
            continue
        rg.replace_region(replace(r, tensors=(nodes[0].inputs[s].name,), role="residual-skip"))
        changed.append(r.id)
    return changed


__all__ = ["residual_shortcut", "residual_skip_regions"]
