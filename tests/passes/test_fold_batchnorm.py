"""FoldBatchNorm: BN folded into Conv / ConvTranspose (groups) / Gemm (transB), else Mul+Add; declines."""

import numpy as np
import onnx
import pytest
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.pass_manager import PassContext
from onnxopt.passes.fold_batchnorm import FoldBatchNorm

RNG = np.random.default_rng(0)  # replaced in each test by the test's own generator (conftest.py: rng)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def bn_inits(c, prefix="bn"):
    return [(f"{prefix}_s", f32(c)), (f"{prefix}_b", f32(c)), (f"{prefix}_m", f32(c)),
            (f"{prefix}_v", (np.abs(f32(c)) + 0.1).astype(np.float32))]


def bn(x, y, prefix="bn", **kw):
    return h.make_node("BatchNormalization", [x] + [f"{prefix}_{k}" for k in "sbmv"], [y], **kw)


def model(nodes, inits, shape, opset=17, extra_inputs=(), const_nodes=False):
    x = h.make_tensor_value_info("x", T.FLOAT, list(shape))
    tensors = [nh.from_array(np.asarray(v), n) for n, v in inits]
    if const_nodes:
        nodes = [h.make_node("Constant", [], [t.name], value=t) for t in tensors] + list(nodes)
        tensors = []
    g = h.make_graph(nodes, "g", [x, *extra_inputs], [h.make_tensor_value_info("y", T.FLOAT, None)], tensors)
    return onnx.shape_inference.infer_shapes(h.make_model(g, opset_imports=[h.make_opsetid("", opset)]))


def run(m, ctx=None, feeds=None):
    out, _ = apply_passes(m, [FoldBatchNorm()], ctx)
    assert_equivalent(m, out, feeds)
    return out


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("const_nodes", [False, True])
def test_conv(bias, const_nodes):
    inits = [("w", f32(8, 3, 3, 3))] + ([("b", f32(8))] if bias else []) + bn_inits(8)
    m = model([h.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["c"], pads=[1, 1, 1, 1]), bn("c", "y")],
              inits, (1, 3, 6, 6), const_nodes=const_nodes)
    out = run(m)
    assert [t for t in op_types(out) if t != "Constant"] == ["Conv"]


def test_grouped_conv_transpose():
    inits = [("w", f32(4, 3, 3, 3)), ("b", f32(6))] + bn_inits(6)
    m = model([h.make_node("ConvTranspose", ["x", "w", "b"], ["c"], group=2), bn("c", "y")], inits, (1, 4, 5, 5))
    assert op_types(run(m)) == ["ConvTranspose"]


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (3, 5)])
def test_gemm(trans_b, c_shape):
    w = f32(5, 4) if trans_b else f32(4, 5)
    inits = [("w", w)] + ([("c", f32(*c_shape))] if c_shape else []) + bn_inits(5)
    gemm = h.make_node("Gemm", ["x", "w"] + (["c"] if c_shape else []), ["g"], transB=trans_b, alpha=0.5, beta=2.0)
    m = model([gemm, bn("g", "y")], inits, (3, 4))
    assert op_types(run(m)) == ["Gemm"]


def test_decomposes_without_producer():
    m = model([h.make_node("Relu", ["x"], ["r"]), bn("r", "y")], bn_inits(3), (2, 3, 4, 4))
    ctx = PassContext()
    out = run(m, ctx)
    assert op_types(out) == ["Relu", "Mul", "Add"]
    assert any("not produced by a Conv" in d.reason for d in ctx.declines)


def test_conv_with_other_consumer_decomposes():
    inits = [("w", f32(4, 3, 1, 1))] + bn_inits(4)
    m = model([h.make_node("Conv", ["x", "w"], ["c"]), bn("c", "d"), h.make_node("Add", ["c", "d"], ["y"])],
              inits, (1, 3, 4, 4))
    ctx = PassContext()
    out = run(m, ctx)
    assert "BatchNormalization" not in op_types(out) and "Conv" in op_types(out)
    assert any("other consumers" in d.reason for d in ctx.declines)


def test_declines_non_constant_params_and_unknown_rank():
    inputs = [h.make_tensor_value_info("bn_s", T.FLOAT, [3])]
    inits = bn_inits(3)[1:]
    m = model([bn("x", "y")], inits, (2, 3, 4), extra_inputs=inputs)
    ctx = PassContext()
    out = run(m, ctx)
    assert op_types(out) == ["BatchNormalization"]
    assert any("not constants" in d.reason for d in ctx.declines)


def test_declines_when_decompose_switched_off():
    m = model([h.make_node("Relu", ["x"], ["r"]), bn("r", "y")], bn_inits(3), (2, 3, 4, 4))
    ctx = PassContext(options={"fold_batchnorm.decompose": False})
    out = run(m, ctx)
    assert op_types(out) == ["Relu", "BatchNormalization"]


def test_inside_if_subgraph():
    then_g = h.make_graph([h.make_node("Conv", ["x", "w"], ["c"]), bn("c", "t")], "then", [],
                          [h.make_tensor_value_info("t", T.FLOAT, [1, 4, 4, 4])],
                          [nh.from_array(v, n) for n, v in [("w", f32(4, 3, 1, 1))] + bn_inits(4)])
    else_g = h.make_graph([bn("x", "e", prefix="bo")], "else", [],
                          [h.make_tensor_value_info("e", T.FLOAT, [1, 3, 4, 4])])
    m = model([h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)], bn_inits(3, "bo"),
              (1, 3, 4, 4), extra_inputs=[h.make_tensor_value_info("cond", T.BOOL, [])])
    out, _ = apply_passes(m, [FoldBatchNorm()])
    assert "BatchNormalization" not in op_types(out)
    x = f32(1, 3, 4, 4)
    for cond in (True, False):
        assert_equivalent(m, out, {"x": x, "cond": np.array(cond)})


@pytest.mark.parametrize("op,shape,attrs", [("Conv", (8, 3, 3, 3), {}), ("ConvTranspose", (4, 3, 3, 3), {"group": 2}),
                                            ("Gemm", (5, 6), {}), ("Gemm", (6, 5), {"transB": 1})])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_scaled_weights_round_once_from_float64(op, shape, attrs, dtype):
    from onnxopt.passes.fold_batchnorm import scale_output_channels
    w = (RNG.standard_normal(shape) * 100).astype(dtype)
    n = shape[0] if op == "Conv" or attrs.get("transB") else shape[1] * attrs.get("group", 1)
    scale = RNG.standard_normal(n)
    wide = scale_output_channels(op, w.astype(np.float64), scale, attrs)
    got = scale_output_channels(op, w, scale, attrs, dtype)
    assert wide.dtype == np.float64 and got.dtype == dtype
    assert got.tobytes() == wide.astype(dtype).tobytes()
    assert scale_output_channels(op, w, RNG.standard_normal(n + 1), attrs, dtype) is None
