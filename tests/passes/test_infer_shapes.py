"""InferShapes: static dims inferred, symbolic dims kept, subgraphs typed, failures logged not raised."""

import numpy as np
import onnx
from differential import apply_passes, assert_equivalent
from onnx import TensorProto, helper, numpy_helper

from onnxopt.ir import Model
from onnxopt.pass_manager import PassContext
from onnxopt.passes import infer_shapes as mod
from onnxopt.passes.infer_shapes import InferShapes

F = TensorProto.FLOAT


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _dims(vi):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def _dynamic_model():
    w = numpy_helper.from_array(np.ones((8, 16), np.float32), "w")  # large enough to be left out of inference
    shape = numpy_helper.from_array(np.array([0, -1, 4], np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "g", [_vi("x", F, ["batch", "seq", 8])], [_vi("y", F, None)], [w, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_infers_static_dims_and_keeps_symbolic_ones():
    before = _dynamic_model()
    after, report = apply_passes(before, [InferShapes()])
    infos = {vi.name: _dims(vi) for vi in after.graph.value_info}
    assert infos["h"] == ["batch", "seq", 16]
    assert infos["r"] == ["batch", "seq", 16]
    assert _dims(after.graph.input[0]) == ["batch", "seq", 8]  # the interface is untouched
    assert report["passes"][0]["changes"] == 1
    assert_equivalent(before, after, {"x": np.ones((2, 3, 8), np.float32)})


def test_second_run_reports_no_change():
    after, _ = apply_passes(_dynamic_model(), [InferShapes()])
    _, report = apply_passes(after, [InferShapes()])
    assert report["passes"][0]["changes"] == 0


def test_types_tensors_inside_if_branches():
    def branch(name, op):
        nodes = [helper.make_node(op, ["x"], [f"{name}_a"]), helper.make_node("Neg", [f"{name}_a"], [f"{name}_o"])]
        return helper.make_graph(nodes, name, [], [_vi(f"{name}_o", F, None)])

    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("then", "Relu"), else_branch=branch("else", "Abs"))
    graph = helper.make_graph([node], "g", [_vi("x", F, [2, 3]), _vi("c", TensorProto.BOOL, [])], [_vi("y", F, None)])
    before = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    after, _ = apply_passes(before, [InferShapes()])
    then = next(a.g for a in after.graph.node[0].attribute if a.name == "then_branch")
    assert {vi.name: _dims(vi) for vi in then.value_info}["then_a"] == [2, 3]
    assert_equivalent(before, after, {"x": np.ones((2, 3), np.float32), "c": np.array(True)})


def test_failure_is_logged_and_leaves_the_model(monkeypatch, caplog):
    def boom(proto):
        raise onnx.shape_inference.InferenceError("[ShapeInferenceError] synthetic failure")

    monkeypatch.setattr(mod, "_infer", boom)
    model = Model.from_onnx(_dynamic_model())
    ctx = PassContext()
    result = InferShapes().run(model, ctx)
    assert not result.changed
    assert any("synthetic failure" in d.reason for d in ctx.declines)
    assert "synthetic failure" in caplog.text


def test_large_models_go_through_a_file(monkeypatch):
    monkeypatch.setattr(mod, "_PROTO_LIMIT", 0)  # take the > 2 GB route on a small model
    after, _ = apply_passes(_dynamic_model(), [InferShapes()])
    assert {vi.name: _dims(vi) for vi in after.graph.value_info}["h"] == ["batch", "seq", 16]


def test_unknown_ops_do_not_fail_inference():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Mystery", ["a"], ["b"], domain="com.example"),
             helper.make_node("Relu", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [_vi("x", F, [2])], [_vi("y", F, None)])
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)]
    before = helper.make_model(graph, opset_imports=opsets)
    model = Model.from_onnx(before)
    result = InferShapes().run(model, PassContext())
    assert result.changed
    assert {vi.name: _dims(vi) for vi in model.to_onnx().graph.value_info}["a"] == [2]


def test_follows_skips_only_after_a_run_that_modified_nothing(monkeypatch):
    calls = []
    real = mod._infer
    monkeypatch.setattr(mod, "_infer", lambda proto: calls.append(1) or real(proto))
    model = Model.from_onnx(_dynamic_model())
    first = InferShapes()
    follower = InferShapes(follows=first)
    first.run(model, PassContext())  # refines h, r: modified
    follower.run(model, PassContext())
    assert len(calls) == 2
    first.run(model, PassContext())  # nothing left to refine: modified nothing
    follower.run(model, PassContext())
    assert len(calls) == 3
    follower.run(model, PassContext())  # the state of ``first`` is used once only
    assert len(calls) == 4
    first.run(model, PassContext())
    follower.run(Model.from_onnx(_dynamic_model()), PassContext())  # another model: runs
    assert len(calls) == 6
