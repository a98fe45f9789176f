"""DeduplicateInitializers: initializers with the same dtype, shape and bytes become one."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir import Model, iter_graphs
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass

_SAMPLE = 64  # elements read for a fingerprint


def value_key(values: np.ndarray) -> tuple:
    """(dtype, shape, sha1 of the bytes): equal keys are then confirmed byte for byte."""
    data = np.asarray(values)  # not ascontiguousarray: it turns 0-d arrays into 1-d ones
    return (data.dtype.str, data.shape, hashlib.sha1(data.tobytes()).hexdigest())


def _raw(values: np.ndarray) -> np.ndarray:
    """The bytes of an array as a flat uint8 array (no copy when the array is C-contiguous)."""
    return np.ascontiguousarray(values).reshape(-1).view(np.uint8)


def _fingerprint(values: np.ndarray) -> bytes:
    """The bytes of up to ``_SAMPLE`` evenly spaced elements (all of them for small tensors): arrays whose
    fingerprints differ differ, so only tensors with equal fingerprints are ever read in full."""
    flat = values.reshape(-1)
    if flat.size > _SAMPLE:
        flat = flat[np.linspace(0, flat.size - 1, _SAMPLE).astype(np.intp)]
    return flat.tobytes()


@register_pass
class DeduplicateInitializers(Pass):
    """Merge initializers with identical dtype, shape and bytes into one (the first one met, outer graphs first).

    Rewrites: every node input (subgraphs included) that reads a duplicate reads the kept initializer instead;
    the duplicate disappears when nothing else reads it. Candidates are found by dtype, shape and the bytes of
    a few sampled elements (then sha1 when several share those), and equality is confirmed byte for byte
    (so 0.0 and -0.0 stay apart, and identical NaN payloads merge). Kept initializers that a subgraph reads from
    an outer graph stay valid: outer names are visible in subgraphs.
    Declines: initializers that are graph inputs (overridable) or graph outputs; sparse initializers; object
    (string) tensors.
    """

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        graphs = list(iter_graphs(model.graph))
        pinned = {id(t) for g in graphs for t in list(g.inputs) + list(g.outputs)}
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
        digests: dict[int, bytes] = {}

        def digest(t: gs.Constant) -> bytes:
            if id(t) not in digests:
                digests[id(t)] = hashlib.sha1(_raw(np.asarray(t.values))).digest()
            return digests[id(t)]

        for group in by_shape.values():
            if len(group) < 2:
                continue  # a unique dtype+shape needs no reading
            # kept tensors by fingerprint; a tensor is read in full only against kept ones of equal fingerprint
            # (with several of those, only against the ones of equal sha1)
            kept: dict[tuple, list[gs.Constant]] = {}
            for t in group:
                values = np.asarray(t.values)
                if values.dtype.kind == "O":
                    continue
                bucket = kept.setdefault((values.dtype.str, values.shape, _fingerprint(values)), [])
                candidates = bucket if len(bucket) < 2 else [o for o in bucket if digest(o) == digest(t)]
                for other in candidates:
                    if np.array_equal(_raw(np.asarray(other.values)), _raw(values)):
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
