"""quant_regions: which nodes stay float (elementary normalizations, GELU, scheme ops, wide-range Concats)."""

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.analysis.quant_regions import (
    GELU,
    NORMALIZATION,
    float_regions,
    normalization_regions,
    wide_range_concats,
)
from onnxopt.models.zoo import build


def _graph(nodes, inits=()):
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2, 8])], list(inits))
    return gs.import_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))


def _c(name, v):
    return nh.from_array(np.array(v, dtype=np.float32), name)


def _names(graph, found):
    return {n.name for n in graph.nodes if id(n) in found}


def test_layernorm_as_variance_of_centered():
    nodes = [h.make_node("Relu", ["x"], ["r"], name="before"),
             h.make_node("ReduceMean", ["r"], ["m"], name="mean", axes=[-1]),
             h.make_node("Sub", ["r", "m"], ["d"], name="center"),
             h.make_node("Pow", ["d", "two"], ["d2"], name="square"),
             h.make_node("ReduceMean", ["d2"], ["v"], name="var", axes=[-1]),
             h.make_node("Add", ["v", "eps"], ["ve"], name="eps_add"),
             h.make_node("Sqrt", ["ve"], ["s"], name="sqrt"),
             h.make_node("Div", ["d", "s"], ["n"], name="norm"),
             h.make_node("Mul", ["n", "gamma"], ["y"], name="affine")]
    g = _graph(nodes, [_c("two", 2.0), _c("eps", 1e-5), _c("gamma", np.ones(8))])
    found = normalization_regions(g)
    assert _names(g, found) == {"mean", "center", "square", "var", "eps_add", "sqrt", "norm"}
    assert set(found.values()) == {NORMALIZATION}


def test_layernorm_as_e_x2_minus_mean_sq():
    nodes = [h.make_node("ReduceMean", ["x"], ["m"], name="mean", axes=[-1]),
             h.make_node("Mul", ["x", "x"], ["x2"], name="xx"),
             h.make_node("ReduceMean", ["x2"], ["ex2"], name="ex2", axes=[-1]),
             h.make_node("Mul", ["m", "m"], ["m2"], name="mm"),
             h.make_node("Sub", ["ex2", "m2"], ["v"], name="var"),
             h.make_node("Add", ["v", "eps"], ["ve"], name="eps_add"),
             h.make_node("Sqrt", ["ve"], ["s"], name="sqrt"),
             h.make_node("Sub", ["x", "m"], ["d"], name="center"),
             h.make_node("Div", ["d", "s"], ["y"], name="norm")]
    g = _graph(nodes, [_c("eps", 1e-5)])
    assert _names(g, normalization_regions(g)) == {"mean", "xx", "ex2", "mm", "var", "eps_add", "sqrt", "center",
                                                   "norm"}


def test_plain_div_is_not_a_normalization():
    nodes = [h.make_node("Sqrt", ["x"], ["s"], name="sqrt"), h.make_node("Div", ["x", "s"], ["y"], name="div")]
    g = _graph(nodes)
    assert normalization_regions(g) == {}


def test_gelu_and_scheme_ops_on_bert():
    g = gs.import_onnx(build("bert"))
    found = float_regions(g, {"Softmax", "LayerNormalization", "Erf"})
    ops = {n.op for n in g.nodes if id(n) in found}
    assert {"Softmax", "Erf"} <= ops
    gelu = [n for n in g.nodes if found.get(id(n)) == GELU]
    assert {n.op for n in gelu} >= {"Mul", "Add"}  # Erf itself: kept float by the scheme
    assert not any(n.op in ("MatMul", "Conv") for n in g.nodes if id(n) in found)


def test_wide_range_concat_rule():
    nodes = [h.make_node("Concat", ["x", "p"], ["y"], name="head", axis=1)]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 4]),
                                  h.make_tensor_value_info("p", T.FLOAT, [2, 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2, 8])])
    graph = gs.import_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    assert wide_range_concats(graph, {"x": (0.0, 320.0), "p": (0.0, 1.0)}) != {}
    assert wide_range_concats(graph, {"x": (-2.0, 3.0), "p": (0.0, 1.0)}) == {}
    assert wide_range_concats(graph, {"x": (0.0, 320.0), "p": (0.0, 1.0)}, factor=500) == {}
