"""ConstantsToInitializers: every value_* form, subgraph-local constants, declines, initializer inputs."""

import numpy as np
import pytest
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto, helper, numpy_helper

from onnxopt.pass_manager import PassContext
from onnxopt.passes.constants_to_initializers import ConstantsToInitializers


def _model(nodes, inputs, outputs, inits=(), opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_all_value_forms_become_initializers():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    z = helper.make_tensor_value_info("z", TensorProto.INT64, [3])
    tensor = numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32))
    nodes = [
        helper.make_node("Constant", [], ["c_tensor"], value=tensor),
        helper.make_node("Constant", [], ["c_float"], value_float=0.5),
        helper.make_node("Constant", [], ["c_floats"], value_floats=[1.0, -1.0, 2.0]),
        helper.make_node("Constant", [], ["c_int"], value_int=4),
        helper.make_node("Constant", [], ["c_ints"], value_ints=[1, 2, 3]),
        helper.make_node("Mul", ["x", "c_tensor"], ["a"]),
        helper.make_node("Add", ["a", "c_float"], ["b"]),
        helper.make_node("Mul", ["b", "c_floats"], ["y"]),
        helper.make_node("Add", ["c_ints", "c_int"], ["z"]),
    ]
    before = _model(nodes, [x], [y, z])
    after, report = apply_passes(before, [ConstantsToInitializers()])
    assert "Constant" not in op_types(after)
    assert {t.name for t in after.graph.initializer} >= {"c_tensor", "c_float", "c_floats", "c_int", "c_ints"}
    assert report["passes"][0]["stats"]["constants"] == 5
    assert_equivalent(before, after)


def test_constant_in_if_branch_stays_local():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])

    def branch(name, value):
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [2])
        nodes = [helper.make_node("Constant", [], [f"{name}_k"], value_floats=[value, value]),
                 helper.make_node("Mul", ["x", f"{name}_k"], [f"{name}_out"])]
        return helper.make_graph(nodes, name, [], [out])

    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("then", 2.0), else_branch=branch("else", -3.0))
    before = _model([node], [x, c], [y])
    after, _ = apply_passes(before, [ConstantsToInitializers()])
    assert "Constant" not in op_types(after)
    assert not after.graph.initializer
    branches = {a.name: a.g for a in after.graph.node[0].attribute}
    assert [t.name for t in branches["then_branch"].initializer] == ["then_k"]
    assert [t.name for t in branches["else_branch"].initializer] == ["else_k"]
    for cond in (True, False):
        assert_equivalent(before, after, {"x": np.array([1.0, -2.0], np.float32), "c": np.array(cond)})


def test_declines_constant_that_is_a_graph_output():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Constant", [], ["k"], value_floats=[1.0, 2.0]),
             helper.make_node("Add", ["x", "k"], ["y"])]
    before = _model(nodes, [x], [y, k])
    ctx = PassContext()
    after, _ = apply_passes(before, [ConstantsToInitializers()], ctx)
    assert op_types(after).count("Constant") == 1
    assert any("graph output" in d.reason for d in ctx.declines)
    assert_equivalent(before, after)


def _initializer_input_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    w_in = helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    w = numpy_helper.from_array(np.array([3.0, 4.0], np.float32), "w")
    return _model([helper.make_node("Mul", ["x", "w"], ["y"])], [x, w_in], [y], inits=[w], opset=9)


def test_initializer_inputs_become_plain_initializers():
    before = _initializer_input_model()
    after, _ = apply_passes(before, [ConstantsToInitializers()])
    assert [i.name for i in after.graph.input] == ["x"]
    assert [t.name for t in after.graph.initializer] == ["w"]
    assert_equivalent(before, after)


def test_keep_initializer_inputs_lists_recorded_names_again():
    from onnxopt.ir import Model

    before = _initializer_input_model()
    model = Model.from_onnx(before)
    ctx = PassContext(options={"keep_initializer_inputs": True})
    ConstantsToInitializers().run(model, ctx)
    after = model.to_onnx()
    assert [i.name for i in after.graph.input] == ["x", "w"]
    assert_equivalent(before, after)


@pytest.mark.realmodel
def test_real_paddle_model_weights_in_constants():
    import onnx

    from onnxopt.models import fetch

    path = fetch.fetch("ppocr_cls")

    before = onnx.load(str(path))
    assert "Constant" in op_types(before)
    after, _ = apply_passes(before, [ConstantsToInitializers()])
    assert "Constant" not in op_types(after)
    assert_equivalent(before, after)
