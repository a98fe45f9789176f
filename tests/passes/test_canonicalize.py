"""The canonicalize pipeline: zoo models stay equivalent, shrink or keep their node count, and converge."""

import numpy as np
import pytest
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto, helper, numpy_helper

from onnxopt.models import zoo
from onnxopt.pass_manager import FixedPoint
from onnxopt.passes.canonicalize import canonicalize


def _names(items):
    out = []
    for item in items:
        out.extend(_names(item.passes) if isinstance(item, FixedPoint) else [item.name])
    return out


def test_pipeline_shape_and_skip_option():
    names = _names(canonicalize())
    assert names[:3] == ["UpgradeOpset", "ConstantsToInitializers", "InferShapes"]
    assert names[-1] == "InferShapes" and "FoldConstants" in names and "EliminateDeadCode" in names
    assert "UpgradeOpset" not in _names(canonicalize({"skip": ["UpgradeOpset"]}))
    loop = next(p for p in canonicalize({"max_iterations": 3}) if isinstance(p, FixedPoint))
    assert loop.max_iterations == 3


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_model(name):
    before = zoo.build(name)
    after, report = apply_passes(before, canonicalize())
    assert report["converged"]
    assert len(op_types(after)) <= len(op_types(before))
    assert "Constant" not in op_types(after)
    assert next(o.version for o in after.opset_import if o.domain == "") >= 13
    assert_equivalent(before, after, zoo.sample_inputs(before), rtol=1e-3, atol=1e-4)


def test_opset11_exporter_constants_collapse():
    before = zoo.build("opset11_constants")
    after, _ = apply_passes(before, canonicalize())
    assert len(op_types(after)) < len(op_types(before))


def test_shape_arithmetic_inside_if_branch():
    # In each branch: Reshape(x, Concat(Gather(Shape(x), 0), [-1])) on a static x folds to a constant shape.
    def branch(name):
        inits = [numpy_helper.from_array(np.array(0, np.int64), f"{name}_i"),
                 numpy_helper.from_array(np.array([0], np.int64), f"{name}_ax"),
                 numpy_helper.from_array(np.array([-1], np.int64), f"{name}_m1")]
        nodes = [helper.make_node("Shape", ["x"], [f"{name}_s"]),
                 helper.make_node("Gather", [f"{name}_s", f"{name}_i"], [f"{name}_g"], axis=0),
                 helper.make_node("Unsqueeze", [f"{name}_g", f"{name}_ax"], [f"{name}_u"]),
                 helper.make_node("Concat", [f"{name}_u", f"{name}_m1"], [f"{name}_t"], axis=0),
                 helper.make_node("Reshape", ["x", f"{name}_t"], [f"{name}_o"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_o", TensorProto.FLOAT,
                                                                                 None)], inits)

    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("then"), else_branch=branch("else"))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
                                            helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    before = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    after, _ = apply_passes(before, canonicalize())
    assert sorted(op_types(after)) == ["If", "Reshape", "Reshape"]
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for cond in (True, False):
        assert_equivalent(before, after, {"x": x, "c": np.array(cond)})


def test_exporter_rank_checks_fold_and_their_ifs_inline():
    # silero-style: If(Equal(Gather(Shape(x), 1), 1)) drops a dim that is static (128) among dynamic ones when it is 1,
    # then If(Equal(Size(Shape(that)), 3)) checks the rank; both conditions fold, both Ifs inline, only Relu is left.
    def branch(name, node, out):
        return helper.make_graph([node], name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])

    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("i1", 1), ("one", 1), ("ax", [1]),
                                                                            ("r3", 3))]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i1"], ["d"], axis=0),
        helper.make_node("Equal", ["d", "one"], ["c1"]),
        helper.make_node("If", ["c1"], ["v"],
                         then_branch=branch("sq", helper.make_node("ReduceSum", ["x", "ax"], ["q"], keepdims=0), "q"),
                         else_branch=branch("id", helper.make_node("Identity", ["x"], ["k"]), "k")),
        helper.make_node("Shape", ["v"], ["vs"]), helper.make_node("Size", ["vs"], ["rank"]),
        helper.make_node("Equal", ["rank", "r3"], ["c2"]),
        helper.make_node("If", ["c2"], ["y"], then_branch=branch("relu", helper.make_node("Relu", ["v"], ["p"]), "p"),
                         else_branch=branch("neg", helper.make_node("Neg", ["v"], ["n"]), "n")),
    ]
    dims = ["N", 128, "T"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)], inits)
    before = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    after, report = apply_passes(before, canonicalize())
    assert report["converged"]
    assert op_types(after) == ["Relu"]
    assert [o.name for o in after.graph.output] == ["y"]
    x = np.random.default_rng(0).standard_normal((2, 128, 5)).astype(np.float32)
    assert_equivalent(before, after, {"x": x})
