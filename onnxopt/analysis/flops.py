"""FLOPs and parameter counts per node and in total.

Counting rules (one multiply-add is 2 FLOPs): Conv ``2 * out_elems * Cin/group * prod(kernel)``, ConvTranspose
``2 * in_elems * Cout/group * prod(kernel)``, Gemm/MatMul ``2 * out_elems * K``; pooling ``out_elems * prod(kernel)``
(global pooling: input elements); BatchNormalization / InstanceNormalization ``2 * out_elems``; every other op one
FLOP per output element. Dynamic dimensions count as 1 (a batch of one). Parameters are the elements of the
floating-point constants a node reads (each constant counted once in the total).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.ir import Model, constant_value

_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_POOLS = {"MaxPool", "AveragePool", "LpPool"}
_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}


@dataclass
class NodeCost:
    name: str
    op: str
    flops: int
    params: int


@dataclass
class CostReport:
    nodes: list[NodeCost] = field(default_factory=list)
    flops: int = 0
    params: int = 0
    unknown: list[str] = field(default_factory=list)  # nodes whose shapes were not known

    def to_dict(self) -> dict:
        return {"flops": self.flops, "params": self.params, "unknown_shapes": list(self.unknown)}


def _numel(shape) -> int | None:
    if shape is None:
        return None
    n = 1
    for d in shape:
        n *= d if isinstance(d, (int, np.integer)) and d > 0 else 1
    return int(n)


def _shape(t: gs.Tensor) -> list | None:
    if isinstance(t, gs.Constant):
        return list(t.values.shape)
    return list(t.shape) if t.shape is not None else None


def node_flops(node: gs.Node) -> int | None:
    """FLOPs of one node from the shapes its tensors carry; None when a needed shape is unknown."""
    op = node.op
    outs = [o for o in node.outputs if o.name]
    out_shape = _shape(outs[0]) if outs else None
    out_n = _numel(out_shape)
    if op == "Conv":
        w = _shape(node.inputs[1])
        if w is None or out_n is None:
            return None
        return 2 * out_n * int(np.prod(w[1:]))
    if op == "ConvTranspose":
        w, x = _shape(node.inputs[1]), _shape(node.inputs[0])
        if w is None or x is None:
            return None
        return 2 * _numel(x) * int(np.prod(w[1:]))
    if op == "Gemm":
        a = _shape(node.inputs[0])
        if a is None or out_n is None or len(a) != 2:
            return None
        k = a[0] if node.attrs.get("transA", 0) else a[1]
        return 2 * out_n * (k if isinstance(k, int) and k > 0 else 1)
    if op == "MatMul":
        a = _shape(node.inputs[0])
        if a is None or out_n is None:
            return None
        k = a[-1]
        return 2 * out_n * (k if isinstance(k, int) and k > 0 else 1)
    if op in _POOLS:
        return None if out_n is None else out_n * int(np.prod(node.attrs.get("kernel_shape", [1])))
    if op in _GLOBAL_POOLS:
        return _numel(_shape(node.inputs[0]))
    if op in ("BatchNormalization", "InstanceNormalization"):
        return None if out_n is None else 2 * out_n
    if op == "Constant":
        return 0
    return out_n


def node_params(node: gs.Node) -> int:
    return sum(int(v.size) for t in node.inputs if (v := constant_value(t)) is not None and v.dtype.kind == "f")


def count_costs(model: Model | onnx.ModelProto, infer: bool = True) -> CostReport:
    """FLOPs and parameters of every node of the main graph (shapes inferred first when ``infer``)."""
    if isinstance(model, Model):
        proto = model.to_onnx()
    else:
        proto = model
    if infer:
        try:
            proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        except Exception:  # noqa: BLE001 - counting goes on with the shapes the model carries
            pass
    graph = gs.import_onnx(proto)
    report = CostReport()
    seen: set[str] = set()
    for node in graph.nodes:
        f = node_flops(node)
        if f is None:
            report.unknown.append(node.name)
            f = 0
        p = node_params(node)
        report.nodes.append(NodeCost(node.name, node.op, int(f), p))
        report.flops += int(f)
    for t in graph.tensors().values():
        v = constant_value(t) if isinstance(t, gs.Constant) else None
        if v is not None and v.dtype.kind == "f" and t.name not in seen and t.outputs:
            seen.add(t.name)
            report.params += int(v.size)
    for node in graph.nodes:
        if node.op == "Constant":
            v = constant_value(node.outputs[0])
            if v is not None and v.dtype.kind == "f":
                report.params += int(v.size)
    return report
