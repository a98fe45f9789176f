"""MergeReshapes: chains of view ops become one Reshape, with 0 and -1 handled exactly."""

import numpy as np
import onnx
import pytest
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.pass_manager import PassContext
from onnxopt.passes.merge_reshapes import MergeReshapes

I64 = np.int64


def model(nodes, inits=(), shape=(2, 3, 4, 5), extra_inputs=()):
    x = h.make_tensor_value_info("x", T.FLOAT, list(shape))
    g = h.make_graph(nodes, "g", [x, *extra_inputs], [h.make_tensor_value_info("y", T.FLOAT, None)],
                     [nh.from_array(np.asarray(v, I64), n) for n, v in inits])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(m)


def run(m, ctx=None, feeds=None):
    out, _ = apply_passes(m, [MergeReshapes()], ctx)
    assert_equivalent(m, out, feeds)
    return out


R = h.make_node
CASES = {
    "reshape_reshape": ([R("Reshape", ["x", "a"], ["t"]), R("Reshape", ["t", "b"], ["y"])],
                        [("a", [6, 20]), ("b", [0, -1, 2])], (2, 3, 4, 5)),
    "copy_zero_dynamic": ([R("Reshape", ["x", "a"], ["t"]), R("Reshape", ["t", "b"], ["y"])],
                          [("a", [0, 3, -1]), ("b", [0, 0, 5, 4])], ("N", 3, 4, 5)),
    "flatten_then_reshape": ([R("Flatten", ["x"], ["t"], axis=1), R("Reshape", ["t", "b"], ["y"])],
                             [("b", [0, 12, 5])], ("N", 3, 4, 5)),
    "reshape_then_unsqueeze": ([R("Reshape", ["x", "a"], ["t"]), R("Unsqueeze", ["t", "ax"], ["y"])],
                               [("a", [0, 60]), ("ax", [1, 3])], ("N", 3, 4, 5)),
    "reshape_then_squeeze": ([R("Reshape", ["x", "a"], ["t"]), R("Squeeze", ["t", "ax"], ["y"])],
                             [("a", [0, 1, 60]), ("ax", [1])], ("N", 3, 4, 5)),
    "reshape_then_flatten": ([R("Reshape", ["x", "a"], ["t"]), R("Flatten", ["t"], ["y"], axis=2)],
                             [("a", [0, 3, 2, 10])], ("N", 3, 4, 5)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_merges(name):
    nodes, inits, shape = CASES[name]
    m = model(nodes, inits, shape)
    n = 3 if "N" in shape else 2
    out = run(m, feeds={"x": np.random.default_rng(1).standard_normal((n, 3, 4, 5)).astype(np.float32)})
    assert op_types(out) == ["Reshape"]


def test_inner_with_other_consumer_stays():
    m = model([R("Reshape", ["x", "a"], ["t"]), R("Reshape", ["t", "b"], ["u"]), R("ReduceSum", ["t"], ["s"]),
               R("ReduceSum", ["u"], ["v"]), R("Add", ["s", "v"], ["y"])], [("a", [6, 20]), ("b", [120])])
    out = run(m)
    assert op_types(out).count("Reshape") == 2
    reshape_inputs = [n.input[0] for n in out.graph.node if n.op_type == "Reshape"]
    assert reshape_inputs == ["x", "x"]


def test_declines_unknown_copied_dim_with_inferred_dim():
    # inner -1 makes t's dim 1 dynamic; outer copies it (0) and already infers another dim
    m = model([R("Reshape", ["x", "a"], ["t"]), R("Reshape", ["t", "b"], ["y"])],
              [("a", [0, -1, 5]), ("b", [0, 0, -1])], ("N", "C", 4, 5))
    ctx = PassContext()
    out = run(m, ctx, feeds={"x": np.ones((2, 3, 4, 5), np.float32)})
    assert op_types(out) == ["Reshape", "Reshape"]
    assert any("already inferred" in d.reason for d in ctx.declines)


def test_declines_allowzero():
    m = model([R("Reshape", ["x", "a"], ["t"], allowzero=1), R("Reshape", ["t", "b"], ["y"])],
              [("a", [0, 3, 4, 5]), ("b", [-1])], (0, 3, 4, 5))
    ctx = PassContext()
    out, _ = apply_passes(m, [MergeReshapes()], ctx)
    assert op_types(out) == ["Reshape", "Reshape"]
    assert any("allowzero" in d.reason for d in ctx.declines)


def test_inside_if_subgraph():
    then_g = h.make_graph([R("Reshape", ["x", "a"], ["t1"]), R("Reshape", ["t1", "b"], ["t2"])], "then", [],
                          [h.make_tensor_value_info("t2", T.FLOAT, None)],
                          [nh.from_array(np.array([6, 20], I64), "a"), nh.from_array(np.array([120], I64), "b")])
    else_g = h.make_graph([R("Reshape", ["x", "c"], ["e"])], "else", [],
                          [h.make_tensor_value_info("e", T.FLOAT, None)], [nh.from_array(np.array([-1], I64), "c")])
    m = model([R("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
              extra_inputs=[h.make_tensor_value_info("cond", T.BOOL, [])])
    out, _ = apply_passes(m, [MergeReshapes()])
    assert op_types(out).count("Reshape") == 2
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    for cond in (True, False):
        assert_equivalent(m, out, {"x": x, "cond": np.array(cond)})


def test_shape_built_from_own_shape_becomes_constant():
    # Reshape(x, Concat(Cast(Slice(Shape(x), 0, 1)), [-1])) == Reshape(x, [0, -1]), x with a dynamic batch
    m = model([R("Shape", ["x"], ["s"]), R("Cast", ["s"], ["s32"], to=T.INT32),
               R("Slice", ["s32", "z", "o"], ["b"]), R("Cast", ["b"], ["b64"], to=T.INT64),
               R("Concat", ["b64", "m1"], ["shape"], axis=0), R("Reshape", ["x", "shape"], ["y"])],
              [("z", [0]), ("o", [1]), ("m1", [-1])], ("N", 3, 4, 5))
    out = run(m, feeds={"x": np.ones((2, 3, 4, 5), np.float32)})
    assert op_types(out) == ["Reshape"]
    shape = [nh.to_array(t) for t in out.graph.initializer if t.name == out.graph.node[0].input[1]][0]
    assert shape.tolist() == [0, -1]


def test_shape_from_another_tensor_declines():
    m = model([R("Shape", ["z"], ["s"]), R("Reshape", ["x", "s"], ["y"])], [], (2, 3, 4, 5),
              extra_inputs=[h.make_tensor_value_info("z", T.FLOAT, [6, 20])])
    ctx = PassContext()
    out, _ = apply_passes(m, [MergeReshapes()], ctx)
    assert op_types(out) == ["Shape", "Reshape"]
    assert any("not built from Shape(input)" in d.reason for d in ctx.declines)
