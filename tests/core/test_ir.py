"""onnxopt.ir: the shared tensor helpers live here only, and to_onnx drops value_info that says nothing of rank."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto as T
from onnx import helper as h

from onnxopt import ir
from onnxopt.passes import remove_noops


def _model():
    nodes = [h.make_node("Relu", ["x"], ["a"]), h.make_node("Neg", ["a"], ["b"]), h.make_node("Abs", ["b"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)],
                     value_info=[h.make_tensor_value_info("a", T.FLOAT, None),
                                 h.make_tensor_value_info("b", T.FLOAT, ["N", 3])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_to_onnx_drops_rankless_value_info_and_keeps_graph_io():
    out = ir.Model.from_onnx(_model()).to_onnx()
    assert [vi.name for vi in out.graph.value_info] == ["b"]
    assert not out.graph.output[0].type.tensor_type.HasField("shape")  # graph outputs stay as they are
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    out.graph.output[0].type.tensor_type.shape.dim.add().dim_param = "N"
    out.graph.output[0].type.tensor_type.shape.dim.add().dim_value = 3
    onnx.checker.check_model(out, full_check=True)


def test_shared_helpers_have_one_home():
    for name in ("dtype_of", "shape_of", "bypass_reason", "default_domain", "other_outputs_unused"):
        assert getattr(remove_noops, name) is getattr(ir, name)
    t = gs.Variable("t", dtype=np.float32, shape=["N", 3, -1])
    assert ir.shape_of(t) == ["N", 3, None] and ir.dtype_of(t) == np.float32
    assert ir.static_shape(gs.Constant("c", np.zeros((2, 3), np.float32))) == [2, 3]
    wrapped = ir.default_domain(lambda node, graph, ctx: None)
    assert wrapped(gs.Node("Relu", domain="com.x"), None, None) == "domain 'com.x' is not the default one"
