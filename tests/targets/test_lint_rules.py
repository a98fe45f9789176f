"""One hand-made model per lint rule that breaks exactly that rule (and is flagged), plus a clean model per target."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.targets import get_target

F = TensorProto.FLOAT
NP = {"int8": np.int8, "uint8": np.uint8}


class G:
    """A tiny graph builder: initializers, nodes, one float input ``x`` [1, 4, 8, 8]."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs = [helper.make_tensor_value_info("x", F, [1, 4, 8, 8])]
        self.n = 0

    def const(self, value, name: str | None = None) -> str:
        self.n += 1
        name = name or f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        self.n += 1
        out = f"{op.lower()}{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.n}", **attrs))
        return out

    def qdq(self, x: str, scale=0.02, zp=0, dtype="int8", axis: int | None = None) -> str:
        s, z = self.const(np.asarray(scale, np.float32)), self.const(np.asarray(zp, NP[dtype]))
        kw = {} if axis is None else {"axis": axis}
        return self.node("DequantizeLinear", [self.node("QuantizeLinear", [x, s, z], **kw), s, z], **kw)

    def weight(self, shape=(8, 4, 3, 3), dtype="int8", zp=0, axis=0, per_channel=True, low=-127) -> str:
        rng = np.random.default_rng(0)
        high = 128 if low <= -127 or low >= 0 else -low
        w = rng.integers(low, high, size=shape).astype(NP[dtype])
        w.reshape(-1)[0] = low
        n = shape[axis] if per_channel else 1
        scale = np.full(n, 0.01, np.float32) if per_channel else np.float32(0.01)
        zps = np.full(n, zp, NP[dtype]) if per_channel else np.asarray(zp, NP[dtype])
        kw = {"axis": axis} if per_channel else {}
        return self.node("DequantizeLinear", [self.const(w), self.const(scale), self.const(zps)], **kw)

    def model(self, out: str, opset: int = 13) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "g", self.inputs, [helper.make_tensor_value_info(out, F, None)],
                              self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m = onnx.shape_inference.infer_shapes(m)
        onnx.checker.check_model(m, full_check=True)
        return m


def trt_model(**bad) -> onnx.ModelProto:
    """Clean for tensorrt: symmetric int8 activations, narrow per-channel weights, float conv output."""
    g = G()
    x = g.qdq("x", **bad.get("act", {}))
    w = g.weight(**bad.get("w", {}))
    y = g.node("Conv", [x, w], pads=[1, 1, 1, 1])
    return g.model(g.node("Relu", [y]), opset=bad.get("opset", 13))


def arm_model(**bad) -> onnx.ModelProto:
    """Clean for arm: S8S8 Conv group with Q on its output, per-channel weights with zero point 0."""
    g = G()
    x = g.qdq("x", **{"zp": 3, **bad.get("act", {})})
    w = g.weight(**bad.get("w", {}))
    y = g.node("Conv", [x, w], pads=[1, 1, 1, 1])
    return g.model(g.qdq(y, **{"zp": -5, **bad.get("out", {})}))


def x86_model(**bad) -> onnx.ModelProto:
    """Clean for x86-vnni and x86-avx2: U8S8 with 7-bit weights."""
    g = G()
    x = g.qdq("x", **{"zp": 128, "dtype": "uint8", **bad.get("act", {})})
    w = g.weight(**{"low": -64, **bad.get("w", {})})
    w_node = g.nodes[-1]
    if bad.get("w7") is False:
        arr = numpy_helper.to_array(next(i for i in g.inits if i.name == w_node.input[0])).copy()
        arr.reshape(-1)[1] = 100
        g.inits = [numpy_helper.from_array(arr, i.name) if i.name == w_node.input[0] else i for i in g.inits]
    y = g.node("Conv", [x, w], pads=[1, 1, 1, 1])
    return g.model(g.qdq(y, zp=128, dtype="uint8"))


