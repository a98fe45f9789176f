"""ConstantsToInitializers: Constant nodes become initializers; initializer graph inputs become plain ones."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxopt.ir import Model, constant_node_value, is_graph_output, iter_graphs
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass


@register_pass
class ConstantsToInitializers(Pass):
    """Turn Constant nodes into initializers and drop initializers from the graph inputs.

    Rewrites:
    - a Constant node (value, value_float(s), value_int(s), value_string(s)) becomes an initializer of the
      graph it sits in: one inside an If/Loop/Scan body stays local to that body;
    - an initializer that is also listed as a graph input of the main graph (old exporters) becomes a plain
      initializer, unless ctx.option("keep_initializer_inputs") asks to keep it overridable.
    Declines:
    - a Constant holding a sparse tensor (value_sparse): kept as a node;
    - a Constant whose output is a graph output (an output cannot be an initializer of the same graph);
    - a Constant node with inputs or without exactly one output (malformed).
    """

    lossless = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        stats = {"constants": 0, "initializer_inputs": 0}
        for graph in list(iter_graphs(model.graph)):
            touched = False
            for node in list(graph.nodes):
                if node.op != "Constant" or (node.domain or "") not in ("", "ai.onnx"):
                    continue
                reason = self._check(node, graph)
                if reason:
                    ctx.decline(self.name, f"Constant '{node.name}'", reason)
                    continue
                value = constant_node_value(node)
                out = node.outputs[0]
                node.outputs.clear()
                out.to_constant(value)
                touched = True
                stats["constants"] += 1
            if touched:
                graph.nodes = [n for n in graph.nodes if n.outputs or n.op != "Constant"]
        graph = model.graph
        if not ctx.option("keep_initializer_inputs", False):
            kept = [t for t in graph.inputs if not isinstance(t, gs.Constant)]
            # onnx-graphsurgeon's importer already dropped them from the inputs; Model.from_onnx recorded the names
            stats["initializer_inputs"] = len(graph.inputs) - len(kept) + len(model.meta.initializer_inputs)
            model.meta.initializer_inputs = []
            graph.inputs = kept
        else:
            listed = {t.name for t in graph.inputs}
            tensors = graph.tensors()
            for name in model.meta.initializer_inputs:
                t = tensors.get(name)
                if isinstance(t, gs.Constant) and name not in listed:
                    graph.inputs.append(t)
                    stats["initializer_inputs_kept"] = stats.get("initializer_inputs_kept", 0) + 1
        return PassResult(any(stats.values()), {k: v for k, v in stats.items() if v})

    @staticmethod
    def _check(node: gs.Node, graph: gs.Graph) -> str | None:
        if node.inputs or len(node.outputs) != 1:
            return "malformed Constant (inputs, or not exactly one output)"
        if "sparse_value" in node.attrs or constant_node_value(node) is None:
            return "sparse or unsupported value attribute"
        if is_graph_output(node.outputs[0], graph):
            return "its output is a graph output"
        return None
