"""FuseHardActivations: hard-swish / hard-sigmoid arithmetic becomes HardSwish / HardSigmoid; look-alikes stay."""

import numpy as np
import onnx
import pytest
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.models.fetch import fetch
from onnxopt.pass_manager import PassContext
from onnxopt.passes.fuse_hard_activations import FuseHardActivations

F32 = np.float32


def model(nodes, consts, opset=17, outputs=("y",), shape=(2, 3, 4, 4)):
    x = h.make_tensor_value_info("x", T.FLOAT, list(shape))
    g = h.make_graph(nodes, "g", [x], [h.make_tensor_value_info(o, T.FLOAT, None) for o in outputs],
                     [nh.from_array(np.asarray(v, F32), n) for n, v in consts.items()])
    return onnx.shape_inference.infer_shapes(h.make_model(g, opset_imports=[h.make_opsetid("", opset)]))


def feeds():
    # dense around the kinks at -3 and 3, and beyond them
    return {"x": np.linspace(-5, 5, 2 * 3 * 4 * 4, dtype=F32).reshape(2, 3, 4, 4)}


def run(m, ctx=None):
    out, _ = apply_passes(m, [FuseHardActivations()], ctx)
    assert_equivalent(m, out, feeds(), rtol=1e-6, atol=1e-6)
    return out


CONSTS = {"three": 3.0, "zero": 0.0, "six": 6.0, "sixth": 1 / 6}
RELU6 = [h.make_node("Add", ["x", "three"], ["a"]), h.make_node("Clip", ["a", "zero", "six"], ["r"])]


def swish_div(order="xr", scale="div"):
    mul_in = ["x", "r"] if order == "xr" else ["r", "x"]
    last = (h.make_node("Div", ["m", "six"], ["y"]) if scale == "div"
            else h.make_node("Mul", ["sixth", "m"], ["y"]))
    return [*RELU6, h.make_node("Mul", mul_in, ["m"]), last]


@pytest.mark.parametrize("order", ["xr", "rx"])
@pytest.mark.parametrize("scale", ["div", "mul"])
def test_hard_swish_at_opset_14(order, scale):
    assert op_types(run(model(swish_div(order, scale), CONSTS))) == ["HardSwish"]


def test_hard_swish_below_opset_14_is_hard_sigmoid_times_x():
    out = run(model(swish_div(), CONSTS, opset=13))
    assert op_types(out) == ["HardSigmoid", "Mul"]
    hs = out.graph.node[0]
    assert {a.name: round(a.f, 6) for a in hs.attribute} == {"alpha": round(1 / 6, 6), "beta": 0.5}


def test_clip_bounds_as_attributes_below_opset_11():
    nodes = [h.make_node("Add", ["x", "three"], ["a"]), h.make_node("Clip", ["a"], ["r"], min=0.0, max=6.0),
             h.make_node("Mul", ["x", "r"], ["m"]), h.make_node("Div", ["m", "six"], ["y"])]
    assert op_types(run(model(nodes, CONSTS, opset=10))) == ["HardSigmoid", "Mul"]


def test_scaled_gate_then_product_becomes_hard_swish():
    # x * (relu6(x + 3) / 6): the gate is rewritten to HardSigmoid first, then x * HardSigmoid(x) to HardSwish
    nodes = [*RELU6, h.make_node("Div", ["r", "six"], ["g"]), h.make_node("Mul", ["g", "x"], ["y"])]
    assert op_types(run(model(nodes, CONSTS))) == ["HardSwish"]


def test_hard_sigmoid_alone():
    nodes = [*RELU6, h.make_node("Mul", ["r", "sixth"], ["y"])]
    assert op_types(run(model(nodes, CONSTS))) == ["HardSigmoid"]


def test_x_times_pytorch_hard_sigmoid_becomes_hard_swish():
    nodes = [h.make_node("HardSigmoid", ["x"], ["g"], alpha=1 / 6, beta=0.5), h.make_node("Mul", ["x", "g"], ["y"])]
    assert op_types(run(model(nodes, {}))) == ["HardSwish"]
    ctx = PassContext()
    assert op_types(run(model(nodes, {}, opset=13), ctx)) == ["HardSigmoid", "Mul"]
    assert any("needs opset 14" in d.reason for d in ctx.declines)


@pytest.mark.parametrize("case,reason", [
    ("paddle_slope", "not a division by 6"),       # Paddle's hard_sigmoid (slope 0.2) is another function
    ("other_tensor", "multiplies another tensor"),  # y * relu6(x + 3) / 6
    ("shared_clip", "other uses"),                  # relu6(x + 3) is also a graph output
    ("not_three", "does not add 3"),
    ("bounds", "bounds are not [0, 6]"),
])
def test_declines(case, reason):
    consts = dict(CONSTS, two=2.0, five=5.0)
    outputs = ("y",)
    if case == "paddle_slope":
        nodes = [h.make_node("HardSigmoid", ["x"], ["g"], alpha=0.2, beta=0.5), h.make_node("Mul", ["x", "g"], ["y"])]
    elif case == "other_tensor":
        nodes = [*RELU6, h.make_node("Neg", ["x"], ["n"]), h.make_node("Mul", ["n", "r"], ["m"]),
                 h.make_node("Div", ["m", "six"], ["y"])]
    elif case == "shared_clip":
        nodes, outputs = swish_div(), ("y", "r")
    elif case == "not_three":
        nodes = [h.make_node("Add", ["x", "two"], ["a"]), *swish_div()[1:]]
    else:
        nodes = [RELU6[0], h.make_node("Clip", ["a", "zero", "five"], ["r"]), *swish_div()[2:]]
    m = model(nodes, consts, outputs=outputs)
    ctx = PassContext()
    assert op_types(run(m, ctx)) == op_types(m)
    assert any(reason in d.reason for d in ctx.declines), [d.reason for d in ctx.declines]


@pytest.mark.realmodel
def test_ppocr_cls_hard_swishes_fused():
    """PP-LCNet as paddle2onnx writes it: 18 x * clip(x + 3, 0, 6) / 6, opset 11 (so HardSigmoid * x)."""
    from onnxopt.models import datasets

    before = onnx.load(str(fetch("ppocr_cls")))
    ctx = PassContext()
    after, report = apply_passes(before, [FuseHardActivations()], ctx)
    n_before, n_after = op_types(before).count("HardSigmoid"), op_types(after).count("HardSigmoid")
    assert n_after - n_before == 18
    assert op_types(after).count("Div") == 0 and op_types(after).count("Clip") == 0
    x = datasets.text_lines(2, seed=7)
    assert_equivalent(before, after, {before.graph.input[0].name: x[0]}, rtol=1e-4, atol=1e-5)
