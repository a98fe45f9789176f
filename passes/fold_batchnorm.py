"""FoldBatchNorm: inference BatchNormalization folded into the Conv/ConvTranspose/Gemm before it, else Mul+Add."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir import (
    constant_value,
    dtype_of,
    is_graph_output,
    iter_graphs,
    make_constant,
    opset_of,
    other_outputs_unused,
    producer,
    shape_of,
    unique_name,
)
from onnxopt.pass_manager import register_pass
from onnxopt.pass_state import BatchNormScales
from onnxopt.rewrite import Declined, MatchRewrite, RewritePass, default_domain_match

WEIGHTED = ("Conv", "ConvTranspose", "Gemm")


@dataclass(frozen=True)
class BatchNormMatch:
    """The BatchNormalization, BN(x) = x * a + b per channel (float64), and what the rewrite writes into: the
    weighted producer (folding) or the float dtype of the Mul/Add constants (decomposition)."""

    node: gs.Node
    a: np.ndarray
    b: np.ndarray
    producer: gs.Node | None = None
    dtype: np.dtype | None = None


def _channel_view(op: str, shape: tuple, n: int, attrs: dict) -> tuple[tuple, tuple] | None:
    """(shape the weight is viewed as, shape the per-channel scale is viewed as) for an output-channel scaling of
    a weight of ``shape`` by ``n`` channels; None when the shapes disagree. Nothing is computed on the weight."""
    rank = len(shape)
    if op == "Conv":
        if rank < 1 or shape[0] != n:
            return None
        return shape, (-1,) + (1,) * (rank - 1)
    if op == "ConvTranspose":
        g = int(attrs.get("group", 1))
        if rank < 2 or shape[0] % g or shape[1] * g != n:
            return None
        return (g, shape[0] // g) + shape[1:], (g, 1, shape[1]) + (1,) * (rank - 2)
    if op == "Gemm":
        if rank != 2:
            return None
        if int(attrs.get("transB", 0)):
            return (shape, (-1, 1)) if shape[0] == n else None
        return (shape, (1, -1)) if shape[1] == n else None
    return None


def scale_output_channels(op: str, w: np.ndarray, scale: np.ndarray, attrs: dict,
                          dtype: np.dtype | None = None) -> np.ndarray | None:
    """Multiply a Conv/ConvTranspose/Gemm weight by ``scale`` per output channel, in float64. None when shapes disagree.

    Conv: axis 0 of [M, C/g, k...]. ConvTranspose: axis 1 of [C, M/g, k...] per group (channel g*M/g + j).
    Gemm: the N axis of B, which is axis 1 when transB=0 and axis 0 when transB=1.
    The result is float64, or ``dtype`` when given: each product is computed in float64 and rounded once to
    ``dtype`` (what ``(w.astype(float64) * scale).astype(dtype)`` gives) without full-size float64 temporaries.
    """
    view = _channel_view(op, tuple(w.shape), scale.size, attrs)
    if view is None:
        return None
    w_shape, s_shape = view
    out = np.empty(w.shape, np.float64 if dtype is None else dtype)
    np.multiply(w.reshape(w_shape), scale.reshape(s_shape), out=out.reshape(w_shape), dtype=np.float64,
                casting="unsafe")
    return out


def bias_of(node: gs.Node) -> tuple[np.ndarray | None, str | None]:
    """The constant bias (Conv/ConvTranspose B, Gemm beta*C) as float64; zeros-free None when absent."""
    if len(node.inputs) < 3 or not node.inputs[2].name:
        return None, None
    v = constant_value(node.inputs[2])
    if v is None:
        return None, "bias is not a constant"
    v = v.astype(np.float64)
    if node.op == "Gemm":
        v = v * float(node.attrs.get("beta", 1.0))
    return v, None


def weighted_producer(t: gs.Tensor, graph: gs.Graph) -> tuple[gs.Node | None, str | None]:
    """The Conv/ConvTranspose/Gemm writing ``t`` when it can be rewritten in place, else (None, reason)."""
    prod = producer(t)
    if prod is None or prod.op not in WEIGHTED or prod.domain not in (None, "", "ai.onnx"):
        return None, "input is not produced by a Conv, ConvTranspose or Gemm"
    if not any(n is prod for n in graph.nodes):
        return None, "the producer is in another graph"
    if len(t.outputs) != 1 or any(is_graph_output(t, g) for g in iter_graphs(graph)):
        return None, f"the {prod.op} output has other consumers"
    w = constant_value(prod.inputs[1])
    if w is None:
        return None, f"the {prod.op} weight is not a constant"
    if w.dtype.kind != "f":
        return None, f"the {prod.op} weight is not float"
    reason = bias_of(prod)[1]
    if reason:
        return None, reason
    return prod, None


def _new_name(graph: gs.Graph, prod: gs.Node, what: str) -> str:
    """A fresh name derived from the node's output (unique in the model); a full scan only on a clash."""
    base = f"{prod.outputs[0].name}__{what}"
    names = {t.name for n in graph.nodes for t in n.inputs}
    return base if base not in names else unique_name(graph, base)


