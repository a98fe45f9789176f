"""FuseMatMulAdd: rank-2 MatMul + bias becomes Gemm; rank-3 and non-constant cases stay."""

import numpy as np
import onnx
import pytest
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.pass_manager import PassContext
from onnxopt.passes.fuse_matmul_add import FuseMatMulAdd

RNG = np.random.default_rng(0)  # replaced in each test by the test's own generator (conftest.py: rng)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def model(nodes, inits, shape=(3, 4), extra_inputs=()):
    x = h.make_tensor_value_info("x", T.FLOAT, list(shape))
    g = h.make_graph(nodes, "g", [x, *extra_inputs], [h.make_tensor_value_info("y", T.FLOAT, None)],
                     [nh.from_array(np.asarray(v), n) for n, v in inits])
    return onnx.shape_inference.infer_shapes(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))


def run(m, ctx=None, feeds=None):
    out, _ = apply_passes(m, [FuseMatMulAdd()], ctx)
    assert_equivalent(m, out, feeds)
    return out


@pytest.mark.parametrize("bshape,order", [((5,), "mb"), ((1, 5), "bm"), ((), "mb")])
def test_fuses(bshape, order):
    ins = ["m", "b"] if order == "mb" else ["b", "m"]
    m = model([h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Add", ins, ["y"])],
              [("w", f32(4, 5)), ("b", f32(*bshape))])
    assert op_types(run(m)) == ["Gemm"]


@pytest.mark.parametrize("shape,bshape,reason", [
    ((2, 3, 4), (5,), "rank 3"),
    ((3, 4), (3, 5), "not broadcast along the last axis"),
])
def test_declines(shape, bshape, reason):
    m = model([h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Add", ["m", "b"], ["y"])],
              [("w", f32(4, 5)), ("b", f32(*bshape))], shape=shape)
    ctx = PassContext()
    assert op_types(run(m, ctx)) == ["MatMul", "Add"]
    assert any(reason in d.reason for d in ctx.declines), [d.reason for d in ctx.declines]


def test_declines_non_constant_weight():
    m = model([h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Add", ["m", "b"], ["y"])], [("b", f32(5))],
              extra_inputs=[h.make_tensor_value_info("w", T.FLOAT, [4, 5])])
    ctx = PassContext()
    assert op_types(run(m, ctx)) == ["MatMul", "Add"]
    assert any("weight is not a constant" in d.reason for d in ctx.declines)


def test_inside_if_subgraph():
    then_g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Add", ["m", "b"], ["t"])], "then",
                          [], [h.make_tensor_value_info("t", T.FLOAT, [3, 5])],
                          [nh.from_array(f32(4, 5), "w"), nh.from_array(f32(5), "b")])
    else_g = h.make_graph([h.make_node("MatMul", ["x", "w2"], ["e"])], "else", [],
                          [h.make_tensor_value_info("e", T.FLOAT, [3, 5])], [nh.from_array(f32(4, 5), "w2")])
    m = model([h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)], [],
              extra_inputs=[h.make_tensor_value_info("cond", T.BOOL, [])])
    out, _ = apply_passes(m, [FuseMatMulAdd()])
    assert "Gemm" in op_types(out)
    x = f32(3, 4)
    for c in (True, False):
        assert_equivalent(m, out, {"x": x, "cond": np.array(c)})
