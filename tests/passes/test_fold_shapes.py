"""FoldShapes: a scalar Gather of a static dim folds while other dims stay dynamic, in subgraphs too; declines."""

import numpy as np
import onnx
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.pass_manager import PassContext
from onnxopt.passes.eliminate_dead_code import EliminateDeadCode
from onnxopt.passes.fold_constants import FoldConstants
from onnxopt.passes.fold_shapes import FoldShapes
from onnxopt.passes.infer_shapes import InferShapes


def _checks(index):
    """y = x * Cast(Equal(Gather(Shape(x), index), 1)) for x [N, 128, M]: the exporters' 'is this dim 1' test."""
    nodes = [h.make_node("Shape", ["x"], ["s"]), h.make_node("Gather", ["s", "i"], ["d"], axis=0),
             h.make_node("Equal", ["d", "one"], ["e"]), h.make_node("Cast", ["e"], ["f"], to=T.FLOAT),
             h.make_node("Mul", ["x", "f"], ["y"])]
    inits = [nh.from_array(np.array(index, np.int64), "i"), nh.from_array(np.array(1, np.int64), "one")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", 128, "M"])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 128, "M"])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    return m


PASSES = [InferShapes(), FoldShapes(), FoldConstants(), EliminateDeadCode()]
X = np.random.default_rng(0).standard_normal((2, 128, 3)).astype(np.float32)


def test_gather_of_a_static_dim_folds_among_dynamic_ones():
    before = _checks(1)
    after, report = apply_passes(before, PASSES)
    assert op_types(after) == ["Mul"]
    assert next(p for p in report["passes"] if p["name"] == "FoldShapes")["stats"] == {"partial": 1}
    assert after.graph.input[0].type.tensor_type.shape.dim[2].dim_param == "M"
    assert_equivalent(before, after, {"x": X})


def test_folds_inside_an_if_branch():
    inner = _checks(1).graph
    branch = h.make_graph(list(inner.node), "then", [], [h.make_tensor_value_info("y", T.FLOAT, None)],
                          list(inner.initializer))
    other = h.make_graph([h.make_node("Neg", ["x"], ["z"])], "else", [], [h.make_tensor_value_info("z", T.FLOAT, None)])
    g = h.make_graph([h.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=other)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, ["N", 128, "M"]),
                      h.make_tensor_value_info("c", T.BOOL, [])],
                     [h.make_tensor_value_info("out", T.FLOAT, ["N", 128, "M"])])
    before = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    after, _ = apply_passes(before, PASSES)
    assert sorted(op_types(after)) == ["If", "Mul", "Neg"]
    for c in (True, False):
        assert_equivalent(before, after, {"x": X, "c": np.array(c)})


def test_declines_a_dynamic_dim():
    before = _checks(-1)
    ctx = PassContext()
    after, _ = apply_passes(before, PASSES, ctx)
    assert op_types(after) == op_types(before)
    assert any(d.pass_name == "FoldShapes" and "not all static" in d.reason for d in ctx.declines)
    for m in (1, 4):
        assert_equivalent(before, after, {"x": np.ones((2, 128, m), np.float32)})