def rules(target: str, model: onnx.ModelProto) -> set[str]:
    return {v.rule for v in get_target(target).lint(model)}


@pytest.mark.parametrize("target,builder", [("tensorrt", trt_model), ("arm", arm_model), ("x86-vnni", x86_model),
                                            ("x86-avx2", x86_model)])
def test_clean_models_pass(target, builder):
    assert get_target(target).lint(builder()) == []


# ---- tensorrt ----------------------------------------------------------------------------------------------------

def _residual(conv_branch_qdq: bool) -> onnx.ModelProto:
    g = G()
    x = g.qdq("x")
    y = g.node("Conv", [x, g.weight()], pads=[1, 1, 1, 1])
    branch = g.qdq(y) if conv_branch_qdq else y
    skip = g.qdq(g.node("Conv", [x, g.weight(shape=(8, 4, 1, 1))]))
    return g.model(g.node("Conv", [g.qdq(g.node("Add", [branch, skip])), g.weight(shape=(4, 8, 1, 1))]))


def _output_qdq() -> onnx.ModelProto:
    g = G()
    y = g.node("Conv", [g.qdq("x"), g.weight()], pads=[1, 1, 1, 1])
    return g.model(g.node("Relu", [g.qdq(y)]))


def _concat_scales() -> onnx.ModelProto:
    g = G()
    c = g.node("Concat", [g.qdq(g.node("Relu", ["x"]), scale=0.02), g.qdq(g.node("Sigmoid", ["x"]), scale=0.004)],
               axis=1)
    return g.model(c)


def _softmax_qdq() -> onnx.ModelProto:
    g = G()
    return g.model(g.node("Softmax", [g.qdq("x")], axis=-1))


def _integer_ops() -> onnx.ModelProto:
    g = G()
    q, s, z = [f"dq_{k}" for k in "ysz"]
    g.nodes.append(helper.make_node("DynamicQuantizeLinear", ["x"], [q, s, z], name="dql"))
    w = g.const(np.ones((8, 8), np.uint8))
    mi = g.node("MatMulInteger", [q, w, z])
    return g.model(g.node("Cast", [mi], to=F))


def _scale_from_input() -> onnx.ModelProto:
    g = G()
    g.inputs.append(helper.make_tensor_value_info("s", F, []))
    z = g.const(np.int8(0))
    dq = g.node("DequantizeLinear", [g.node("QuantizeLinear", ["x", "s", z]), "s", z])
    return g.model(g.node("Conv", [dq, g.weight()], pads=[1, 1, 1, 1]))


def _weight_from_input() -> onnx.ModelProto:
    g = G()
    g.inputs.append(helper.make_tensor_value_info("w", F, [8, 4, 3, 3]))
    return g.model(g.node("Conv", [g.qdq("x"), "w"], pads=[1, 1, 1, 1]))


def _contrib_gelu() -> onnx.ModelProto:
    g = G()
    model = g.model(g.node("Relu", ["x"]))
    model.graph.node[0].op_type, model.graph.node[0].domain = "Gelu", "com.microsoft"
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


TRT_CASES = {
    "trt-opset": lambda: trt_model(opset=12, w={"per_channel": False}),
    "trt-zero-point": lambda: trt_model(act={"zp": 4}),
    "trt-qdq-dtype": lambda: trt_model(act={"dtype": "uint8", "zp": 0}),
    "trt-integer-ops": _integer_ops,
    "trt-weight-range": lambda: trt_model(w={"low": -128}),
    "trt-weight-axis": lambda: trt_model(w={"axis": 1}),
    "trt-activation-per-tensor": lambda: trt_model(act={"scale": [0.02] * 4, "zp": [0] * 4, "axis": 1}),
    "trt-weight-constant": _weight_from_input,
    "trt-output-qdq": _output_qdq,
    "trt-residual-add": lambda: _residual(True),
    "trt-concat-scale": _concat_scales,
    "trt-high-precision": _softmax_qdq,
    "trt-constant-qparams": _scale_from_input,
    "trt-custom-domain": _contrib_gelu,
}


