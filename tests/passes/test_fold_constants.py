"""FoldConstants and FoldShapes: differential, rewrite counts, and one test per decline reason."""

import numpy as np
import pytest
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto, helper, numpy_helper

from onnxopt.pass_manager import PassContext
from onnxopt.passes.fold_constants import FoldConstants
from onnxopt.passes.fold_shapes import FoldShapes
from onnxopt.passes.infer_shapes import InferShapes

F = TensorProto.FLOAT
I64 = TensorProto.INT64


def _model(nodes, inputs, outputs, inits=(), opset=13, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _declines(ctx, op):
    return [d.reason for d in ctx.declines if d.where.startswith(op)]


def test_folds_constant_arithmetic_chain():
    inits = [_init("a", np.array([1.0, 2.0], np.float32)), _init("b", np.array([3.0, 4.0], np.float32))]
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Sqrt", ["s"], ["r"]),
             helper.make_node("Cast", ["r"], ["c"], to=F), helper.make_node("Mul", ["x", "c"], ["y"])]
    before = _model(nodes, [_vi("x", F, [2])], [_vi("y", F, [2])], inits)
    after, report = apply_passes(before, [FoldConstants()])
    assert op_types(after) == ["Mul"]
    assert report["passes"][0]["stats"] == {"folded": 3}
    assert_equivalent(before, after)