def rewrite_weighted(prod: gs.Node, graph: gs.Graph, scale: np.ndarray | None, shift: np.ndarray) -> None:
    """prod's output becomes ``out * scale + shift`` per output channel (scale None: 1)."""
    w = constant_value(prod.inputs[1])
    dtype = w.dtype
    if scale is not None:
        new_w = scale_output_channels(prod.op, w, np.asarray(scale, np.float64), prod.attrs, dtype)
        prod.inputs[1] = make_constant(_new_name(graph, prod, "weight_folded"), new_w)
    bias, _ = bias_of(prod)
    if bias is None:
        new_b = shift
    else:
        new_b = (bias * scale if scale is not None else bias) + shift
    if prod.op == "Gemm":
        prod.attrs["beta"] = 1.0
    else:
        new_b = np.broadcast_to(new_b, shift.shape)
    const = make_constant(_new_name(graph, prod, "bias_folded"), np.asarray(new_b).astype(dtype))
    if len(prod.inputs) >= 3:
        prod.inputs[2] = const
    else:
        prod.inputs.append(const)


def _bn_params(node: gs.Node, graph: gs.Graph) -> tuple[tuple[np.ndarray, np.ndarray] | None, str | None]:
    """(a, b) with BN(x) = x * a + b per channel, in float64; else the reason."""
    if node.attrs.get("training_mode", 0):
        return None, "training_mode is set"
    if opset_of(graph) < 9 and not node.attrs.get("spatial", 1):
        return None, "spatial=0"
    if opset_of(graph) < 7 and not node.attrs.get("is_test", 0):
        return None, "is_test=0 (training) before opset 7"
    if not other_outputs_unused(node, graph):
        return None, "running mean/var outputs are used"
    vals = [constant_value(t) for t in node.inputs[1:5]]
    if len(vals) != 4 or any(v is None for v in vals):
        return None, "scale/bias/mean/var are not constants"
    scale, bias, mean, var = (np.asarray(v, dtype=np.float64).reshape(-1) for v in vals)
    if not (scale.size == bias.size == mean.size == var.size):
        return None, "parameters of different sizes"
    eps = float(node.attrs.get("epsilon", 1e-5))
    a = scale / np.sqrt(var + eps)
    return (a, bias - mean * a), None


def _channel_count_ok(prod: gs.Node, n: int) -> str | None:
    w = constant_value(prod.inputs[1])
    if _channel_view(prod.op, tuple(w.shape), n, prod.attrs) is None:
        return f"the {prod.op} has another number of output channels"
    return None


def _match_fold(node: gs.Node, graph: gs.Graph, ctx) -> BatchNormMatch | Declined:
    params, reason = _bn_params(node, graph)
    if params is None:
        return Declined(reason)
    prod, reason = weighted_producer(node.inputs[0], graph)
    if prod is None:
        return Declined(reason)
    reason = _channel_count_ok(prod, params[0].size)
    if reason is not None:
        return Declined(reason)
    return BatchNormMatch(node, *params, producer=prod)


