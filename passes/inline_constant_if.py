"""InlineConstantIf: an If whose condition is a constant is replaced by the nodes of the branch it takes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir import DEFAULT_DOMAINS, Model, constant_value, is_graph_output, iter_graphs, subgraphs_of
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass


@dataclass
class _Plan:
    branch: gs.Graph
    # per If output: the branch output that takes its place, and whether that tensor also takes the If output's name
    take_name: list[bool]


def _branch_produced(branch: gs.Graph) -> set[int]:
    """ids of the tensors written by the branch's own nodes."""
    return {id(t) for n in branch.nodes for t in n.outputs}


def _is_local(t: gs.Tensor, produced: set[int]) -> bool:
    """A tensor defined by the branch itself (a node output or one of its initializers), not an outer-scope value."""
    return id(t) in produced or isinstance(t, gs.Constant)


def _visible_outputs(t: gs.Tensor, graph: gs.Graph) -> bool:
    """Whether ``t`` is an output of ``graph`` or of a subgraph below it."""
    return any(is_graph_output(t, g) for g in iter_graphs(graph))


def _plan(node: gs.Node, graph: gs.Graph) -> tuple[_Plan | None, str | None]:
    """How to inline ``node`` in ``graph``, or the reason it declines."""
    if (node.domain or "") not in DEFAULT_DOMAINS:
        return None, f"domain '{node.domain}' is not the default one"
    if not node.inputs:
        return None, "no condition input"
    cond = constant_value(node.inputs[0])
    if cond is None:
        return None, "condition is not a constant"
    if cond.size != 1:
        return None, f"condition has {cond.size} elements, not one"
    key = "then_branch" if bool(np.asarray(cond).reshape(-1)[0]) else "else_branch"
    branch = node.attrs.get(key)
    if not isinstance(branch, gs.Graph):
        return None, f"{key} is not a graph"
    if branch.inputs:
        return None, f"{key} declares inputs"
    if len(branch.outputs) != len(node.outputs):
        return None, f"{key} has {len(branch.outputs)} outputs for {len(node.outputs)} If outputs"
    produced = _branch_produced(branch)
    take_name, named = [], set()
    for out, bo in zip(node.outputs, branch.outputs, strict=True):
        can_rename = id(bo) in produced and id(bo) not in named and bool(out.name)
        if can_rename:
            named.add(id(bo))
        elif out.name and _visible_outputs(out, graph):
            what = ("another output of the branch" if id(bo) in produced
                    else "a constant" if isinstance(bo, gs.Constant) else "an outer-scope value")
            return None, (f"output '{out.name}' is a graph output and the branch output '{bo.name}' ({what}) "
                          "cannot take its name")
        take_name.append(can_rename)
    return _Plan(branch, take_name), None


def _names_outside(root: gs.Graph, skip: gs.Node) -> dict[str, int]:
    """name -> id of the tensor of that name, over the whole tree except the subgraphs of ``skip``."""
    found: dict[str, int] = {}

    def walk(g: gs.Graph) -> None:
        for name, t in g.tensors().items():
            found.setdefault(name, id(t))
        for n in g.nodes:
            if n is skip:
                continue
            for sub in subgraphs_of(n):
                walk(sub)

    walk(root)
    return found


def _all_names(root: gs.Graph) -> set[str]:
    used: set[str] = set()
    for g in iter_graphs(root):
        used.update(g.tensors().keys())
    return used


def _fresh(base: str, used: set[str]) -> str:
    i = 1
    while f"{base}_{i}" in used:
        i += 1
    return f"{base}_{i}"


