"""EliminateDeadCode: dead nodes, initializers and value_info go; inputs and outer-scope uses stay."""

import numpy as np
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto, helper, numpy_helper

from onnxopt.passes.eliminate_dead_code import EliminateDeadCode

F = TensorProto.FLOAT


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), value_info=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits), value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_removes_dead_chain_its_initializer_and_value_info_but_keeps_inputs():
    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Mul", ["x", "w"], ["d1"]),
             helper.make_node("Neg", ["d1"], ["d2"])]
    before = _model(nodes, [_vi("x", F, [2]), _vi("unused", F, [2])], [_vi("y", F, [2])], [w],
                    [_vi("d1", F, [2]), _vi("d2", F, [2])])
    after, report = apply_passes(before, [EliminateDeadCode()])
    assert op_types(after) == ["Relu"]
    assert not after.graph.initializer and not after.graph.value_info
    assert [i.name for i in after.graph.input] == ["x", "unused"]
    assert report["passes"][0]["stats"] == {"nodes": 2, "initializers": 1, "value_info": 2}
    assert_equivalent(before, after)


def test_outer_values_used_in_subgraphs_stay_and_dead_subgraph_nodes_go():
    # "k" is produced in the main graph and read only inside the then-branch: it must stay.
    then_nodes = [helper.make_node("Add", ["x", "k"], ["t_out"]), helper.make_node("Neg", ["x"], ["t_dead"])]
    then = helper.make_graph(then_nodes, "then", [], [_vi("t_out", F, [2])])
    other = helper.make_graph([helper.make_node("Abs", ["x"], ["e_out"])], "else", [], [_vi("e_out", F, [2])])
    nodes = [helper.make_node("Exp", ["x"], ["k"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("Sin", ["x"], ["dead"])]
    before = _model(nodes, [_vi("x", F, [2]), _vi("c", TensorProto.BOOL, [])], [_vi("y", F, [2])])
    after, report = apply_passes(before, [EliminateDeadCode()])
    assert sorted(op_types(after)) == ["Abs", "Add", "Exp", "If"]
    assert report["passes"][0]["stats"]["nodes"] == 2
    for cond in (True, False):
        assert_equivalent(before, after, {"x": np.array([0.5, -1.0], np.float32), "c": np.array(cond)})


def test_unused_if_is_removed_whole_and_live_model_is_unchanged():
    branch = helper.make_graph([helper.make_node("Neg", ["x"], ["b"])], "b", [], [_vi("b", F, [2])])
    branch2 = helper.make_graph([helper.make_node("Abs", ["x"], ["b2"])], "b2", [], [_vi("b2", F, [2])])
    nodes = [helper.make_node("If", ["c"], ["unused"], then_branch=branch, else_branch=branch2),
             helper.make_node("Relu", ["x"], ["y"])]
    before = _model(nodes, [_vi("x", F, [2]), _vi("c", TensorProto.BOOL, [])], [_vi("y", F, [2])])
    after, _ = apply_passes(before, [EliminateDeadCode()])
    assert op_types(after) == ["Relu"]
    for cond in (True, False):  # the live model computes what it did, whichever branch the If would have taken
        assert_equivalent(before, after, {"x": np.array([0.5, -1.0], np.float32), "c": np.array(cond)})
    _, report = apply_passes(after, [EliminateDeadCode()])
    assert report["passes"][0]["changes"] == 0
