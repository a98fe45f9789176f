"""RemoveNoOps: each no-op kind is removed with outputs unchanged, and each decline leaves the node in place."""

import numpy as np
import onnx
import pytest
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.pass_manager import PassContext
from onnxopt.passes.remove_noops import RemoveNoOps


def model(nodes, inits=(), shape=(2, 3, 4), opset=17, out_shape=None, extra_inputs=(), out_name="y"):
    g = h.make_graph(
        nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, list(shape)), *extra_inputs],
        [h.make_tensor_value_info(out_name, T.FLOAT, None if out_shape is None else list(out_shape))],
        [nh.from_array(np.asarray(v), n) for n, v in inits])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(m)


def wrap(op_nodes, inits=(), **kw):
    """x -> Relu -> t -> <op nodes reading t, writing u> -> Neg -> y (so the no-op is never at a graph edge)."""
    nodes = [h.make_node("Relu", ["x"], ["t"]), *op_nodes, h.make_node("Neg", ["u"], ["y"])]
    return model(nodes, inits, **kw)


def run(m, ctx=None):
    out, _ = apply_passes(m, [RemoveNoOps()], ctx)
    assert_equivalent(m, out)
    return out


I64 = np.int64
CASES = {
    "identity": ([h.make_node("Identity", ["t"], ["u"])], []),
    "dropout": ([h.make_node("Dropout", ["t"], ["u"])], []),
    "dropout_false": ([h.make_node("Dropout", ["t", "r", "m"], ["u"])],
                      [("r", np.array(0.5, np.float32)), ("m", np.array(False))]),
    "cast": ([h.make_node("Cast", ["t"], ["u"], to=T.FLOAT)], []),
    "reshape": ([h.make_node("Reshape", ["t", "s"], ["u"])], [("s", np.array([0, 3, -1], I64))]),
    "transpose": ([h.make_node("Transpose", ["t"], ["u"], perm=[0, 1, 2])], []),
    "pad": ([h.make_node("Pad", ["t", "p"], ["u"])], [("p", np.zeros(6, I64))]),
    "slice": ([h.make_node("Slice", ["t", "st", "en", "ax"], ["u"])],
              [("st", np.array([0, -4], I64)), ("en", np.array([2**62, 4], I64)), ("ax", np.array([1, 2], I64))]),
    "expand": ([h.make_node("Expand", ["t", "s"], ["u"])], [("s", np.array([3, 1], I64))]),
    "concat": ([h.make_node("Concat", ["t"], ["u"], axis=1)], []),
    "split": ([h.make_node("Split", ["t"], ["u"], axis=1, num_outputs=1)], []),
    "mul1": ([h.make_node("Mul", ["o", "t"], ["u"])], [("o", np.ones((3, 1), np.float32))]),
    "add0": ([h.make_node("Add", ["t", "z"], ["u"])], [("z", np.zeros(4, np.float32))]),
    "sub0": ([h.make_node("Sub", ["t", "z"], ["u"])], [("z", np.zeros(1, np.float32))]),
    "div1": ([h.make_node("Div", ["t", "o"], ["u"])], [("o", np.array(1, np.float32))]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_removes(name):
    nodes, inits = CASES[name]
    m = wrap(nodes, inits, opset=18)
    out = run(m)
    assert op_types(out) == ["Relu", "Neg"]


DECLINES = {
    "dropout_mask_used": ([h.make_node("Dropout", ["t"], ["u0", "mask"]), h.make_node("Cast", ["mask"], ["mf"], to=1),
                           h.make_node("Add", ["u0", "mf"], ["u"])], [], "mask output is used"),
    "dropout_training": ([h.make_node("Dropout", ["t", "r", "m"], ["u"])],
                         [("r", np.array(0.0, np.float32)), ("m", np.array(True))], "training_mode is true"),
    "cast_other": ([h.make_node("Cast", ["t"], ["u0"], to=T.DOUBLE), h.make_node("Cast", ["u0"], ["u"], to=1)], [],
                   "casts to another dtype"),
    "reshape_changes": ([h.make_node("Reshape", ["t", "s"], ["u0"]), h.make_node("Reshape", ["u0", "s2"], ["u"])],
                        [("s", np.array([6, 4], I64)), ("s2", np.array([2, 3, 4], I64))], "changes the rank"),
    "transpose_perm": ([h.make_node("Transpose", ["t"], ["u0"], perm=[0, 2, 1]),
                        h.make_node("Transpose", ["u0"], ["u"], perm=[0, 2, 1])], [], "permutes the axes"),
    "pad_nonzero": ([h.make_node("Pad", ["t", "p"], ["u0"]), h.make_node("Slice", ["u0", "st", "en", "ax"], ["u"])],
                    [("p", np.array([0, 0, 1, 0, 0, 0], I64)), ("st", np.array([1], I64)),
                     ("en", np.array([9], I64)), ("ax", np.array([2], I64))], "pads are not all zero"),
    "mul_broadcasts": ([h.make_node("Mul", ["t", "o"], ["u0"]), h.make_node("ReduceSum", ["u0", "a"], ["u"])],
                       [("o", np.ones((2, 2, 3, 4), np.float32)), ("a", np.array([0], I64))],
                       "broadcasting adds dims"),
    "mul_not_one": ([h.make_node("Mul", ["t", "o"], ["u"])], [("o", np.full(4, 2, np.float32))],
                    "no operand is a constant 1"),
}


@pytest.mark.parametrize("name", sorted(DECLINES))
def test_declines(name):
    nodes, inits, reason = DECLINES[name]
    m = wrap(nodes, inits, opset=18)
    ctx = PassContext()
    out = run(m, ctx)
    assert op_types(out) == op_types(m)
    assert any(reason in d.reason for d in ctx.declines), [d.reason for d in ctx.declines]


def test_dynamic_reshape_declines_but_copy_zero_removes():
    m = model([h.make_node("Reshape", ["x", "s"], ["y"])], [("s", np.array([0, 3, 4], I64))], shape=("N", 3, 4))
    ctx = PassContext()
    # output is a graph output and x (a graph input) cannot take its name
    out = run(m, ctx)
    assert op_types(out) == ["Reshape"]
    assert any("graph output" in d.reason for d in ctx.declines)
    m = wrap([h.make_node("Reshape", ["t", "s"], ["u"])], [("s", np.array([0, 3, 4], I64))], shape=("N", 3, 4))
    assert op_types(run(m)) == ["Relu", "Neg"]
    m = wrap([h.make_node("Reshape", ["t", "s"], ["u"])], [("s", np.array([2, 3, 4], I64))], shape=("N", 3, 4))
    ctx = PassContext()
    out, _ = apply_passes(m, [RemoveNoOps()], ctx)
    assert_equivalent(m, out, {"x": np.ones((2, 3, 4), np.float32)})
    assert op_types(out) == ["Relu", "Reshape", "Neg"]
    assert any("dynamic" in d.reason for d in ctx.declines)


def test_graph_output_keeps_its_name():
    m = model([h.make_node("Relu", ["x"], ["t"]), h.make_node("Identity", ["t"], ["y"])])
    out = run(m)
    assert op_types(out) == ["Relu"] and out.graph.output[0].name == "y"


def test_inside_if_subgraph():
    then_g = h.make_graph([h.make_node("Relu", ["x"], ["a"]), h.make_node("Identity", ["a"], ["b"]),
                           h.make_node("Transpose", ["b"], ["c"], perm=[0, 1, 2]), h.make_node("Neg", ["c"], ["t1"])],
                          "then", [], [h.make_tensor_value_info("t1", T.FLOAT, [2, 3, 4])])
    else_g = h.make_graph([h.make_node("Dropout", ["x"], ["e0"]), h.make_node("Abs", ["e0"], ["e1"])],
                          "else", [], [h.make_tensor_value_info("e1", T.FLOAT, [2, 3, 4])])
    m = model([h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)], opset=17,
              extra_inputs=[h.make_tensor_value_info("cond", T.BOOL, [])])
    out, _ = apply_passes(m, [RemoveNoOps()])
    assert sorted(op_types(out)) == ["Abs", "If", "Neg", "Relu"]
    for cond in (True, False):
        feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32),
                 "cond": np.array(cond)}
        assert_equivalent(m, out, feeds)