@pytest.mark.parametrize("rule", sorted(TRT_CASES))
def test_tensorrt_rule_flags_its_model(rule):
    assert rules("tensorrt", TRT_CASES[rule]()) == {rule}


def test_tensorrt_skip_only_residual_is_clean():
    assert rules("tensorrt", _residual(False)) == set()


def _residual_float_skip() -> onnx.ModelProto:
    """Identity block with nothing quantized on the Add: Conv output + float skip (the network input)."""
    g = G()
    y = g.node("Conv", [g.qdq("x"), g.weight(shape=(4, 4, 3, 3))], pads=[1, 1, 1, 1])
    return g.model(g.node("Add", [y, "x"]))


def _downsample_both_float() -> onnx.ModelProto:
    """Downsample block (3x3 main conv, 1x1 shortcut conv on the same input), neither Add input quantized."""
    g = G()
    x = g.qdq("x")
    y = g.node("Conv", [x, g.weight()], pads=[1, 1, 1, 1])
    s = g.node("Conv", [x, g.weight(shape=(8, 4, 1, 1))])
    return g.model(g.node("Add", [y, s]))


@pytest.mark.parametrize("build", [_residual_float_skip, _downsample_both_float])
def test_tensorrt_residual_add_with_no_quantized_input_is_flagged(build):
    found = get_target("tensorrt").lint(build())
    assert {v.rule for v in found} == {"trt-residual-add"} and len(found) == 1
    assert "neither input" in found[0].message


def test_tensorrt_residual_add_with_constant_or_transformer_branch_is_clean():
    g = G()  # Conv + constant bias: not a residual
    y = g.node("Conv", [g.qdq("x"), g.weight(shape=(4, 4, 3, 3))], pads=[1, 1, 1, 1])
    assert rules("tensorrt", g.model(g.node("Add", [y, g.const(np.ones((1, 4, 1, 1), np.float32))]))) == set()
    g = G()  # MatMul branch + float skip (a transformer residual): not held to the Conv rule
    m = g.node("MatMul", [g.qdq("x"), g.weight(shape=(8, 8), axis=1)])
    assert rules("tensorrt", g.model(g.node("Add", [m, "x"]))) == set()


def test_residual_shortcut_picks_the_1x1_downsample_conv():
    import onnx_graphsurgeon as gs

    from onnxopt.targets.tensorrt_residual import residual_shortcut

    for swap in (False, True):
        m = _downsample_both_float()
        add = m.graph.node[-1]
        if swap:
            add.input[0], add.input[1] = add.input[1], add.input[0]
        graph = gs.import_onnx(m)
        node = next(n for n in graph.nodes if n.op == "Add")
        s = residual_shortcut(node)
        assert s is not None
        conv = node.inputs[s].inputs[0]
        assert conv.op == "Conv" and conv.inputs[1].inputs[0].inputs[0].values.shape[2:] == (1, 1)


# ---- arm ---------------------------------------------------------------------------------------------------------

def _arm_avgpool_int8() -> onnx.ModelProto:
    g = G()
    return g.model(g.qdq(g.node("AveragePool", [g.qdq("x")], kernel_shape=[2, 2]), zp=0))


ARM_CASES = {
    "arm-constant-qparams": lambda: _arm_scale_from_input(),
    "arm-activation-per-tensor": lambda: arm_model(act={"scale": [0.02] * 4, "zp": [3] * 4, "axis": 1}),
    "arm-weight-zero-point": lambda: arm_model(w={"zp": 2, "low": -120}),
    "arm-per-channel-uint8": lambda: _arm_uint8_per_channel(),
    "arm-mixed-types": lambda: arm_model(act={"dtype": "uint8", "zp": 128}, out={"dtype": "uint8", "zp": 128}),
    "arm-xnnpack": _arm_avgpool_int8,
}