def _shape_chain(batch):
    """Reshape x [batch, 4, 6] to [batch, 24] through Shape -> Gather -> Unsqueeze -> Concat."""
    inits = [_init("i0", np.array(0, np.int64)), _init("ax", np.array([0], np.int64)),
             _init("rest", np.array([24], np.int64))]
    nodes = [helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Gather", ["shp", "i0"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
             helper.make_node("Concat", ["b1", "rest"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    return _model(nodes, [_vi("x", F, [batch, 4, 6])], [_vi("y", F, [batch, 24])], inits)


def test_static_shape_chain_folds_fully():
    before = _shape_chain(2)
    after, _ = apply_passes(before, [InferShapes(), FoldShapes(), FoldConstants()])
    assert op_types(after) == ["Reshape"]
    target = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}["target"]
    assert target.tolist() == [2, 24]
    assert_equivalent(before, after)


def test_dynamic_dim_is_not_specialised():
    before = _shape_chain("N")
    ctx = PassContext()
    after, _ = apply_passes(before, [InferShapes(), FoldShapes(), FoldConstants()], ctx)
    assert op_types(after) == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"]
    assert any("not all static" in r for r in _declines(ctx, "Shape"))
    for n in (1, 3):
        assert_equivalent(before, after, {"x": np.ones((n, 4, 6), np.float32)})


def test_partial_shape_folds_static_dims_only():
    # x [N, 4, 6] -> [N, 24]: the static dims 4 and 6 come from Slice(Shape(x), 1, 3) and Gather(Shape(x), [1, 2]).
    inits = [_init("s1", np.array([1], np.int64)), _init("e3", np.array([3], np.int64)),
             _init("idx", np.array([1, 2], np.int64)), _init("i0", np.array([0], np.int64))]
    nodes = [helper.make_node("Shape", ["x"], ["shp"]),
             helper.make_node("Slice", ["shp", "s1", "e3"], ["hw"]),
             helper.make_node("Gather", ["shp", "idx"], ["hw2"], axis=0),
             helper.make_node("Gather", ["shp", "i0"], ["n"], axis=0),
             helper.make_node("ReduceProd", ["hw"], ["p"], keepdims=1),
             helper.make_node("ReduceProd", ["hw2"], ["p2"], keepdims=1),
             helper.make_node("Concat", ["n", "p"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"]),
             helper.make_node("Cast", ["p2"], ["y2"], to=F)]
    before = _model(nodes, [_vi("x", F, ["N", 4, 6])], [_vi("y", F, ["N", 24]), _vi("y2", F, [1])], inits)
    after, report = apply_passes(before, [InferShapes(), FoldShapes(), FoldConstants()])
    ops = op_types(after)
    assert "Slice" not in ops and "ReduceProd" not in ops
    assert ops.count("Cast") == 1  # its output is a graph output: declined
    assert ops.count("Gather") == 1 and "Shape" in ops  # the batch dim stays dynamic
    assert report["passes"][1]["stats"] == {"partial": 2}
    assert after.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    for n in (1, 5):
        assert_equivalent(before, after, {"x": np.ones((n, 4, 6), np.float32)})


def test_constant_of_shape_folds_under_the_cap_and_declines_over_it():
    inits = [_init("shape", np.array([2, 3], np.int64))]
    value = numpy_helper.from_array(np.array([1.5], np.float32))
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["k"], value=value),
             helper.make_node("Add", ["x", "k"], ["y"])]
    before = _model(nodes, [_vi("x", F, [2, 3])], [_vi("y", F, [2, 3])], inits)
    after, _ = apply_passes(before, [FoldConstants()])
    assert op_types(after) == ["Add"]
    assert_equivalent(before, after)
    ctx = PassContext(options={"fold_size_limit": 3})  # 6 elements out, 2 in: grows by 4
    after, _ = apply_passes(before, [FoldConstants()], ctx)
    assert op_types(after) == ["ConstantOfShape", "Add"]
    assert any("fold_size_limit=3" in r for r in _declines(ctx, "ConstantOfShape"))


def test_weights_fold_under_the_weight_cap():
    # ConstantOfShape feeding only a Conv weight slot: the runtime holds that tensor anyway.
    inits = [_init("wshape", np.array([4, 2, 3, 3], np.int64))]
    value = numpy_helper.from_array(np.array([0.25], np.float32))
    nodes = [helper.make_node("ConstantOfShape", ["wshape"], ["w"], value=value),
             helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    before = _model(nodes, [_vi("x", F, [1, 2, 5, 5])], [_vi("y", F, [1, 4, 5, 5])], inits)
    after, _ = apply_passes(before, [FoldConstants()], PassContext(options={"fold_size_limit": 4}))
    assert op_types(after) == ["Conv"]
    assert_equivalent(before, after)
    ctx = PassContext(options={"fold_size_limit": 4, "fold_weight_size_limit": 10})
    after, _ = apply_passes(before, [FoldConstants()], ctx)
    assert any("fold_weight_size_limit=10" in r for r in _declines(ctx, "ConstantOfShape"))


def _single(node, inputs, outputs, inits=(), **kw):
    return _model([node], inputs, outputs, inits, **kw)


def test_declines_nondeterministic_ops():
    node = helper.make_node("RandomNormal", [], ["r"], shape=[2], seed=1.0)
    before = _model([node, helper.make_node("Add", ["x", "r"], ["y"])], [_vi("x", F, [2])], [_vi("y", F, [2])])
    ctx = PassContext()
    after, _ = apply_passes(before, [FoldConstants()], ctx)
    assert "RandomNormal" in op_types(after)
    assert _declines(ctx, "RandomNormal") == ["nondeterministic op"]


def test_declines_other_domains():
    node = helper.make_node("Custom", ["a"], ["y"], domain="com.example")
    before = _single(node, [], [_vi("y", F, [2])], [_init("a", np.ones(2, np.float32))],
                     extra_opsets=[helper.make_opsetid("com.example", 1)])
    before.graph.node.append(helper.make_node("Identity", ["y"], ["z"]))
    ctx = PassContext()
    apply_passes(before, [FoldConstants()], ctx)
    assert any("domain 'com.example'" in r for r in _declines(ctx, "Custom"))


def test_declines_ops_with_subgraphs_and_folds_inside_them():
    # If on a constant condition is left alone; inside the branch, Add of two constants (one outer) folds.
    c = _init("cond", np.array(True))
    outer = _init("outer", np.array([1.0, 2.0], np.float32))

    def branch(name, k):
        out = _vi(f"{name}_out", F, [2])
        local = _init(f"{name}_k", np.array([k, k], np.float32))
        nodes = [helper.make_node("Add", ["outer", f"{name}_k"], [f"{name}_c"]),
                 helper.make_node("Mul", ["x", f"{name}_c"], [f"{name}_out"])]
        return helper.make_graph(nodes, name, [], [out], [local])

    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", 2.0), else_branch=branch("else", 3.0))
    before = _single(node, [_vi("x", F, [2])], [_vi("y", F, [2])], [c, outer])
    ctx = PassContext()
    after, report = apply_passes(before, [FoldConstants()], ctx)
    assert op_types(after) == ["If", "Mul", "Mul"]
    assert report["passes"][0]["stats"] == {"folded": 2}
    assert _declines(ctx, "If") == ["op with subgraphs is not folded"]
    then = next(a.g for a in after.graph.node[0].attribute if a.name == "then_branch")
    assert "then_c" in {t.name for t in then.initializer}  # the folded value is local to the branch
    assert_equivalent(before, after)


def test_folds_inside_loop_body():
    trip, cond = _init("trip", np.array(3, np.int64)), _init("cond", np.array(True))
    body_nodes = [helper.make_node("Identity", ["c_in"], ["c_out"]),
                  helper.make_node("Neg", ["k"], ["nk"]),
                  helper.make_node("Add", ["acc_in", "nk"], ["acc_out"])]
    body = helper.make_graph(body_nodes, "body",
                             [_vi("i", I64, []), _vi("c_in", TensorProto.BOOL, []), _vi("acc_in", F, [2])],
                             [_vi("c_out", TensorProto.BOOL, []), _vi("acc_out", F, [2])])
    node = helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)
    before = _single(node, [_vi("x", F, [2])], [_vi("y", F, [2])],
                     [trip, cond, _init("k", np.array([0.5, 1.5], np.float32))])
    after, _ = apply_passes(before, [FoldConstants()])
    assert "Neg" not in op_types(after)
    assert_equivalent(before, after)


def test_declines_dequantize_linear():
    inits = [_init("q", np.array([1, -2], np.int8)), _init("s", np.array(0.5, np.float32)),
             _init("z", np.array(0, np.int8))]
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"]), helper.make_node("Mul", ["x", "w"], ["y"])]
    before = _model(nodes, [_vi("x", F, [2])], [_vi("y", F, [2])], inits)
    ctx = PassContext()
    after, _ = apply_passes(before, [FoldConstants()], ctx)
    assert "DequantizeLinear" in op_types(after)
    assert any("quantized-weight form" in r for r in _declines(ctx, "DequantizeLinear"))


def test_declines_graph_outputs():
    node = helper.make_node("Add", ["a", "a"], ["y"])
    before = _single(node, [_vi("x", F, [2])], [_vi("y", F, [2])], [_init("a", np.ones(2, np.float32))])
    ctx = PassContext()
    after, _ = apply_passes(before, [FoldConstants()], ctx)
    assert op_types(after) == ["Add"]
    assert any("graph output" in r for r in _declines(ctx, "Add"))


def test_declines_what_no_engine_can_evaluate():
    # Reshape of 3 elements to [2]: invalid, so every engine refuses; the node stays and the reason is logged.
    node = helper.make_node("Reshape", ["a", "s"], ["r"])
    before = _model([node, helper.make_node("Add", ["x", "r"], ["y"])], [_vi("x", F, [2])], [_vi("y", F, [2])],
                    [_init("a", np.ones(3, np.float32)), _init("s", np.array([2], np.int64))])
    ctx = PassContext()
    after, _ = apply_passes(before, [FoldConstants()], ctx)
    assert "Reshape" in op_types(after)
    assert any(r.startswith("evaluation failed") for r in _declines(ctx, "Reshape"))


@pytest.mark.parametrize("name", ["opset11_constants", "dynamic", "bert"])
def test_zoo_models(name):
    from onnxopt.models import zoo
    before = zoo.build(name)
    after, _ = apply_passes(before, [InferShapes(), FoldShapes(), FoldConstants()])
    assert len(op_types(after)) <= len(op_types(before))
    assert_equivalent(before, after, zoo.sample_inputs(before))
