"""Regions: what is grouped, stable keys, tensor uses, and the default formats with their reasons."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.analysis.qdq_placement import shapes_at
from onnxopt.analysis.regions import CONSTANT_INPUT, UNREAD, build_regions, default_formats, drop_unread, node_keys
from onnxopt.ir import Model
from onnxopt.plan import FLOAT, INT8
from onnxopt.quant_scheme import QuantScheme

RNG = np.random.default_rng(0)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _model(nodes, out_shape=(1, 4, 4, 4), extra=()):
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 4, 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, list(out_shape))],
                     [nh.from_array(f32(4, 3, 1, 1), "w"), nh.from_array(f32(4, 4, 1, 1), "w2"),
                      nh.from_array(f32(1, 4, 1, 1), "k"), *extra])
    return Model.from_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]))


def test_conv_and_its_only_relu_are_one_region_others_are_not():
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], name="conv"), h.make_node("Relu", ["c"], ["r"], name="relu"),
             h.make_node("Conv", ["r", "w2"], ["c2"], name="conv2"), h.make_node("Relu", ["c2"], ["r2"]),
             h.make_node("Add", ["c2", "r2"], ["y"], name="add")]
    m = _model(nodes)
    rg = build_regions(m, QuantScheme(), {})
    ids = [r.id for r in rg.regions]
    assert ids == ["conv", "conv2", "Relu:r2", "add"]  # conv2's output has two readers: its Relu is its own region
    conv = rg.region("conv")
    assert conv.nodes == ("conv", "relu") and conv.op_types == ("Conv", "Relu")
    assert conv.tensors == ("x", "c", "r") and conv.weights == 12
    use = rg.tensors["c2"]
    assert use.producer == "conv2" and sorted(use.readers) == ["Relu:r2", "add"]
    assert rg.tensors["y"].readers == (None,)  # a graph output: read outside every region


def test_keys_are_unique_for_unnamed_and_duplicate_names():
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], name="same"), h.make_node("Relu", ["c"], ["y"], name="same")]
    keys = sorted(node_keys(_model(nodes).graph).values())
    assert keys == ["Conv:c", "Relu:y"]


def test_macs_at_the_calibration_sizes():
    nodes = [h.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    m = _model(nodes)
    rg = build_regions(m, QuantScheme(), shapes_at(m, [{"x": f32(1, 3, 4, 4)}]))
    assert rg.region("conv").macs == 12 * 16
    assert rg.tensors["x"].elements == 48 and rg.tensors["y"].elements == 64


def test_default_formats_and_their_reasons():
    # Conv -> Add(const) -> Sigmoid -> Softmax: the bias Add and the Sigmoid nobody quantized reads stay float
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], name="conv"), h.make_node("Add", ["c", "k"], ["a"], name="bias"),
             h.make_node("Sigmoid", ["a"], ["s"], name="sig"), h.make_node("Softmax", ["s"], ["y"], name="sm")]
    m = _model(nodes)
    scheme = QuantScheme(op_types=QuantScheme().op_types | {"Softmax"})
    rg = build_regions(m, scheme, {})
    choices = default_formats(rg, m, scheme, {"exclude_nodes": ["sm"]})
    assert {k: (c.format, c.reason) for k, c in choices.items()} == {
        "conv": (INT8, "int8 by default"), "bias": (FLOAT, CONSTANT_INPUT), "sig": (FLOAT, UNREAD),
        "sm": (FLOAT, "excluded by name")}
    # without the exclusion the Softmax is still float: only the graph output reads it
    choices = default_formats(rg, m, scheme, {})
    assert (choices["sm"].format, choices["sm"].reason) == (FLOAT, UNREAD)


def test_drop_unread_repeats_until_stable():
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], name="conv"), h.make_node("Sigmoid", ["c"], ["s1"], name="s1"),
             h.make_node("Sigmoid", ["s1"], ["y"], name="s2")]
    m = _model(nodes)
    rg = build_regions(m, QuantScheme(), {})
    assert drop_unread(rg, {"conv": INT8, "s1": INT8, "s2": INT8}) == {"s2": UNREAD, "s1": UNREAD}
