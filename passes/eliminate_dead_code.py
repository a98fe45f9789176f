"""EliminateDeadCode: remove nodes whose outputs reach no graph output, in every graph and subgraph."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxopt.ir import Model, subgraphs_of
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass


def _outer_names(graph: gs.Graph) -> set[str]:
    """Names a subgraph reads from enclosing scopes (used but neither produced, nor an input, nor local)."""
    local = {t.name for t in graph.inputs}
    used: set[str] = set()
    for node in graph.nodes:
        local.update(t.name for t in node.outputs)
    for node in graph.nodes:
        for t in node.inputs:
            if t.name and not isinstance(t, gs.Constant):
                used.add(t.name)
        for sub in subgraphs_of(node):
            used |= _outer_names(sub)
    used.update(t.name for t in graph.outputs)
    return used - local


def _eliminate(graph: gs.Graph, stats: dict[str, int]) -> None:
    for node in graph.nodes:  # inner graphs first: what they still read decides what stays live outside
        for sub in subgraphs_of(node):
            _eliminate(sub, stats)
    live: set[str] = {t.name for t in graph.outputs}
    keep_ids: set[int] = set()
    for node in reversed(graph.toposort().nodes):
        if not any(t.name in live for t in node.outputs if t.name):
            continue
        keep_ids.add(id(node))
        live.update(t.name for t in node.inputs if t.name)
        for sub in subgraphs_of(node):
            live |= _outer_names(sub)
    dead = [n for n in graph.nodes if id(n) not in keep_ids]
    if not dead:
        return
    for node in dead:
        node.inputs.clear()
        node.outputs.clear()
    graph.nodes = [n for n in graph.nodes if id(n) in keep_ids]
    stats["nodes"] = stats.get("nodes", 0) + len(dead)


def _counts(model: Model) -> tuple[int, int]:
    """Initializers and value_info entries the exported model would carry (main graph)."""
    tensors = model.graph.tensors()
    inits = sum(isinstance(t, gs.Constant) for t in tensors.values())
    io = {t.name for t in model.graph.inputs + model.graph.outputs}
    infos = sum(isinstance(t, gs.Variable) and (t.dtype is not None or t.shape is not None) and n not in io
                for n, t in tensors.items())
    return inits, infos


@register_pass
class EliminateDeadCode(Pass):
    """Remove nodes whose outputs reach no graph output, and the initializers and value_info only they used.

    Rewrites:
    - a node none of whose outputs is used (transitively) by a graph output is removed, in the main graph
      and in every If/Loop/Scan body; a node whose subgraph reads an outer-scope tensor keeps that
      tensor's producer alive;
    - initializers and value_info entries no remaining node uses disappear with their last user.
    Declines (never removed):
    - graph inputs, used or not (the model's interface; initializer inputs are ConstantsToInitializers'
      business), graph outputs and subgraph inputs/outputs;
    - unused outputs of a live node (e.g. an unused Dropout mask) stay on the node.
    """

    lossless = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        inits, infos = _counts(model)
        stats: dict[str, int] = {}
        _eliminate(model.graph, stats)
        if not stats:
            return PassResult(False)
        inits2, infos2 = _counts(model)
        stats["initializers"] = inits - inits2
        stats["value_info"] = infos - infos2
        return PassResult(True, {k: v for k, v in stats.items() if v})
