"""Shared graph-building helper and the zoo models that exercise exporter quirks.

`GraphBuilder` keeps node and tensor names deterministic (op name + counter) and draws every weight from one
seeded numpy generator, so a builder gives the same bytes on every call. The models here are small on purpose:
`control_flow` (If + Loop with Constants inside subgraphs), `dynamic` (Shape/Gather/Concat/Reshape arithmetic
over symbolic dims) and `opset11_constants` (weights in Constant nodes, initializers listed as graph inputs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# IR versions the exporters of each era wrote; onnxruntime loads all of them.
IR_FOR_OPSET = {11: 6, 13: 7, 15: 8, 17: 8, 18: 8}

Dim = int | str | None


class GraphBuilder:
    """Accumulates nodes and weights for one graph with deterministic names and seeded weights.

    With `weights_as_constants=True` weights become Constant nodes instead of initializers, as PaddlePaddle
    exports and as subgraph bodies need.
    """

    def __init__(self, seed: int = 0, weights_as_constants: bool = False, prefix: str = "") -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.weights_as_constants = weights_as_constants
        self.prefix = prefix
        self._counts: Counter[str] = Counter()

    def fresh(self, base: str) -> str:
        """Return a new unique name `prefix + base + _N`."""
        n = self._counts[base]
        self._counts[base] += 1
        return f"{self.prefix}{base}_{n}"

    def const(self, value: np.ndarray, name: str = "w", as_constant: bool | None = None) -> str:
        """Add a weight and return its tensor name (an initializer, or a Constant node's output)."""
        tname = self.fresh(name)
        tensor = numpy_helper.from_array(np.asarray(value), tname)
        if self.weights_as_constants if as_constant is None else as_constant:
            self.nodes.append(helper.make_node("Constant", [], [tname], name=f"{tname}_const", value=tensor))
        else:
            self.initializers.append(tensor)
        return tname

    def i64(self, values: Sequence[int] | int, name: str = "c") -> str:
        """Add an int64 constant (shape, axes, indices)."""
        return self.const(np.array(values, dtype=np.int64), name)

    def f32(self, values: Sequence[float] | float, name: str = "c") -> str:
        """Add a float32 constant."""
        return self.const(np.array(values, dtype=np.float32), name)

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: object) -> str | list[str]:
        """Add one node; returns its output name (or names when `n_out > 1`)."""
        name = self.fresh(op_type)
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    def he(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        """He-normal weights: keeps activation variance stable through ReLU layers."""
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1, bias: bool = False) -> str:
        """Conv with He-normal weights and 'same'-style padding, as PyTorch exports it."""
        w = self.const(self.he((cout, cin // group, k, k), (cin // group) * k * k), "conv.weight")
        ins = [x, w]
        if bias:
            ins.append(self.const((self.rng.standard_normal(cout) * 0.01).astype(np.float32), "conv.bias"))
        p = k // 2
        return self.op("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[p, p, p, p], group=group,
                       dilations=[1, 1])

    def bn(self, x: str, c: int, gamma_scale: float = 1.0, as_constant: bool | None = None) -> str:
        """Unfused BatchNormalization with realistic statistics (gamma ~1, beta ~0, var > 0)."""
        r = self.rng
        gamma = (gamma_scale * (1.0 + 0.1 * r.standard_normal(c))).astype(np.float32)
        beta = (0.05 * r.standard_normal(c)).astype(np.float32)
        mean = (0.05 * r.standard_normal(c)).astype(np.float32)
        var = r.uniform(0.5, 1.5, c).astype(np.float32)
        ins = [x] + [self.const(v, f"bn.{n}", as_constant) for v, n in
                     ((gamma, "weight"), (beta, "bias"), (mean, "running_mean"), (var, "running_var"))]
        return self.op("BatchNormalization", ins, epsilon=1e-5, momentum=0.9)

    def graph(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
              ) -> onnx.GraphProto:
        """Make a GraphProto from what was added."""
        return helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.initializers)

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
              opset: int = 17, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        """Make a ModelProto with a pinned IR version (no dependence on the installed onnx's default)."""
        m = helper.make_model(self.graph(name, inputs, outputs), producer_name="onnxopt.models",
                              opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=IR_FOR_OPSET.get(opset, 8))
        for k, v in (metadata or {}).items():
            m.metadata_props.add(key=k, value=v)
        return m


def tensor(name: str, shape: Sequence[Dim] | None, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A typed value info; `None` shape leaves the rank unknown."""
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def control_flow(seed: int = 0) -> onnx.ModelProto:
    """If whose branches hold Conv/Relu and MatMul, then a Loop accumulating 3 steps; weights inside subgraphs
    are Constant nodes and the bodies read outer-scope tensors, so passes must descend and resolve scopes."""
    b = GraphBuilder(seed)
    x = "input"
    cond = b.op("Greater", [b.op("ReduceMean", [x], keepdims=0), b.f32(0.0, "zero")])

    branches = []
    for tag in ("then", "else"):
        sb = GraphBuilder(seed + (1 if tag == "then" else 2), weights_as_constants=True, prefix=f"{tag}/")
        y = sb.op("Relu", [sb.conv(x, 3, 8, 3, bias=True)])
        if tag == "else":  # a different op mix: Conv -> Relu -> pointwise MatMul over channels
            y = sb.op("Transpose", [y], perm=[0, 2, 3, 1])
            y = sb.op("MatMul", [y, sb.const(sb.he((8, 8), 8), "mm.weight")])
            y = sb.op("Transpose", [y], perm=[0, 3, 1, 2])
        sb.nodes.append(helper.make_node("Identity", [y], [f"{tag}_y"], name=f"{tag}/out"))
        branches.append(sb.graph(f"{tag}_branch", [], [tensor(f"{tag}_y", [1, 8, 16, 16])]))
    y = b.op("If", [cond], then_branch=branches[0], else_branch=branches[1])
    feat = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)  # [1, 8]

    loop_bias = b.const((0.1 * b.rng.standard_normal(8)).astype(np.float32), "loop.bias")
    lb = GraphBuilder(seed + 3, weights_as_constants=True, prefix="body/")
    h = lb.op("MatMul", ["acc_in", lb.const((b.rng.standard_normal((8, 8)) * 0.3).astype(np.float32), "w")])
    h = lb.op("Tanh", [lb.op("Add", [h, loop_bias])])  # loop_bias comes from the outer scope
    lb.nodes.append(helper.make_node("Add", ["acc_in", h], ["acc_out"], name="body/acc"))
    lb.nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body/cond"))
    body = lb.graph("loop_body", [tensor("iter", [], TensorProto.INT64), tensor("cond_in", [], TensorProto.BOOL),
                                  tensor("acc_in", [1, 8])],
                    [tensor("cond_out", [], TensorProto.BOOL), tensor("acc_out", [1, 8])])
    trip = b.const(np.array(3, dtype=np.int64), "trip_count", as_constant=True)
    true = b.const(np.array(True), "cond", as_constant=True)
    acc = b.op("Loop", [trip, true, feat], body=body)
    b.nodes.append(helper.make_node("Identity", [acc], ["output"], name="output"))
    return b.model("control_flow", [tensor("input", [1, 3, 16, 16])], [tensor("output", [1, 8])])


def dynamic(seed: int = 0) -> onnx.ModelProto:
    """Input [batch, sequence, 64]: Shape -> Gather -> Concat -> Reshape chains mixing symbolic dims (not foldable)
    with static ones (foldable once shapes are inferred), a split into heads, and a ConstantOfShape mask."""
    b = GraphBuilder(seed)
    x = "input"
    shape = b.op("Shape", [x])
    batch = b.op("Unsqueeze", [b.op("Gather", [shape, b.i64(0, "idx")], axis=0), b.i64([0], "axes")])
    seq = b.op("Unsqueeze", [b.op("Gather", [shape, b.i64(1, "idx")], axis=0), b.i64([0], "axes")])
    feat = b.op("Gather", [shape, b.i64([2], "idx")], axis=0)           # static 64 once inferred
    head_dim = b.op("Div", [feat, b.i64([4], "heads")])                  # 16, foldable
    heads_shape = b.op("Concat", [batch, seq, b.i64([4], "heads"), head_dim], axis=0)
    h = b.op("Transpose", [b.op("Reshape", [x, heads_shape])], perm=[0, 2, 1, 3])  # [b, 4, s, 16]
    h = b.op("MatMul", [h, b.const(b.he((16, 16), 16), "w")])
    h = b.op("Relu", [h])
    h = b.op("Transpose", [h], perm=[0, 2, 1, 3])
    h = b.op("Reshape", [h, b.op("Concat", [batch, seq, b.i64([-1], "minus1")], axis=0)])
    # ConstantOfShape over the dynamic [batch, sequence] prefix: a mask of ones, scaled per position.
    prefix = b.op("Slice", [shape, b.i64([0], "start"), b.i64([2], "end")])
    ones = b.op("ConstantOfShape", [prefix], value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    pos = b.op("Cast", [b.op("Range", [b.i64(0, "zero"), b.op("Squeeze", [seq, b.i64([0], "axes")]),
                                          b.i64(1, "one")])], to=TensorProto.FLOAT)
    scale = b.op("Add", [b.op("Mul", [ones, b.op("Div", [pos, b.f32(100.0, "denom")])]), b.f32(1.0, "one")])
    y = b.op("Mul", [h, b.op("Unsqueeze", [scale, b.i64([2], "axes")])])
    b.nodes.append(helper.make_node("Add", [y, x], ["output"], name="output"))
    return b.model("dynamic", [tensor("input", ["batch", "sequence", 64])],
                   [tensor("output", ["batch", "sequence", 64])])


def opset11_constants(seed: int = 0) -> onnx.ModelProto:
    """Opset-11 CNN as PaddlePaddle and old exporters wrote it: conv/fc weights in Constant nodes, BatchNorm
    parameters as initializers that are also listed as graph inputs (IR 6), Clip with min/max inputs."""
    b = GraphBuilder(seed, weights_as_constants=True)
    x = "input"
    y = b.op("Relu", [b.bn(b.conv(x, 3, 16, 3, bias=True), 16, as_constant=False)])
    y = b.bn(b.conv(y, 16, 32, 3, stride=2, bias=True), 32, as_constant=False)
    y = b.op("Clip", [y, b.f32(0.0, "clip.min"), b.f32(6.0, "clip.max")])
    y = b.op("Reshape", [b.op("GlobalAveragePool", [y]), b.i64([0, -1], "shape")])
    y = b.op("Add", [b.op("MatMul", [y, b.const(b.he((32, 10), 32), "fc.weight")]),
                     b.f32(np.zeros(10, np.float32), "fc.bias")])
    b.nodes.append(helper.make_node("Softmax", [y], ["output"], name="output", axis=1))
    inits_as_inputs = [tensor(t.name, list(t.dims)) for t in b.initializers]
    return b.model("opset11_constants", [tensor("input", [1, 3, 32, 32]), *inits_as_inputs],
                   [tensor("output", [1, 10])], opset=11)
