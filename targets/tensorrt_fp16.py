"""ConvertFloatToFp16: what stays float becomes fp16 for TensorRT; Q/DQ scales stay float32.

Rewrites (main graph; nodes that hold subgraphs, and tensors read inside subgraphs, stay float32):

- every node of an op in ``FP16_OPS`` whose float32 outputs have known types runs in fp16: its float32 data
  inputs (``FP16_OPS[op]``: the input indices of type T; None: all) become fp16 - float32 initializers are
  stored as fp16 copies (values clipped to +-65504), other tensors get a ``Cast(to=FLOAT16)``;
- anything else that reads an fp16 tensor (QuantizeLinear, whose opset-13 input must be float32, DequantizeLinear
  scales, Resize scales, ops not listed, network outputs) reads it through ``Cast(to=FLOAT)``: network inputs and
  outputs keep float32, and the scale of every Q/DQ stays float32 as onnx-tensorrt reads it (its operators.md:
  QuantizeLinear takes FP32/FP16 input, the scale as given);
- nodes that read a DequantizeLinear output (Q/DQ groups: TensorRT runs them in int8 and fuses the DQ into
  them) stay float32, so no Cast separates a weight's DQ from its Conv; their float outputs reach fp16 readers
  through a Cast.

Declines: a node whose output types are unknown to shape inference (stays float32, logged).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt.ir import Model
from onnxopt.model_io import iter_graph_protos, subgraph_protos
from onnxopt.pass_manager import Pass, PassContext, PassResult, register_pass
from onnxopt.tensor_files import tensor_array

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
ALL = None
FP16_OPS: dict[str, tuple[int, ...] | None] = {
    **{op: ALL for op in (
        "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid",
        "Tanh", "HardSigmoid", "HardSwish", "Erf", "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Softmax",
        "LayerNormalization", "BatchNormalization", "InstanceNormalization", "MaxPool", "AveragePool",
        "GlobalAveragePool", "GlobalMaxPool", "Concat", "Identity", "Flatten", "Transpose", "Clip", "ReduceMean",
        "ReduceSum", "ReduceMax", "Gelu", "Elu", "Selu", "PRelu", "Softplus", "Max", "Min", "Sum", "Mean",
        "DepthToSpace", "SpaceToDepth")},
    "Pow": (0,), "Reshape": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Slice": (0,), "Gather": (0,),
    "Expand": (0,), "Tile": (0,), "Split": (0,), "Resize": (0,), "Pad": (0, 2), "Where": (1, 2),
}
TYPE_AGNOSTIC = {"Cast", "Shape", "Size"}  # read any element type: no Cast back to float32 needed
F16_MAX = 65504.0


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    return {name for node in graph.node for sub in subgraph_protos(node) for g in iter_graph_protos(sub)
            for n in g.node for name in n.input}


def convert_to_fp16(model: onnx.ModelProto, decline=None) -> tuple[onnx.ModelProto, int]:
    """Return a converted copy of ``model`` and the number of nodes now running in fp16."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # shape inference is an aid here; without it every output type is unknown
        inferred = model
    g_in = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g_in.input, *g_in.output, *g_in.value_info]
             if vi.type.HasField("tensor_type")}
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    types.update({name: t.data_type for name, t in inits.items()})
    pinned = _subgraph_reads(graph)
    is16: set[str] = set()
    cast16: dict[str, str] = {}
    cast32: dict[str, str] = {}
    new_inits: list[onnx.TensorProto] = []
    used = {n for node in graph.node for n in [*node.input, *node.output]} | set(inits) | {i.name for i in graph.input}

    def fresh(base: str) -> str:
        name, i = base, 1
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        return name

    nodes: list[onnx.NodeProto] = []

    def to16(name: str) -> str:
        if name in is16:
            return name
        if name not in cast16:
            if name in inits:
                value = tensor_array(inits[name]).astype(np.float32)  # a large model's weight: from its file
                arr = np.clip(value, -F16_MAX, F16_MAX).astype(np.float16)
                cast16[name] = fresh(name + "_fp16")
                new_inits.append(numpy_helper.from_array(arr, cast16[name]))
            else:
                cast16[name] = fresh(name + "_to_fp16")
                nodes.append(helper.make_node("Cast", [name], [cast16[name]], name=cast16[name], to=F16))
        return cast16[name]

    def to32(name: str) -> str:
        if name not in cast32:
            cast32[name] = fresh(name + "_to_fp32")
            nodes.append(helper.make_node("Cast", [name], [cast32[name]], name=cast32[name], to=F32))
        return cast32[name]

    converted = 0
    dq_outs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    has_sub = lambda n: any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)  # noqa: E731
    for node in graph.node:
        idx = FP16_OPS.get(node.op_type, "no") if node.domain in ("", "ai.onnx") else "no"
        outs_f32 = [o for o in node.output if o and types.get(o) == F32]
        ok = idx != "no" and not has_sub(node) and all(o and types.get(o) is not None for o in node.output)
        ok = ok and bool(outs_f32) and not any(o in pinned for o in outs_f32)
        ok = ok and not any(n in dq_outs for n in node.input)  # a Q/DQ group: TensorRT runs it in int8
        if idx != "no" and not ok and decline is not None:
            decline(f"{node.op_type} '{node.name}'", "output type unknown or read inside a subgraph; kept float32")
        if ok:
            for i, name in enumerate(node.input):
                if name and (idx is ALL or i in idx) and (types.get(name) == F32 or name in is16):
                    node.input[i] = to16(name)
            is16.update(outs_f32)
            converted += 1
        elif node.op_type not in TYPE_AGNOSTIC:
            for i, name in enumerate(node.input):
                if name in is16:
                    node.input[i] = to32(name)
        nodes.append(node)
    for out in graph.output:
        if out.name in is16:
            src = fresh(out.name + "_fp16")
            for node in nodes:
                for lst in (node.input, node.output):
                    for i, n in enumerate(lst):
                        if n == out.name:
                            lst[i] = src
            nodes.append(helper.make_node("Cast", [src], [out.name], name=fresh(out.name + "_to_fp32"), to=F32))
    del graph.node[:]
    graph.node.extend(_toposort(nodes, graph))
    graph.initializer.extend(new_inits)
    keep = {vi.name for vi in graph.value_info} - is16
    vis = [vi for vi in graph.value_info if vi.name in keep]
    del graph.value_info[:]
    graph.value_info.extend(vis)
    return model, converted


def _toposort(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    produced = {o for n in nodes for o in n.output}
    out, pending = [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in ready or i not in produced for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            return out + rest  # a cycle cannot come from this rewrite; keep the order rather than loop
        pending = rest
    return out


@register_pass
class ConvertFloatToFp16(Pass):
    """Run what stays float in fp16 (TensorRT --fp16): fp16 weights, Casts at the interface and around Q/DQ."""

    lossless = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        proto = model.to_onnx()
        out, converted = convert_to_fp16(proto, lambda where, why: ctx.decline(self.name, where, why))
        if converted:
            model.replace_with(out)
        return PassResult(bool(converted), {"fp16_nodes": converted} if converted else {})
