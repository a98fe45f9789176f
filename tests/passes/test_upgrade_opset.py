"""UpgradeOpset: differential on opset-9 models (main graph and If bodies), no downgrade, clear errors."""

import numpy as np
import onnx
import pytest
from differential import apply_passes, assert_equivalent
from onnx import TensorProto, helper

from onnxopt.errors import UserError
from onnxopt.pass_manager import PassContext
from onnxopt.passes.upgrade_opset import UpgradeOpset


def _model(nodes, inputs, outputs, opset, inits=(), extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def _opset9_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])
    nodes = [
        helper.make_node("Squeeze", ["x"], ["s"], axes=[0, 2]),
        helper.make_node("Dropout", ["s"], ["d"], ratio=0.3),
        helper.make_node("ReduceSum", ["d"], ["r"], axes=[1], keepdims=1),
        helper.make_node("Add", ["d", "r"], ["y"]),
    ]
    return _model(nodes, [x], [y], 9)


def _opsets(proto):
    return {o.domain: o.version for o in proto.opset_import}


def test_upgrades_opset9_to_13_and_keeps_outputs():
    before = _opset9_model()
    after, report = apply_passes(before, [UpgradeOpset()])
    assert _opsets(after)[""] == 13
    squeeze = next(n for n in after.graph.node if n.op_type == "Squeeze")
    assert len(squeeze.input) == 2 and not squeeze.attribute  # axes moved from attribute to input
    assert report["passes"][0]["stats"] == {"opset_from": 9, "opset_to": 13}
    assert_equivalent(before, after)


def test_min_opset_option():
    after, _ = apply_passes(_opset9_model(), [UpgradeOpset()], PassContext(options={"min_opset": 11}))
    assert _opsets(after)[""] == 11


def test_never_downgrades():
    before = _opset9_model()
    before.opset_import[0].version = 9
    upgraded, _ = apply_passes(before, [UpgradeOpset()], PassContext(options={"min_opset": 15}))
    ctx = PassContext(options={"min_opset": 13})
    after, report = apply_passes(upgraded, [UpgradeOpset()], ctx)
    assert _opsets(after)[""] == 15
    assert report["passes"][0]["changes"] == 0
    assert any("never downgrades" in d.reason for d in ctx.declines)


def test_keeps_non_default_domains():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Custom", ["r"], ["y"], domain="com.example")]
    before = _model(nodes, [x], [y], 9, extra_opsets=[helper.make_opsetid("com.example", 3)])
    after, _ = apply_passes(before, [UpgradeOpset()])
    assert _opsets(after) == {"": 13, "com.example": 3}
    assert [n.domain for n in after.graph.node] == ["", "com.example"]


def test_upgrades_inside_if_branches():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])

    def branch(name, op):
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [3])
        nodes = [helper.make_node("Squeeze", ["x"], [f"{name}_s"], axes=[0]),
                 helper.make_node(op, [f"{name}_s"], [f"{name}_out"])]
        return helper.make_graph(nodes, name, [], [out])

    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("then", "Relu"), else_branch=branch("else", "Neg"))
    before = _model([node], [x, c], [y], 9)
    after, _ = apply_passes(before, [UpgradeOpset()])
    then = next(a.g for a in after.graph.node[0].attribute if a.name == "then_branch")
    squeeze = next(n for n in then.node if n.op_type == "Squeeze")
    assert len(squeeze.input) == 2  # Squeeze-13 takes axes as an input, inside the branch too
    for cond in (True, False):
        assert_equivalent(before, after, {"x": np.array([[1.0, -2.0, 3.0]], np.float32), "c": np.array(cond)})


def test_unreachable_opset_names_the_op():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    before = _model([helper.make_node("Pad", ["x"], ["y"], paddings=[1, 1])], [x], [y], 1)
    with pytest.raises(UserError) as err:
        apply_passes(before, [UpgradeOpset()])
    msg = str(err.value)
    assert "cannot upgrade opset 1 -> 13" in msg and "Pad" in msg and "opset >= 13" in msg
    assert "\n" not in msg


def test_zoo_opset11_model():
    from onnxopt.models import zoo
    before = zoo.build("opset11_constants")
    after, _ = apply_passes(before, [UpgradeOpset()])
    assert _opsets(after)[""] == 13
    onnx.checker.check_model(after, full_check=True)
    assert_equivalent(before, after, zoo.sample_inputs(before))
