"""EliminateReshapeAs: Reshape(y, Shape(x)) with y shaped like x, rebuilt Shape(x) Concats and no-op Flattens go."""

import numpy as np
import onnx
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.pass_manager import PassContext
from onnxopt.passes.eliminate_dead_code import EliminateDeadCode
from onnxopt.passes.eliminate_reshape_as import EliminateReshapeAs


def model(nodes, shape, out_shape=None, inits=(), opset=17):
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, shape)],
                     [h.make_tensor_value_info("y", T.FLOAT, out_shape or shape)],
                     [nh.from_array(np.asarray(v), n) for n, v in inits])
    m = onnx.shape_inference.infer_shapes(h.make_model(g, opset_imports=[h.make_opsetid("", opset)]))
    onnx.checker.check_model(m, full_check=True)
    return m


def run(m, x, ctx=None):
    out, _ = apply_passes(m, [EliminateReshapeAs(), EliminateDeadCode()], ctx)
    assert_equivalent(m, out, {"x": x})
    return out


def test_paddle_softmax_reshape_as_input():
    # what paddle exports for softmax on [N, C]: Shape(x), Flatten(x), Softmax, Reshape(., Shape(x)) -> y
    m = model([h.make_node("Shape", ["x"], ["s"]), h.make_node("Flatten", ["x"], ["f"], axis=1),
               h.make_node("Softmax", ["f"], ["p"], axis=-1), h.make_node("Reshape", ["p", "s"], ["y"])], ["N", 5])
    out = run(m, np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32))
    assert op_types(out) == ["Softmax"]
    assert [o.name for o in out.graph.output] == ["y"]


def test_concat_of_its_own_dims_becomes_the_shape():
    # Reshape(Relu(x), Concat(Unsqueeze(Gather(Shape(x), i)) for each dim)): the Concat is Shape(x), then a no-op
    nodes, inits = [h.make_node("Shape", ["x"], ["s"]), h.make_node("Relu", ["x"], ["r"])], [("ax", np.array([0]))]
    for i in range(3):
        inits.append((f"i{i}", np.array(i - 3 if i == 2 else i)))
        nodes += [h.make_node("Gather", ["s", f"i{i}"], [f"g{i}"], axis=0),
                  h.make_node("Unsqueeze", [f"g{i}", "ax"], [f"u{i}"])]
    nodes += [h.make_node("Concat", ["u0", "u1", "u2"], ["c"], axis=0), h.make_node("Reshape", ["r", "c"], ["t"]),
              h.make_node("Neg", ["t"], ["y"])]
    m = model(nodes, ["N", 4, "M"], inits=inits)
    out = run(m, np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32))
    assert op_types(out) == ["Relu", "Neg"]


def test_declines_shape_changing_paths():
    # Transpose changes the shape, Flatten of a rank-3 tensor too, the dims picked out of order are not Shape(x)
    nodes = [h.make_node("Shape", ["x"], ["s"]), h.make_node("Transpose", ["x"], ["tr"], perm=[1, 0, 2]),
             h.make_node("Reshape", ["tr", "s"], ["a"]), h.make_node("Flatten", ["x"], ["f"], axis=1),
             h.make_node("Shape", ["f"], ["fs"]), h.make_node("Reshape", ["a", "fs"], ["b"])]
    inits = [("ax", np.array([0])), ("i0", np.array(1)), ("i1", np.array(0)), ("i2", np.array(2))]
    for i in range(3):
        nodes += [h.make_node("Gather", ["s", f"i{i}"], [f"g{i}"], axis=0),
                  h.make_node("Unsqueeze", [f"g{i}", "ax"], [f"u{i}"])]
    nodes += [h.make_node("Concat", ["u0", "u1", "u2"], ["c"], axis=0), h.make_node("Reshape", ["x", "c"], ["d"]),
              h.make_node("Flatten", ["d"], ["e"], axis=1), h.make_node("Add", ["b", "e"], ["y"])]
    m = model(nodes, [2, 2, 3], out_shape=[2, 6], inits=inits)
    ctx = PassContext()
    out = run(m, np.arange(12, dtype=np.float32).reshape(2, 2, 3), ctx)
    assert sorted(op_types(out)) == sorted(op_types(m))
    reasons = {d.reason for d in ctx.declines}
    assert "reshape_as_own_shape: input is not x or x through shape-keeping nodes" in reasons
    assert "flatten_noop: input has rank 3, not 2" in reasons
    assert "concat_of_own_dims: input 0 does not pick dim 0 as a scalar" in reasons