def _inline(node: gs.Node, graph: gs.Graph, root: gs.Graph, plan: _Plan) -> int:
    """Move the chosen branch's nodes into ``graph`` in place of ``node``. Returns how many tensors were renamed."""
    branch = plan.branch
    produced = _branch_produced(branch)
    outside = _names_outside(root, node)
    used = _all_names(root)
    renamed = 0
    takers = {id(bo) for bo, take in zip(branch.outputs, plan.take_name, strict=True) if take}
    # branch tensors keep their names unless another tensor of the tree (outside this If) already has it
    for t in branch.tensors().values():
        if not t.name or id(t) in takers or not _is_local(t, produced):
            continue
        if t.name in outside and outside[t.name] != id(t):
            t.name = _fresh(t.name, used)
            used.add(t.name)
            renamed += 1
    outs = list(node.outputs)
    branch_outs = list(branch.outputs)
    node.outputs.clear()
    node.inputs.clear()
    for out, bo, take in zip(outs, branch_outs, plan.take_name, strict=True):
        if not out.name:
            continue
        was_output = _visible_outputs(out, graph)
        for user in list(out.outputs):
            for i, t in enumerate(user.inputs):
                if t is out:
                    user.inputs[i] = bo
        if not take:
            continue
        # the branch tensor becomes the If output: its name, its consumers, its graph-output slots, its type
        for g in iter_graphs(graph):
            for i, t in enumerate(g.outputs):
                if t is out:
                    g.outputs[i] = bo
        bo.name = out.name
        bo.dtype = out.dtype if out.dtype is not None else bo.dtype
        if was_output:
            bo.shape = out.shape if out.shape is not None else bo.shape
        elif bo.shape is None:
            bo.shape = out.shape
    # the branch not taken goes with the If: its nodes must stop counting as consumers of outer tensors
    for key in ("then_branch", "else_branch"):
        other = node.attrs.get(key)
        if isinstance(other, gs.Graph) and other is not branch:
            for g in iter_graphs(other):
                for n in g.nodes:
                    n.inputs.clear()
                    n.outputs.clear()
    index = next(i for i, n in enumerate(graph.nodes) if n is node)
    graph.nodes[index:index + 1] = list(branch.nodes)
    branch.nodes.clear()
    return renamed


@register_pass
class InlineConstantIf(Pass):
    """Replace an If whose condition is a constant by the nodes of the branch it takes.

    Rewrites: If(cond) with a constant one-element cond -> the nodes of then_branch (cond true) or else_branch,
    moved into the If's graph at its place; each branch output takes the If output's name, consumers and declared
    type (a branch output that is an outer-scope value or a branch initializer, or that the branch returns twice,
    is used directly by the If output's consumers instead). Branch tensors keep their names unless another tensor
    of the model has it (then a numbered suffix); outer-scope references and nested subgraphs are kept as they are.
    Works in every graph, subgraphs included; constant Ifs that a branch brings with it are inlined too.
    Declines: a condition that is not a constant or has several elements; an If output that is a graph output while
    its branch output cannot take its name (an outer-scope value, a constant, or returned twice); a branch with
    inputs or a different number of outputs; non-default domains.
    """

    lossless = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        stats = {"inlined": 0, "renamed": 0}
        # lazily: iter_graphs lists a graph's subgraphs only after the graph is done, so the branches of the Ifs
        # inlined here are never visited (the one taken is empty, the other is gone)
        for graph in iter_graphs(model.graph):
            self._inline_all(graph, model.graph, ctx, stats)
        return PassResult(stats["inlined"] > 0, {k: v for k, v in stats.items() if v})

    def _inline_all(self, graph: gs.Graph, root: gs.Graph, ctx: PassContext, stats: dict[str, int]) -> None:
        """Inline the constant Ifs of ``graph``, those that inlining brings in included."""
        pending, declined = True, set()
        while pending:  # again over the nodes an inlining brought in: the branch may hold constant Ifs
            pending = False
            for node in list(graph.nodes):
                if node.op != "If" or id(node) in declined:
                    continue
                plan, reason = _plan(node, graph)
                if plan is None:
                    declined.add(id(node))
                    ctx.decline(self.name, f"If '{node.name}'", reason)
                    continue
                stats["renamed"] += _inline(node, graph, root, plan)
                stats["inlined"] += 1
                pending = True
