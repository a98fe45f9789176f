"""EliminateCommonSubexpressions: nodes computing the same thing from the same inputs are merged into one."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from onnxopt.ir import Model, is_graph_output, iter_graphs, replace_all_uses
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.passes.deduplicate_initializers import value_key

NONDETERMINISTIC = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "Dropout",
})
SMALL_CONSTANT = 4096  # constants up to this many elements are compared by value, larger ones by identity


def _attr_key(value) -> object:
    if isinstance(value, gs.Graph):
        proto = OnnxExporter.export_graph(value, do_type_check=False)
        return ("graph", proto.SerializeToString(deterministic=True))
    if isinstance(value, gs.Constant):
        return ("tensor",) + value_key(np.asarray(value.values))
    if isinstance(value, np.ndarray):
        return ("array",) + value_key(value)
    if isinstance(value, (list, tuple)):
        return ("list",) + tuple(_attr_key(v) for v in value)
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, (str, bytes, int, bool, type(None))):
        return (type(value).__name__, value)
    return ("other", type(value).__name__, repr(value))


def _input_key(t: gs.Tensor, overridable: set[int]) -> object:
    if not t.name:
        return ("absent",)
    if isinstance(t, gs.Constant) and id(t) not in overridable and type(t._values).__name__ != "SparseValues":
        values = np.asarray(t.values)
        if values.size <= SMALL_CONSTANT and values.dtype.kind != "O":
            return ("value",) + value_key(values)
    return ("tensor", id(t))


def _in_outputs(node: gs.Node, graph: gs.Graph) -> bool:
    return any(is_graph_output(t, g) for t in node.outputs for g in iter_graphs(graph))


def _redirect(old: gs.Node, new: gs.Node, graph: gs.Graph) -> None:
    for a, b in zip(old.outputs, new.outputs, strict=False):
        if a.name:
            replace_all_uses(a, b, graph)
    old.outputs.clear()
    old.inputs.clear()


@register_pass
class EliminateCommonSubexpressions(Pass):
    """Merge nodes with the same op, domain, attributes and inputs (in every graph, subgraphs included).

    Rewrites: the later node's consumers read the earlier node's outputs and the later node is removed. When
    only the later node's outputs are graph outputs, the roles swap so that output names survive. Small
    constant inputs (<= 4096 elements, not graph inputs) compare by value, others by identity
    (DeduplicateInitializers merges equal large ones first). Nodes with subgraphs merge only when their
    subgraphs export to identical protobufs.
    Declines: nondeterministic ops (Random*, Multinomial, Bernoulli, Dropout); ops outside the default domain
    (their determinism is unknown); nodes whose outputs are graph outputs on both sides; nodes with no outputs.
    """

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        merged = 0
        keep_alive: list[gs.Tensor] = []
        model.graph.toposort()
        overridable = {id(t) for t in model.graph.inputs}
        for graph in list(iter_graphs(model.graph)):
            seen: dict[tuple, gs.Node] = {}
            touched = False
            for node in list(graph.nodes):
                if not node.outputs:
                    continue
                if node.domain not in (None, "", "ai.onnx"):
                    continue
                if node.op in NONDETERMINISTIC:
                    continue
                try:
                    attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
                except Exception as e:  # an attribute gs cannot export: leave the node alone
                    ctx.decline(self.name, f"{node.op} '{node.name}'", f"attribute cannot be compared: {e}")
                    continue
                keep_alive.extend(node.inputs)
                key = (node.op, node.domain or "", attrs, tuple(_input_key(t, overridable) for t in node.inputs),
                       tuple(bool(t.name) for t in node.outputs))
                first = seen.get(key)
                if first is None:
                    seen[key] = node
                    continue
                if not _in_outputs(node, graph):
                    _redirect(node, first, graph)
                elif not _in_outputs(first, graph):
                    _redirect(first, node, graph)
                    seen[key] = node
                else:
                    ctx.decline(self.name, f"{node.op} '{node.name}'",
                                f"duplicate of '{first.name}' but both write graph outputs")
                    continue
                merged += 1
                touched = True
            if touched:
                graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=False).toposort(
                    recurse_subgraphs=False)
        return PassResult(bool(merged), {"nodes_merged": merged})