def _arm_scale_from_input() -> onnx.ModelProto:
    g = G()
    g.inputs.append(helper.make_tensor_value_info("s", F, []))
    z = g.const(np.int8(0))
    dq = g.node("DequantizeLinear", [g.node("QuantizeLinear", ["x", "s", z]), "s", z])
    return g.model(g.qdq(g.node("Conv", [dq, g.weight()], pads=[1, 1, 1, 1])))


def _arm_uint8_per_channel() -> onnx.ModelProto:
    g = G()
    x = g.qdq("x", zp=128, dtype="uint8")
    w = g.weight(dtype="uint8", zp=0, low=0)
    return g.model(g.qdq(g.node("Conv", [x, w], pads=[1, 1, 1, 1]), zp=128, dtype="uint8"))


@pytest.mark.parametrize("rule", sorted(ARM_CASES))
def test_arm_rule_flags_its_model(rule):
    assert rules("arm", ARM_CASES[rule]()) == {rule}


def test_xnnpack_report_names_ops_it_does_not_take():
    from onnxopt.targets.arm import xnnpack_report

    g = G()
    m = g.model(g.qdq(g.node("Add", [g.qdq("x"), g.qdq("x", scale=0.03)])))
    report = xnnpack_report(m)
    assert [v.rule for v in report] == ["xnnpack-not-taken"] and "Add" in report[0].message
    assert get_target("arm").lint(m) == []


# ---- x86 ---------------------------------------------------------------------------------------------------------

def _qlinearconv_s8() -> onnx.ModelProto:
    g = G()
    s, z = g.const(np.float32(0.02)), g.const(np.int8(0))
    xq = g.node("QuantizeLinear", ["x", s, z])
    w = g.const(np.ones((8, 4, 3, 3), np.int8))
    ws, wz = g.const(np.float32(0.01)), g.const(np.int8(0))
    y = g.node("QLinearConv", [xq, s, z, w, ws, wz, s, z], pads=[1, 1, 1, 1])
    return g.model(g.node("DequantizeLinear", [y, s, z]))


X86_CASES = {
    "constant-qparams": lambda: _x86_scale_from_input(),
    "activation-per-tensor": lambda: x86_model(act={"scale": [0.02] * 4, "zp": [128] * 4, "axis": 1}),
    "qoperator-s8s8": _qlinearconv_s8,
    "activation-dtype": lambda: x86_model(act={"dtype": "int8", "zp": 0}),
}


def _x86_scale_from_input() -> onnx.ModelProto:
    g = G()
    g.inputs.append(helper.make_tensor_value_info("s", F, []))
    z = g.const(np.uint8(128))
    dq = g.node("DequantizeLinear", [g.node("QuantizeLinear", ["x", "s", z]), "s", z])
    return g.model(g.qdq(g.node("Conv", [dq, g.weight(low=-64)], pads=[1, 1, 1, 1]), zp=128, dtype="uint8"))


@pytest.mark.parametrize("target", ["x86-vnni", "x86-avx2"])
@pytest.mark.parametrize("rule", sorted(X86_CASES))
def test_x86_rule_flags_its_model(target, rule):
    prefix = "x86" if target == "x86-vnni" else "x86-avx2"
    assert rules(target, X86_CASES[rule]()) == {f"{prefix}-{rule}"}


def test_avx2_saturation_rule_and_vnni_accepts_full_range():
    m = x86_model(w7=False)
    assert rules("x86-avx2", m) == {"x86-avx2-saturation"}
    assert rules("x86-vnni", m) == set()


def test_violations_are_one_line():
    for rule, build in TRT_CASES.items():
        for v in get_target("tensorrt").lint(build()):
            assert "\n" not in str(v) and str(v).startswith(rule)
