"""The reference interpreter: runs an ONNX model node by node with the registered kernels.

Construction compiles each graph (the main graph and every If/Loop/Scan body) into a plan: constants
(initializers and Constant nodes, evaluated once), then one step per node holding the kernel function, its
decoded attributes, input and output names, and the names to free after it ran (reference counting over
the node list; a subgraph that reads an outer-scope tensor counts as a use by the node that owns it).
``InputSpec`` and the checks ``run`` applies to its feeds live in ``onnxopt.interp.feeds``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxopt.errors import UserError
from onnxopt.interp import ops  # noqa: F401  (registers every kernel)
from onnxopt.interp.attributes import decode_attributes
from onnxopt.interp.feeds import InputSpec, spec_of, validate_feeds
from onnxopt.interp.registry import KernelContext, lookup
from onnxopt.tensor_files import tensor_array

log = logging.getLogger(__name__)

Callback = Callable[[str, np.ndarray], None]


class _Step:
    __slots__ = ("fn", "inputs", "outputs", "attrs", "context", "node", "opset", "free")

    def __init__(self, fn, inputs, outputs, attrs, context, node, opset):
        self.fn = fn
        self.inputs = inputs
        self.outputs = outputs
        self.attrs = attrs
        self.context = context
        self.node = node
        self.opset = opset
        self.free: tuple[str, ...] = ()


class _Plan:
    __slots__ = ("inputs", "outputs", "constants", "steps", "outer", "start_free")

    def __init__(self):
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.constants: dict[str, np.ndarray] = {}
        self.steps: list[_Step] = []
        self.outer: tuple[str, ...] = ()  # outer-scope names the graph (or its subgraphs) reads
        self.start_free: tuple[str, ...] = ()


def _subgraphs(node: onnx.NodeProto):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def free_names(graph: onnx.GraphProto) -> set[str]:
    """Names ``graph`` (or any nested subgraph) reads without defining them: its outer-scope references."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for g in _subgraphs(node):
            used |= free_names(g)
        defined.update(node.output)
    used.update(o.name for o in graph.output)
    return used - defined


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where every input is produced before use (the given order when it already is)."""
    known = set(available)
    ok = True
    for n in nodes:
        need = [i for i in n.input if i]
        for g in _subgraphs(n):
            need.extend(free_names(g))
        if any(i not in known for i in need):
            ok = False
            break
        known.update(n.output)
    if ok:
        return list(nodes)
    produced = {o for n in nodes for o in n.output if o}
    known = set(available)
    pending = list(nodes)
    order: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            need = [i for i in n.input if i]
            for g in _subgraphs(n):
                need.extend(free_names(g))
            if all(i in known or i not in produced for i in need):
                order.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise UserError(f"graph has a cycle through node {rest[0].name or rest[0].op_type!r}; fix the model")
        pending = rest
    return order


class Interpreter:
    """Reference interpreter over the registered kernels. ``Interpreter(model).run(feeds)``."""

    def __init__(self, model: onnx.ModelProto | str | Path):
        if not isinstance(model, onnx.ModelProto):
            path = Path(model)
            if not path.exists():
                raise UserError(f"model file {str(path)!r} does not exist; give the path of an .onnx file")
            model = onnx.load(str(path))
        self.model = model
        self.opsets: dict[str, int] = {}
        for imp in model.opset_import:
            self.opsets["" if imp.domain == "ai.onnx" else imp.domain] = imp.version
        self._functions = {(f.domain, f.name): f for f in model.functions}
        self._plans: dict[int, _Plan] = {}  # id(GraphProto) -> plan, for subgraphs
        self._types: dict[str, onnx.TypeProto] | None = None
        graph = model.graph
        self._plan = self._compile(graph, self.opsets, is_main=True)
        inits = set(self._plan.constants)
        self._specs = [spec_of(i) for i in graph.input if i.name not in inits]
        self._optional_inputs = {i.name for i in graph.input if i.name in inits}

    # ------------------------------------------------------------------ construction

    def _type_of(self, name: str) -> str:
        if self._types is None:
            self._types = {}
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model)
            except Exception:  # inference is only a help for the error message
                inferred = self.model

            def walk(g: onnx.GraphProto) -> None:
                for vi in list(g.input) + list(g.output) + list(g.value_info):
                    self._types[vi.name] = vi.type
                for t in g.initializer:
                    self._types[t.name] = helper.make_tensor_type_proto(t.data_type, None)
                for n in g.node:
                    for sg in _subgraphs(n):
                        walk(sg)

            walk(inferred.graph)
        tp = self._types.get(name)
        if tp is None:
            return "unknown"
        if tp.HasField("tensor_type"):
            return helper.tensor_dtype_to_string(tp.tensor_type.elem_type).replace("TensorProto.", "").lower()
        return tp.WhichOneof("value") or "unknown"

    def _kernel_for(self, node: onnx.NodeProto, opsets: Mapping[str, int]):
        domain = "" if node.domain == "ai.onnx" else node.domain
        func = self._functions.get((node.domain, node.op_type))
        if func is not None:
            return self._function_kernel(node, func), False, opsets.get(domain, 1)
        opset = opsets.get(domain)
        if opset is None:
            raise UserError(
                f"node {node.name or node.op_type!r} uses domain {domain or 'ai.onnx'!r} that the model does not "
                "import; add it to opset_import"
            )
        spec = lookup(node.op_type, domain, opset)
        if spec is None:
            dtypes = ", ".join(self._type_of(i) if i else "none" for i in node.input) or "no inputs"
            raise UserError(
                f"the interpreter has no kernel for op {node.op_type!r} of domain {domain or 'ai.onnx'!r} at opset "
                f"{opset} (input dtypes: {dtypes}); use --engine onnxruntime or add a kernel to onnxopt/interp/ops"
            )
        return spec.fn, spec.context, opset

    def _function_kernel(self, call: onnx.NodeProto, func: onnx.FunctionProto):
        """A kernel that runs a model-local function, with the call's attributes substituted."""
        given = {a.name: a for a in call.attribute}
        defaults = {a.name: a for a in func.attribute_proto}
        nodes = []
        for n in func.node:
            n2 = onnx.NodeProto()
            n2.CopyFrom(n)
            del n2.attribute[:]
            for a in n.attribute:
                if a.ref_attr_name:
                    src = given.get(a.ref_attr_name) or defaults.get(a.ref_attr_name)
                    if src is None:
                        continue
                    a2 = onnx.AttributeProto()
                    a2.CopyFrom(src)
                    a2.name = a.name
                    n2.attribute.append(a2)
                else:
                    n2.attribute.append(a)
            nodes.append(n2)
        g = helper.make_graph(nodes, func.name, [helper.make_value_info(i, onnx.TypeProto()) for i in func.input],
                              [helper.make_value_info(o, onnx.TypeProto()) for o in func.output])
        f_opsets = dict(self.opsets)
        for imp in func.opset_import:
            f_opsets["" if imp.domain == "ai.onnx" else imp.domain] = imp.version
        plan = self._compile(g, f_opsets)
        interp = self

        def run_function(*args):
            env = dict(plan.constants)
            for name, val in zip(plan.inputs, args, strict=False):
                if name:
                    env[name] = val
            interp._exec(plan, env, None)
            return tuple(env[o] for o in plan.outputs)

        return run_function

    def _compile(self, graph: onnx.GraphProto, opsets: Mapping[str, int], is_main: bool = False) -> _Plan:
        plan = _Plan()
        plan.inputs = [i.name for i in graph.input]
        plan.outputs = [o.name for o in graph.output]
        for t in graph.initializer:
            plan.constants[t.name] = tensor_array(t)  # a large model's weights: mapped from their file
        for st in graph.sparse_initializer:
            from onnxopt.interp.attributes import _sparse

            plan.constants[st.values.name] = _sparse(st)
        available = set(plan.inputs) | set(plan.constants) | free_names(graph)
        nodes = _toposort(list(graph.node), available)
        steps: list[_Step] = []
        for node in nodes:
            fn, context, opset = self._kernel_for(node, opsets)
            attrs = decode_attributes(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and not node.input:
                plan.constants[node.output[0]] = fn(**attrs)
                continue
            for g in _subgraphs(node):
                sub = self._compile(g, opsets)
                self._plans[id(g)] = sub
            # decoded GraphProto attributes are the same objects as node.attribute[i].g
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    attrs[a.name] = a.g
            steps.append(_Step(fn, tuple(node.input), tuple(node.output), attrs, context, node, opset))
        # reference counting: the last step that reads each name
        last: dict[str, int] = {}
        for i, st in enumerate(steps):
            for n in st.inputs:
                if n:
                    last[n] = i
            for g in _subgraphs(st.node):
                for n in self._plans[id(g)].outer:
                    last[n] = i
        keep = set(plan.outputs)
        frees: list[list[str]] = [[] for _ in steps]
        for n, i in last.items():
            if n not in keep:
                frees[i].append(n)
        for i, st in enumerate(steps):  # outputs nobody reads die at once
            frees[i].extend(o for o in st.outputs if o and o not in last and o not in keep)
        for st, fr in zip(steps, frees, strict=False):
            st.free = tuple(fr)
        plan.steps = steps
        plan.outer = tuple(sorted(free_names(graph)))
        return plan

    # ------------------------------------------------------------------ public API

    def input_specs(self) -> list[InputSpec]:
        """The inputs ``run`` requires (graph inputs that have no initializer), in graph order."""
        return list(self._specs)

    @property
    def output_names(self) -> list[str]:
        return list(self._plan.outputs)

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        capture: Collection[str] | str | None = None,
        callback: Callback | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model; returns graph outputs by name (and captured tensors when no callback is given).

        ``capture``: None, tensor names, or ``"all"`` (every tensor a node produces, subgraphs included, plus
        the feeds). ``callback(name, value)`` is called as each captured tensor is produced; inside Loop/Scan
        bodies once per iteration.
        """
        feeds = validate_feeds(feeds, self._specs, self._optional_inputs)
        results: dict[str, np.ndarray] = {}
        sink = None
        if capture is not None:
            cap_all = isinstance(capture, str) and capture == "all"
            cap_set = None if cap_all else ({capture} if isinstance(capture, str) else set(capture))
            emit = callback if callback is not None else results.__setitem__
            sink = (cap_all, cap_set, emit)
        plan = self._plan
        env = dict(plan.constants)
        env.update(feeds)
        if sink is not None:
            cap_all, cap_set, emit = sink
            for name in feeds if cap_all else cap_set:
                if name in env:
                    emit(name, env[name])
        with np.errstate(all="ignore"):
            self._exec(plan, env, sink)
        for name in plan.outputs:
            results[name] = env[name]
        return results

    # ------------------------------------------------------------------ execution

    def _exec(self, plan: _Plan, env: dict, sink) -> None:
        step = None
        try:
            for step in plan.steps:
                args = [env[n] if n else None for n in step.inputs]
                if step.context:
                    ctx = KernelContext(step.node, step.opset, self._subgraph_runner(env, sink))
                    res = step.fn(ctx, *args, **step.attrs)
                else:
                    res = step.fn(*args, **step.attrs)
                if type(res) is tuple or type(res) is list:
                    for name, val in zip(step.outputs, res, strict=False):
                        if name:
                            env[name] = val
                else:
                    env[step.outputs[0]] = res
                res = None  # hold no reference past the step, so frees take effect at once
                if sink is not None:
                    cap_all, cap_set, emit = sink
                    for name in step.outputs:
                        if name and name in env and (cap_all or name in cap_set):
                            emit(name, env[name])
                for name in step.free:
                    env.pop(name, None)
        except (UserError, _NodeError):
            raise
        except Exception as e:
            node = step.node if step is not None else None
            where = f"{node.op_type} node {node.name!r}" if node is not None else "graph"
            shapes = ", ".join(
                f"{n}: {env[n].dtype}{list(env[n].shape)}" if n in env and hasattr(env[n], "shape") else repr(n)
                for n in (node.input if node is not None else ())
            )
            raise _NodeError(f"{where} failed ({type(e).__name__}: {e}); inputs: {shapes}") from e

    def _subgraph_runner(self, outer_env: dict, sink):
        def run_subgraph(graph: onnx.GraphProto, inputs: list) -> list:
            plan = self._plans[id(graph)]
            env = dict(plan.constants)
            for n in plan.outer:
                if n in outer_env:
                    env[n] = outer_env[n]
            for name, val in zip(plan.inputs, inputs, strict=False):
                env[name] = val
            self._exec(plan, env, sink)
            return [env[o] for o in plan.outputs]

        return run_subgraph


class _NodeError(RuntimeError):
    """A kernel failed; the message names the node, the op and the input shapes."""