def _apply_fold(m: BatchNormMatch, graph: gs.Graph, ctx) -> None:
    node, prod, a, b = m.node, m.producer, m.a, m.b
    rewrite_weighted(prod, graph, a, b)
    if prod.name:  # PruneChannels' ``bn`` criterion (network slimming) reads |gamma| / sigma after the fold
        scales = ctx.setdefault_state(BatchNormScales).scales
        scales[prod.name] = np.abs(np.asarray(a, np.float64)) * scales.get(prod.name, 1.0)
    out = node.outputs[0]
    node.outputs.clear()
    node.inputs.clear()
    prod.outputs[0] = out


def _match_decompose(node: gs.Node, graph: gs.Graph, ctx) -> BatchNormMatch | Declined:
    if not ctx.option("fold_batchnorm.decompose", True):
        return Declined("decomposition into Mul+Add is switched off")
    params, reason = _bn_params(node, graph)
    if params is None:
        return Declined(reason)
    s = shape_of(node.inputs[0])
    if s is None:
        return Declined("input rank unknown, so the channel axis cannot be broadcast")
    if len(s) < 2:
        return Declined("input rank < 2")
    c = s[1]
    if isinstance(c, (int, np.integer)) and c != params[0].size and params[0].size != 1:
        return Declined("channel count differs from the parameters")
    dtype = np.dtype(dtype_of(node.inputs[0]) or constant_value(node.inputs[1]).dtype)
    if dtype.kind != "f":
        return Declined("input is not float")
    return BatchNormMatch(node, *params, dtype=dtype)


def _apply_decompose(m: BatchNormMatch, graph: gs.Graph, ctx) -> None:
    node, a, b, dtype = m.node, m.a, m.b, m.dtype
    x, out = node.inputs[0], node.outputs[0]
    shape = (-1,) + (1,) * (len(shape_of(x)) - 2)
    base = node.name or out.name
    mul_c = make_constant(unique_name(graph, f"{base}_scale"), a.reshape(shape).astype(dtype))
    add_c = make_constant(unique_name(graph, f"{base}_shift"), b.reshape(shape).astype(dtype))
    mid = gs.Variable(unique_name(graph, f"{base}_scaled"), dtype=dtype, shape=x.shape)
    node.outputs.clear()
    node.inputs.clear()
    graph.nodes.append(gs.Node("Mul", name=unique_name(graph, f"{base}_mul"), inputs=[x, mul_c], outputs=[mid]))
    graph.nodes.append(gs.Node("Add", name=unique_name(graph, f"{base}_add"), inputs=[mid, add_c], outputs=[out]))


@register_pass
class FoldBatchNorm(RewritePass):
    """Fold inference BatchNormalization into the preceding Conv/ConvTranspose/Gemm, or rewrite it as Mul+Add.

    Rewrites, with a = scale / sqrt(var + eps) and b = B - mean * a computed in float64:
    - Conv: W[m] *= a[m], bias = bias * a + b; ConvTranspose: the output channel is axis 1 of W within each
      group (channel g*M/g + j), same bias; Gemm: the N axis of B (axis 1, or axis 0 with transB=1) is scaled,
      C becomes beta*C*a + b and beta 1. The weighted node then writes the BN's output tensor.
    - Otherwise (no such producer, or it cannot be changed): x * a + b as Mul and Add with constants shaped
      [C, 1, ...] for the input's rank (option ``fold_batchnorm.decompose``, default on).
    Declines: training_mode set (or spatial=0 / is_test=0 in old opsets); running mean/var outputs used;
    non-constant parameters. Folding declines when the producer's output has other consumers or is a graph
    output, the producer is in another graph, its weight or bias is not a float constant, or the channel counts
    differ; Mul+Add declines when the input rank is unknown or below 2, or the input is not float.
    """

    rewrites = [
        MatchRewrite("fold_into_producer", ("BatchNormalization",), default_domain_match(_match_fold), _apply_fold),
        MatchRewrite("decompose_mul_add", ("BatchNormalization",), default_domain_match(_match_decompose),
                     _apply_decompose),
    ]
