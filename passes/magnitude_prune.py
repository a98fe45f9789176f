"""MagnitudePrune: unstructured pruning, zeroing the smallest weights per layer or globally."""

from __future__ import annotations

import logging
import zlib

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.errors import UserError
from onnxopt.ir import Model, constant_value, iter_graphs, unique_name
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.pass_state import SparsityReport

log = logging.getLogger(__name__)

WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def _weights(model: Model, min_size: int) -> list[tuple[gs.Node, int, np.ndarray]]:
    found = []
    for graph in iter_graphs(model.graph):
        for node in graph.nodes:
            if node.op not in WEIGHTED or len(node.inputs) < 2:
                continue
            for i in (1, 0) if node.op in ("Gemm", "MatMul") else (1,):
                v = constant_value(node.inputs[i])
                if v is not None and v.dtype.kind == "f" and v.ndim >= 2 and v.size >= min_size:
                    found.append((node, i, v))
                    break
    return found


def _compressed(model: Model) -> int:
    if model.large:  # never serialized whole: the weights' bytes, compressed one tensor at a time
        return sum(len(zlib.compress(memoryview(np.ascontiguousarray(t.values)).cast("B"), 6))
                   for g in iter_graphs(model.graph) for t in g.tensors().values()
                   if isinstance(t, gs.Constant) and np.asarray(t.values).dtype.kind in "biuf")
    return len(zlib.compress(model.to_onnx().SerializeToString(), 6))


@register_pass
class MagnitudePrune(Pass):
    """Zero the ``sparsity`` fraction of smallest-magnitude weights of Conv/ConvTranspose/Gemm/MatMul.

    Options: ``sparsity`` (0..1), ``sparsity_scope`` (layer: each weight tensor at that sparsity, the default;
    global: one magnitude threshold over all of them), ``sparsity_min_size`` (weights smaller than this many
    elements are left alone, default 256: first convs and biases hurt most and weigh least). Shapes never change.
    Stats and ``pass_state.SparsityReport`` (``ctx.state``): sparsity reached, zlib-compressed size before/after.
    Declines: weights that are not constants (nothing to prune), walks subgraphs.
    """

    lossless = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        sparsity = float(ctx.option("sparsity") or 0.0)
        if sparsity <= 0:
            return PassResult(False, {})
        if sparsity >= 1:
            raise UserError(f"--sparsity {sparsity}: give the fraction of weights to zero, between 0 and 1")
        scope = str(ctx.option("sparsity_scope") or "layer")
        found = _weights(model, int(ctx.option("sparsity_min_size") or 256))
        if not found:
            ctx.decline(self.name, "model", "no constant weights of Conv/Gemm/MatMul")
            return PassResult(False, {})
        size_before = _compressed(model)
        threshold = None
        if scope == "global":
            allw = np.concatenate([np.abs(v).ravel() for _, _, v in found])
            threshold = np.partition(allw, int(sparsity * (allw.size - 1)))[int(sparsity * (allw.size - 1))]
        zeros = total = 0
        for node, i, v in found:
            mag = np.abs(v)
            if threshold is None:
                k = int(round(sparsity * v.size))
                mask = np.zeros(v.size, dtype=bool)
                mask[np.argsort(mag, axis=None, kind="stable")[:k]] = True
                mask = mask.reshape(v.shape)
            else:
                mask = mag <= threshold
            new = np.where(mask, np.zeros((), v.dtype), v)
            name = node.inputs[i].name
            node.inputs[i] = gs.Constant(unique_name(model.graph, f"{name}_sparse"), np.ascontiguousarray(new))
            zeros += int(np.count_nonzero(new == 0))
            total += new.size
        model.graph.cleanup()
        size_after = _compressed(model)
        report = SparsityReport(asked=sparsity, scope=scope, sparsity=round(zeros / max(total, 1), 4),
                                layers=len(found), zlib_bytes_before=size_before, zlib_bytes_after=size_after)
        ctx.set_state(report)
        log.info("magnitude pruning: %.1f%% of %d weights zero; zlib size %d -> %d bytes", 100 * report.sparsity,
                 total, size_before, size_after)
        return PassResult(True, {"weights_zeroed": zeros, "weights_total": total, "zlib_bytes_before": size_before,
                                 "zlib_bytes_after": size_after})
