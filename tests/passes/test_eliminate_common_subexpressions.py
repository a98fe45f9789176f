"""EliminateCommonSubexpressions: duplicate nodes merge (chains, subgraphs); random ops and graph outputs decline."""

import numpy as np
import onnx
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.pass_manager import PassContext
from onnxopt.passes.eliminate_common_subexpressions import EliminateCommonSubexpressions


def model(nodes, inits=(), extra_inputs=(), outputs=("y",)):
    x = h.make_tensor_value_info("x", T.FLOAT, [2, 3])
    g = h.make_graph(nodes, "g", [x, *extra_inputs], [h.make_tensor_value_info(o, T.FLOAT, [2, 3]) for o in outputs],
                     [nh.from_array(np.asarray(v), n) for n, v in inits])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def run(m, ctx=None, feeds=None):
    out, _ = apply_passes(m, [EliminateCommonSubexpressions()], ctx)
    assert_equivalent(m, out, feeds)
    return out


def test_merges_chains_and_equal_small_constants():
    m = model([h.make_node("Relu", ["x"], ["a"]), h.make_node("Relu", ["x"], ["b"]),
               h.make_node("Mul", ["a", "k1"], ["c"]), h.make_node("Mul", ["b", "k2"], ["d"]),
               h.make_node("Add", ["c", "d"], ["y"])],
              [("k1", np.full(3, 2, np.float32)), ("k2", np.full(3, 2, np.float32))])
    out = run(m)
    assert op_types(out) == ["Relu", "Mul", "Add"]


def test_attributes_must_match():
    m = model([h.make_node("LeakyRelu", ["x"], ["a"], alpha=0.1), h.make_node("LeakyRelu", ["x"], ["b"], alpha=0.2),
               h.make_node("Add", ["a", "b"], ["y"])])
    assert op_types(run(m)).count("LeakyRelu") == 2


def test_graph_outputs_keep_names():
    m = model([h.make_node("Relu", ["x"], ["a"]), h.make_node("Relu", ["x"], ["y"]), h.make_node("Neg", ["a"], ["z"])],
              outputs=("y", "z"))
    out = run(m)
    assert op_types(out) == ["Relu", "Neg"] and [o.name for o in out.graph.output] == ["y", "z"]
    m = model([h.make_node("Relu", ["x"], ["y"]), h.make_node("Relu", ["x"], ["z"])], outputs=("y", "z"))
    ctx = PassContext()
    assert op_types(run(m, ctx)) == ["Relu", "Relu"]
    assert any("both write graph outputs" in d.reason for d in ctx.declines)


def test_random_ops_are_never_merged():
    m = model([h.make_node("RandomUniformLike", ["x"], ["a"]), h.make_node("RandomUniformLike", ["x"], ["b"]),
               h.make_node("Sub", ["a", "b"], ["y"])])
    out, _ = apply_passes(m, [EliminateCommonSubexpressions()])
    assert op_types(out).count("RandomUniformLike") == 2


def _if(name, out):
    then_g = h.make_graph([h.make_node("Relu", ["x"], [f"{name}_t"])], "then", [],
                          [h.make_tensor_value_info(f"{name}_t", T.FLOAT, [2, 3])])
    else_g = h.make_graph([h.make_node("Neg", ["x"], [f"{name}_e"])], "else", [],
                          [h.make_tensor_value_info(f"{name}_e", T.FLOAT, [2, 3])])
    return h.make_node("If", ["cond"], [out], then_branch=then_g, else_branch=else_g)


def test_subgraphs_identical_or_not_and_inside():
    cond = [h.make_tensor_value_info("cond", T.BOOL, [])]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    same = model([_if("s", "a"), _if("s", "b"), h.make_node("Add", ["a", "b"], ["y"])], extra_inputs=cond)
    diff = model([_if("p", "a"), _if("q", "b"), h.make_node("Add", ["a", "b"], ["y"])], extra_inputs=cond)
    for m, ifs in ((same, 1), (diff, 2)):
        out, _ = apply_passes(m, [EliminateCommonSubexpressions()])
        assert op_types(out, recurse=False).count("If") == ifs
        for c in (True, False):
            assert_equivalent(m, out, {"x": x, "cond": np.array(c)})
    then_g = h.make_graph([h.make_node("Abs", ["x"], ["t0"]), h.make_node("Abs", ["x"], ["t1"]),
                           h.make_node("Add", ["t0", "t1"], ["t"])], "then", [],
                          [h.make_tensor_value_info("t", T.FLOAT, [2, 3])])
    else_g = h.make_graph([h.make_node("Neg", ["x"], ["e"])], "else", [],
                          [h.make_tensor_value_info("e", T.FLOAT, [2, 3])])
    m = model([h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)], extra_inputs=cond)
    out, _ = apply_passes(m, [EliminateCommonSubexpressions()])
    assert op_types(out).count("Abs") == 1
    for c in (True, False):
        assert_equivalent(m, out, {"x": x, "cond": np.array(c)})
    onnx.checker.check_model(out, full_check=True)
