"""InlineConstantIf: the taken branch replaces the If (names kept unique, outer references kept); declines."""

import numpy as np
import onnx
import pytest
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.pass_manager import PassContext
from onnxopt.passes.eliminate_dead_code import EliminateDeadCode
from onnxopt.passes.inline_constant_if import InlineConstantIf

X = np.arange(-6, 6, dtype=np.float32).reshape(2, 6)


def branch(name, nodes, outputs, inits=()):
    return h.make_graph(nodes, name, [], [h.make_tensor_value_info(o, T.FLOAT, None) for o in outputs],
                        [nh.from_array(np.asarray(v), n) for n, v in inits])


def model(nodes, cond, outputs=("y",), inputs=None, opset=17):
    inputs = inputs or [h.make_tensor_value_info("x", T.FLOAT, [2, 6])]
    inits = [] if cond is None else [nh.from_array(np.array(cond), "c")]
    g = h.make_graph(nodes, "g", inputs, [h.make_tensor_value_info(o, T.FLOAT, [2, 6]) for o in outputs], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    onnx.checker.check_model(m, full_check=True)
    return m


def run(m, feeds=None, ctx=None):
    out, report = apply_passes(m, [InlineConstantIf(), EliminateDeadCode()], ctx)
    assert_equivalent(m, out, feeds or {"x": X})
    return out, report


def simple_if(cond, inputs=None):
    then = branch("then", [h.make_node("Relu", ["a"], ["t"]), h.make_node("Mul", ["t", "two"], ["r"])], ["r"],
                  [("two", np.array(2, np.float32))])
    els = branch("else", [h.make_node("Neg", ["a"], ["e"])], ["e"])
    return model([h.make_node("Abs", ["x"], ["a"]), h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)],
                 cond, inputs=inputs)


@pytest.mark.parametrize("cond", [True, False])
def test_inlines_the_taken_branch_and_keeps_the_output_name(cond):
    out, report = run(simple_if(cond))
    assert "If" not in op_types(out)
    assert op_types(out) == (["Abs", "Relu", "Mul"] if cond else ["Abs", "Neg"])
    assert [o.name for o in out.graph.output] == ["y"]
    assert next(p for p in report["passes"] if p["name"] == "InlineConstantIf")["stats"] == {"inlined": 1}


def test_branch_names_that_clash_with_the_parent_are_renamed():
    # the branch writes "t", and so does the parent graph (after the If): the inlined one gets a fresh name
    then = branch("then", [h.make_node("Relu", ["x"], ["t"]), h.make_node("Neg", ["t"], ["r"])], ["r"])
    els = branch("else", [h.make_node("Neg", ["x"], ["e"])], ["e"])
    m = model([h.make_node("If", ["c"], ["u"], then_branch=then, else_branch=els),
               h.make_node("Sigmoid", ["u"], ["t"]), h.make_node("Add", ["t", "u"], ["y"])], True)
    out, report = run(m)
    assert op_types(out) == ["Relu", "Neg", "Sigmoid", "Add"]
    names = [o for n in out.graph.node for o in n.output]
    assert len(set(names)) == len(names) and "t_1" in names
    assert next(p for p in report["passes"] if p["name"] == "InlineConstantIf")["stats"]["renamed"] == 1


def test_constant_if_inside_a_subgraph_and_nested_in_the_branch():
    # outer If on a real input stays; inside its then branch a constant If whose taken branch holds another one
    inner2 = h.make_node("If", ["c"], ["i2"], then_branch=branch("t2", [h.make_node("Sin", ["x"], ["s"])], ["s"]),
                         else_branch=branch("e2", [h.make_node("Cos", ["x"], ["k"])], ["k"]))
    inner = h.make_node("If", ["c"], ["i1"],
                        then_branch=branch("t1", [inner2, h.make_node("Neg", ["i2"], ["n"])], ["n"]),
                        else_branch=branch("e1", [h.make_node("Abs", ["x"], ["q"])], ["q"]))
    outer = h.make_node("If", ["p"], ["y"], then_branch=branch("ot", [inner], ["i1"]),
                        else_branch=branch("oe", [h.make_node("Relu", ["x"], ["z"])], ["z"]))
    inputs = [h.make_tensor_value_info("x", T.FLOAT, [2, 6]), h.make_tensor_value_info("p", T.BOOL, [])]
    m = model([outer], True, inputs=inputs)
    out, _ = apply_passes(m, [InlineConstantIf(), EliminateDeadCode()])
    assert sorted(op_types(out)) == ["If", "Neg", "Relu", "Sin"]
    for p in (True, False):
        assert_equivalent(m, out, {"x": X, "p": np.array(p)})


def test_a_constant_branch_output_feeds_the_consumers():
    # the taken branch returns one of its own initializers; the If output is not a graph output
    then = branch("then", [h.make_node("Neg", ["a"], ["t"])], ["t", "k"], [("k", np.full((2, 6), 3, np.float32))])
    els = branch("else", [h.make_node("Neg", ["a"], ["e1"]), h.make_node("Neg", ["x"], ["e2"])], ["e1", "e2"])
    m = model([h.make_node("Abs", ["x"], ["a"]),
               h.make_node("If", ["c"], ["u", "v"], then_branch=then, else_branch=els),
               h.make_node("Sub", ["u", "v"], ["y"])], True)
    out, _ = run(m)
    assert op_types(out) == ["Abs", "Neg", "Sub"]


def test_declines_a_graph_output_that_the_branch_output_cannot_name():
    # the branch returns its own initializer, and the If output is a graph output: the name cannot be kept
    then = branch("then", [], ["k"], [("k", np.full((2, 6), 3, np.float32))])
    els = branch("else", [h.make_node("Neg", ["x"], ["e"])], ["e"])
    m = model([h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)], True)
    ctx = PassContext()
    out, report = run(m, ctx=ctx)
    assert op_types(out) == ["If", "Neg"]
    assert not next(p for p in report["passes"] if p["name"] == "InlineConstantIf")["changes"]
    assert any("cannot take its name" in d.reason and "a constant" in d.reason for d in ctx.declines)


def test_declines_a_condition_that_is_not_constant():
    m = simple_if(None, [h.make_tensor_value_info("x", T.FLOAT, [2, 6]), h.make_tensor_value_info("c", T.BOOL, [])])
    ctx = PassContext()
    out, _ = apply_passes(m, [InlineConstantIf()], ctx)
    assert op_types(out) == op_types(m)
    for cond in (True, False):
        assert_equivalent(m, out, {"x": X, "c": np.array(cond)})
    assert any(d.reason == "condition is not a constant" for d in ctx.declines)
