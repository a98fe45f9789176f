"""FoldConvAffine: per-channel Mul/Add/Sub/Div after a Conv folded into its weight and bias; declines."""

import numpy as np
import onnx
import pytest
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.pass_manager import PassContext
from onnxopt.passes.fold_conv_affine import FoldConvAffine

RNG = np.random.default_rng(0)  # replaced in each test by the test's own generator (conftest.py: rng)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def model(nodes, inits, shape=(1, 3, 5, 5), extra_inputs=()):
    x = h.make_tensor_value_info("x", T.FLOAT, list(shape))
    g = h.make_graph(nodes, "g", [x, *extra_inputs], [h.make_tensor_value_info("y", T.FLOAT, None)],
                     [nh.from_array(np.asarray(v), n) for n, v in inits])
    return onnx.shape_inference.infer_shapes(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))


def run(m, ctx=None, feeds=None):
    out, _ = apply_passes(m, [FoldConvAffine()], ctx)
    assert_equivalent(m, out, feeds)
    return out


@pytest.mark.parametrize("op,order,cshape", [
    ("Mul", "cv", (4, 1, 1)), ("Mul", "vc", (1, 4, 1, 1)), ("Mul", "cv", ()), ("Add", "vc", (4, 1, 1)),
    ("Add", "cv", (1,)), ("Sub", "cv", (1, 4, 1, 1)), ("Div", "cv", (4, 1, 1)),
])
def test_folds(op, order, cshape):
    c = (np.abs(f32(*cshape)) + 0.5).astype(np.float32)
    ins = ["c", "k"] if order == "cv" else ["k", "c"]
    m = model([h.make_node("Conv", ["x", "w"], ["c"]), h.make_node(op, ins, ["y"])], [("w", f32(4, 3, 3, 3)), ("k", c)])
    assert op_types(run(m)) == ["Conv"]


def test_chain_with_bias_and_conv_transpose():
    m = model([h.make_node("ConvTranspose", ["x", "w", "b"], ["c"], group=3), h.make_node("Mul", ["c", "k"], ["d"]),
               h.make_node("Add", ["d", "a"], ["y"])],
              [("w", f32(3, 2, 3, 3)), ("b", f32(6)), ("k", f32(6, 1, 1)), ("a", f32(1, 6, 1, 1))])
    out, _ = apply_passes(m, [FoldConvAffine(), FoldConvAffine()])
    assert_equivalent(m, out)
    assert op_types(out) == ["ConvTranspose"]


@pytest.mark.parametrize("op,ins,cshape,reason", [
    ("Mul", ["c", "k"], (4,), "not per output channel"),          # [C] broadcasts on the last axis
    ("Add", ["c", "k"], (1, 4, 3, 1), "not per output channel"),
    ("Sub", ["k", "c"], (4, 1, 1), "subtrahend is not a constant"),
    ("Div", ["k", "c"], (4, 1, 1), "is not a constant"),
])
def test_declines(op, ins, cshape, reason):
    m = model([h.make_node("Conv", ["x", "w"], ["c"]), h.make_node(op, ins, ["y"])],
              [("w", f32(4, 3, 3, 3)), ("k", (np.abs(f32(*cshape)) + 0.5).astype(np.float32))], shape=(1, 3, 5, 6))
    ctx = PassContext()
    out = run(m, ctx)
    assert op_types(out) == ["Conv", op]
    assert any(reason in d.reason for d in ctx.declines), [d.reason for d in ctx.declines]


def test_declines_other_consumer():
    m = model([h.make_node("Conv", ["x", "w"], ["c"]), h.make_node("Mul", ["c", "k"], ["d"]),
               h.make_node("Add", ["c", "d"], ["y"])], [("w", f32(4, 3, 3, 3)), ("k", f32(4, 1, 1))])
    ctx = PassContext()
    assert op_types(run(m, ctx)) == ["Conv", "Mul", "Add"]
    assert any("other consumers" in d.reason for d in ctx.declines)


def test_inside_if_subgraph():
    then_g = h.make_graph([h.make_node("Conv", ["x", "w"], ["c"]), h.make_node("Mul", ["c", "k"], ["t"])], "then", [],
                          [h.make_tensor_value_info("t", T.FLOAT, [1, 4, 3, 3])],
                          [nh.from_array(f32(4, 3, 3, 3), "w"), nh.from_array(f32(4, 1, 1), "k")])
    else_g = h.make_graph([h.make_node("Conv", ["x", "w2"], ["e"])], "else", [],
                          [h.make_tensor_value_info("e", T.FLOAT, [1, 4, 3, 3])],
                          [nh.from_array(f32(4, 3, 3, 3), "w2")])
    m = model([h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)], [],
              extra_inputs=[h.make_tensor_value_info("cond", T.BOOL, [])])
    out, _ = apply_passes(m, [FoldConvAffine()])
    assert "Mul" not in op_types(out)
    x = f32(1, 3, 5, 5)
    for cond in (True, False):
        assert_equivalent(m, out, {"x": x, "cond": np.array(cond)})
