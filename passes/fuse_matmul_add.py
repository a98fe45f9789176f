"""FuseMatMulAdd: MatMul(rank-2 input, constant 2-D weight) + Add(constant bias) becomes one Gemm."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir import (
    constant_value,
    dtype_of,
    is_graph_output,
    iter_graphs,
    opset_of,
    producer,
    shape_of,
)
from onnxopt.pass_manager import register_pass
from onnxopt.rewrite import Declined, MatchRewrite, RewritePass, default_domain_match

GEMM_FLOATS = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class MatMulAddMatch:
    """The Add, the MatMul it reads and the constant bias tensor it adds."""

    add: gs.Node
    matmul: gs.Node
    bias: gs.Tensor


def _match(node: gs.Node, graph: gs.Graph, ctx) -> MatMulAddMatch | Declined:
    """The parts of Add(MatMul(a, W), bias) when a Gemm can compute it, else the reason it declines."""
    if opset_of(graph) < 7:
        return Declined("opset < 7")
    for bi in (1, 0):
        bias = constant_value(node.inputs[bi])
        mm = producer(node.inputs[1 - bi])
        if bias is None or mm is None or mm.op != "MatMul" or mm.domain not in (None, "", "ai.onnx"):
            continue
        if not any(n is mm for n in graph.nodes):
            return Declined("the MatMul is in another graph")
        mid = node.inputs[1 - bi]
        if len(mid.outputs) != 1 or any(is_graph_output(mid, g) for g in iter_graphs(graph)):
            return Declined("the MatMul output has other consumers")
        w = constant_value(mm.inputs[1])
        if w is None:
            return Declined("the MatMul weight is not a constant")
        if w.ndim != 2:
            return Declined("the MatMul weight is not 2-D")
        a_shape = shape_of(mm.inputs[0])
        if a_shape is None:
            return Declined("the MatMul input rank is unknown")
        if len(a_shape) != 2:
            return Declined(f"the MatMul input has rank {len(a_shape)}, not 2 (onnxruntime fuses those itself)")
        if w.dtype not in [np.dtype(t) for t in GEMM_FLOATS]:
            return Declined("the weight is not float")
        if bias.dtype != w.dtype or (dtype_of(mm.inputs[0]) not in (None, w.dtype)):
            return Declined("dtypes differ")
        if (bias.ndim > 2 or any(d != 1 for d in bias.shape[:-1])
                or (bias.ndim and bias.shape[-1] not in (1, w.shape[1]))):
            return Declined("the bias is not broadcast along the last axis only")
        return MatMulAddMatch(node, mm, node.inputs[bi])
    return Declined("not Add(MatMul, constant)")


def _apply(m: MatMulAddMatch, graph: gs.Graph, ctx) -> None:
    node, mm, bias = m.add, m.matmul, m.bias
    a, w = mm.inputs[0], mm.inputs[1]
    out = node.outputs[0]
    for n in (node, mm):
        n.outputs.clear()
        n.inputs.clear()
    graph.nodes.append(gs.Node("Gemm", name=mm.name or f"{out.name}_gemm", inputs=[a, w, bias], outputs=[out]))


@register_pass
class FuseMatMulAdd(RewritePass):
    """Fuse MatMul(rank-2 input, constant 2-D weight) + Add(constant bias on the last axis) into Gemm.

    Rewrites: Add(MatMul(A, W), b) or Add(b, MatMul(A, W)) -> Gemm(A, W, b) writing the Add's output, when A has
    rank 2, W is a constant 2-D float weight and b a constant broadcast along the last axis only (scalar, [1],
    [N], [1, N]).
    Declines: A of another rank (rank-3 transformer MatMuls stay as they are: onnxruntime fuses them itself) or
    of unknown rank; W not a constant or not 2-D; non-float or mismatched dtypes; a bias that varies along the
    first axis; the MatMul output has other consumers or is a graph output; the MatMul in another graph;
    opset < 7; non-default domains.
    """

    rewrites = [MatchRewrite("matmul_add", ("Add",), default_domain_match(_match), _apply)]
