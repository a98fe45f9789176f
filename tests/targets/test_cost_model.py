"""Cost models: the estimate's formula, the whole-model verdict and its break-even (the old Conv-MACs rule)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.analysis.qdq_placement import shapes_at
from onnxopt.analysis.regions import build_regions
from onnxopt.ir import Model
from onnxopt.plan import FLOAT, INT8
from onnxopt.quant_scheme import QuantScheme
from onnxopt.targets.cost_model import ORT_VNNI, CostModel, with_break_even

RNG = np.random.default_rng(0)
SIZE = 8  # 8x8 feature maps, 4 channels, 3x3 convs: 4*4*9*64 = 9216 MACs each


def chain(n: int = 3, dynamic: bool = False):
    nodes, inits, prev = [], [], "x"
    for i in range(n):
        inits.append(nh.from_array(RNG.standard_normal((4, 4, 3, 3)).astype(np.float32), f"w{i}"))
        nodes.append(h.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        prev = f"c{i}"
    nodes[-1].output[0] = "y"
    dims = ["n", 4, "h", "w"] if dynamic else [1, 4, SIZE, SIZE]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, dims)],
                     [h.make_tensor_value_info("y", T.FLOAT, dims)], inits)
    m = Model.from_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]))
    shapes = {} if dynamic else shapes_at(m, [{"x": np.zeros((1, 4, SIZE, SIZE), np.float32)}])
    return build_regions(m, QuantScheme(), shapes)


def test_estimate_formula():
    rg = chain()
    macs = 4 * 4 * 9 * SIZE * SIZE
    assert [r.macs for r in rg.regions] == [macs] * 3
    cm = CostModel("t", {"Conv": 4.0}, min_conv_macs=1000.0, qdq_per_element=2.0)
    overhead = 1000.0 * (0.95 - 0.25)
    assert cm.overhead("Conv") == pytest.approx(overhead)
    elems = 4 * SIZE * SIZE
    assert cm.estimate(rg, dict.fromkeys(["conv0", "conv1", "conv2"], FLOAT)) == pytest.approx(3 * macs)
    # all int8: input and output tensors meet the float world (2 boundaries), the inner ones fuse
    all_int8 = cm.estimate(rg, dict.fromkeys(["conv0", "conv1", "conv2"], INT8))
    assert all_int8 == pytest.approx(3 * (macs / 4 + overhead) + 2 * elems * 2.0)
    # the middle one float: it saves its overhead but its two tensors become boundaries (4 in all)
    mixed = cm.estimate(rg, {"conv0": INT8, "conv1": FLOAT, "conv2": INT8})
    assert mixed == pytest.approx(2 * (macs / 4 + overhead) + macs + 4 * elems * 2.0)


@pytest.mark.parametrize("break_even,kept", [(1e3, "int8"), (9e3, "int8"), (1e4, "float"), (1e6, "float")])
def test_verdict_breaks_even_at_the_mean_conv_macs(break_even, kept):
    rg = chain()  # 9216 MACs per Conv
    cm = with_break_even(CostModel("t", {"Conv": 3.5}, qdq_per_element=0.0), break_even)
    check = cm.judge(rg, dict.fromkeys(["conv0", "conv1", "conv2"], INT8))
    assert check.kept == kept and check.source == "cost model"
    if kept == "float":
        assert "too small for int8 to pay off" in cm.reason(check, rg) and "9.22e+03 MACs per Conv" in cm.reason(
            check, rg)


def test_break_even_zero_always_pays_and_unknown_macs_keep_int8():
    rg = chain()
    assert with_break_even(ORT_VNNI, 0).judge(rg, dict.fromkeys(["conv0", "conv1", "conv2"], INT8)).kept == "int8"
    dyn = chain(dynamic=True)
    check = ORT_VNNI.judge(dyn, dict.fromkeys(["conv0", "conv1", "conv2"], INT8))
    assert check.kept == "int8" and "MACs unknown" in check.engine and ORT_VNNI.estimate(dyn, {}) is None


def net(*layers, size: int = 16, opset: int = 14):
    """x -> layers -> y; a layer is ("conv", cin, cout, k, group) or ("op", OpType). Regions at 1x*x16x16."""
    nodes, inits, prev, ch = [], [], "x", layers[0][1]
    for i, layer in enumerate(layers):
        if layer[0] == "conv":
            _, cin, cout, k, group = layer
            inits.append(nh.from_array(RNG.standard_normal((cout, cin // group, k, k)).astype(np.float32), f"w{i}"))
            nodes.append(h.make_node("Conv", [prev, f"w{i}"], [f"t{i}"], name=f"l{i}", group=group,
                                     pads=[k // 2] * 4))
            ch = cout
        else:
            nodes.append(h.make_node(layer[1], [prev], [f"t{i}"], name=f"l{i}"))
        prev = f"t{i}"
    nodes[-1].output[0] = "y"
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, layers[0][1], size, size])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, ch, size, size])], inits)
    m = Model.from_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", opset)]))
    return build_regions(m, QuantScheme(), shapes_at(m, [{"x": np.zeros((1, layers[0][1], size, size), np.float32)}]))


def test_depthwise_convs_are_priced_on_their_own_and_kept_float_where_they_do_not_pay():
    from onnxopt.targets.cost_model import ORT_AVX2, _kind

    rg = net(("conv", 8, 32, 1, 1), ("conv", 32, 32, 3, 32), ("conv", 32, 32, 1, 1))
    assert [_kind(rg, r) for r in rg.regions] == ["Conv", "DepthwiseConv", "Conv"]
    dw = rg.regions[1]
    all_int8 = dict.fromkeys(["l0", "l1", "l2"], INT8)
    cheap_boundaries = CostModel("t", {"Conv": 2.0, "DepthwiseConv": 0.5}, min_conv_macs=0.0, qdq_per_element=0.1)
    one_float = {**all_int8, "l1": FLOAT}
    # dw in int8 costs 2x its MACs; float costs its MACs plus two cheap boundaries: float pays
    assert cheap_boundaries.estimate(rg, one_float) < cheap_boundaries.estimate(rg, all_int8)
    assert cheap_boundaries.estimate(rg, all_int8) - cheap_boundaries.estimate(rg, {**all_int8, "l1": FLOAT}) \
        == pytest.approx(dw.macs / 0.5 - dw.macs - 2 * 32 * 16 * 16 * 0.1)
    assert cheap_boundaries.paying(rg, all_int8) == one_float
    dear_boundaries = CostModel("t", {"Conv": 2.0, "DepthwiseConv": 0.5}, min_conv_macs=0.0, qdq_per_element=50.0)
    assert dear_boundaries.paying(rg, all_int8) == all_int8  # its boundaries would cost more than it saves
    assert ORT_AVX2.speedup["DepthwiseConv"] < 1.0  # measured: int8 depthwise convs ran slower on the AVX2 host


def test_an_op_the_runtime_runs_in_float_leaves_its_q_dq_unfused():
    rg = net(("conv", 8, 8, 3, 1), ("op", "HardSwish"), ("conv", 8, 8, 3, 1))
    formats = dict.fromkeys([r.id for r in rg.regions], INT8)
    assert len(formats) == 3  # conv, HardSwish, conv: the HardSwish is a region of its own
    elems = 8 * 16 * 16
    fused = CostModel("t", {"Conv": 2.0}, min_conv_macs=0.0, qdq_per_element=1.0)
    in_float = CostModel("t", {"Conv": 2.0}, min_conv_macs=0.0, qdq_per_element=1.0,
                         int8_ops=frozenset({"Conv"}))
    # input and output boundaries in both; the HardSwish's two tensors only where the runtime runs it in float
    assert in_float.estimate(rg, formats) - fused.estimate(rg, formats) == pytest.approx(2 * elems)
    from onnxopt.targets.cost_model import ORT_INT8_OPS

    assert "HardSwish" not in ORT_INT8_OPS and "Conv" in ORT_INT8_OPS


def test_break_even_zero_never_prefers_float():
    from onnxopt.targets.cost_model import ORT_AVX2

    rg = net(("conv", 8, 32, 1, 1), ("conv", 32, 32, 3, 32), ("op", "HardSwish"), ("conv", 32, 32, 1, 1))
    formats = dict.fromkeys([r.id for r in rg.regions], INT8)
    assert ORT_AVX2.paying(rg, formats) != formats  # by the AVX2 figures something stays float ...
    always = with_break_even(ORT_AVX2, 0)
    assert always.paying(rg, formats) == formats and always.judge(rg, formats).kept == "int8"  # ... with 0, nothing
    assert always.estimate(rg, formats) < always.estimate(rg, dict.fromkeys(formats, FLOAT))
