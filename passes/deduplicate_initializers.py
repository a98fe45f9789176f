"""DeduplicateInitializers: initializers with the same dtype, shape and bytes become one."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir import Model, iter_graphs
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass


def value_key(values: np.ndarray) -> tuple:
    """(dtype, shape, sha1 of the bytes): equal keys are then confirmed byte for byte."""
    data = np.asarray(values)  # not ascontiguousarray: it turns 0-d arrays into 1-d ones
    return (data.dtype.str, data.shape, hashlib.sha1(data.tobytes()).hexdigest())


@register_pass
class DeduplicateInitializers(Pass):
    """Merge initializers with identical dtype, shape and bytes into one (the first one met, outer graphs first).

    Rewrites: every node input (subgraphs included) that reads a duplicate reads the kept initializer instead;
    the duplicate disappears when nothing else reads it. Equality is by hash, then confirmed byte for byte
    (so 0.0 and -0.0 stay apart, and identical NaN payloads merge). Kept initializers that a subgraph reads from
    an outer graph stay valid: outer names are visible in subgraphs.
    Declines: initializers that are graph inputs (overridable) or graph outputs; sparse initializers; object
    (string) tensors.
    """

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        graphs = list(iter_graphs(model.graph))
        pinned = {id(t) for g in graphs for t in list(g.inputs) + list(g.outputs)}
        kept: dict[tuple, list[gs.Constant]] = {}
        remap: dict[int, gs.Constant] = {}
        by_shape: dict[tuple, list[gs.Constant]] = {}
        listed: set[int] = set()
        for graph in graphs:
            for node in graph.nodes:
                for t in node.inputs:
                    if not isinstance(t, gs.Constant) or id(t) in listed or id(t) in pinned:
                        continue
                    listed.add(id(t))
                    if type(t._values).__name__ == "SparseValues":
                        continue
                    by_shape.setdefault((str(t.dtype), tuple(t.shape)), []).append(t)
        for group in by_shape.values():
            if len(group) < 2:
                continue  # a unique dtype+shape needs no hashing
            for t in group:
                if id(t) in remap:
                    continue
                values = np.asarray(t.values)
                if values.dtype.kind == "O":
                    continue
                bucket = kept.setdefault(value_key(values), [])
                for other in bucket:
                    if np.asarray(other.values).tobytes() == values.tobytes():
                        remap[id(t)] = other
                        break
                else:
                    bucket.append(t)
        merged = 0
        for graph in graphs:
            for node in graph.nodes:
                for i, t in enumerate(node.inputs):
                    if id(t) in remap:
                        node.inputs[i] = remap[id(t)]
                        merged += 1
        if merged:
            for graph in graphs:
                graph.cleanup(remove_unused_graph_inputs=False, remove_unused_node_outputs=False,
                              recurse_subgraphs=False)
        return PassResult(bool(merged), {"inputs_redirected": merged, "initializers_merged": len(remap)})
