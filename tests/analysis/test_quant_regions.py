"""quant_regions: which nodes stay float (elementary normalizations, GELU, scheme ops, wide-range Concats,
recurrent state)."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from differential import apply_passes
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.analysis.quant_regions import (
    GELU,
    NORMALIZATION,
    float_regions,
    normalization_regions,
    recurrent_state_regions,
    wide_range_concats,
)
from onnxopt.models.zoo import build
from onnxopt.pass_manager import PassContext
from onnxopt.passes.quantize_static import QuantizeStatic
from onnxopt.verify import compare_arrays, run_model


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


RNG = np.random.default_rng(0)  # replaced in each test by the test's own generator (conftest.py: rng)
CELL = {"cell_h", "cell_add", "cell_sig", "cell_tanh", "cell_mul"}  # the nodes between state h and state hN


def _w(name, *shape):
    return nh.from_array((RNG.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)


def _recurrent_model(in_if=False):
    """x -> encoder (MatMul, Relu) -> e; cell: hN = sigmoid(e Wx + h Wh) * tanh(e Wx + h Wh); head: y = hN Wo.
    State h [1, 8] in, hN [1, 8] out (the caller feeds hN back as h). ``in_if``: everything but the encoder inside
    both branches of an If (as silero VAD selects its 16 kHz / 8 kHz model)."""
    def cell(sfx):
        return [h.make_node("MatMul", ["e", "wx"], [f"a{sfx}"], name=f"cell_x{sfx}"),
                h.make_node("MatMul", ["h", "wh"], [f"b{sfx}"], name=f"cell_h{sfx}"),
                h.make_node("Add", [f"a{sfx}", f"b{sfx}"], [f"s{sfx}"], name=f"cell_add{sfx}"),
                h.make_node("Sigmoid", [f"s{sfx}"], [f"g{sfx}"], name=f"cell_sig{sfx}"),
                h.make_node("Tanh", [f"s{sfx}"], [f"t{sfx}"], name=f"cell_tanh{sfx}"),
                h.make_node("Mul", [f"g{sfx}", f"t{sfx}"], [f"hN{sfx}"], name=f"cell_mul{sfx}"),
                h.make_node("MatMul", [f"hN{sfx}", "wo"], [f"y{sfx}"], name=f"head{sfx}")]

    outs = [h.make_tensor_value_info("y", T.FLOAT, [1, 2]), h.make_tensor_value_info("hN", T.FLOAT, [1, 8])]
    nodes = [h.make_node("MatMul", ["x", "we"], ["x1"], name="enc"),
             h.make_node("Relu", ["x1"], ["e"], name="enc_relu")]
    inputs = [h.make_tensor_value_info("x", T.FLOAT, [1, 4]), h.make_tensor_value_info("h", T.FLOAT, [1, 8])]
    if in_if:
        branches = {}
        for br in ("then", "else"):
            sfx = "" if br == "then" else "_2"
            branches[f"{br}_branch"] = h.make_graph(cell(sfx), br, [], [
                h.make_tensor_value_info(f"y{sfx}", T.FLOAT, [1, 2]),
                h.make_tensor_value_info(f"hN{sfx}", T.FLOAT, [1, 8])])
        nodes.append(h.make_node("If", ["cond"], ["y_out", "hN_out"], name="if", **branches))
        outs = [h.make_tensor_value_info("y_out", T.FLOAT, [1, 2]), h.make_tensor_value_info("hN_out", T.FLOAT, [1, 8])]
        inputs.append(h.make_tensor_value_info("cond", T.BOOL, []))
    else:
        nodes += cell("")
    g = h.make_graph(nodes, "rnn", inputs, outs, [_w("we", 4, 8), _w("wx", 8, 8), _w("wh", 8, 8), _w("wo", 8, 2)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def _rollout(model, xs, cond=True):
    """Run ``model`` over the steps ``xs``, feeding the state output back: (per-step outputs, final state, feeds)."""
    names = [o.name for o in model.graph.output]
    state, ys, fed = np.zeros((1, 8), np.float32), [], []
    for x in xs:
        feeds = {"x": x, "h": state, **({"cond": np.array(cond)} if len(model.graph.input) > 2 else {})}
        out = run_model(model, feeds)
        ys.append(out[names[0]])
        fed.append(feeds)
        state = out[names[1]]
    return np.concatenate(ys), state, fed


@pytest.mark.parametrize("in_if", [False, True])
def test_recurrent_state_cell_stays_float_and_the_rest_is_quantized(in_if):
    proto = _recurrent_model(in_if)
    graph = gs.import_onnx(proto)
    found = recurrent_state_regions(graph)
    nodes = [n for g in [graph, *[a for n in graph.nodes for a in n.attrs.values() if isinstance(a, gs.Graph)]]
             for n in g.nodes]
    names = {n.name.removesuffix("_2") for n in nodes if id(n) in found}
    assert names == CELL  # not the encoder, not the input's MatMul into the cell, not the head
    assert all("'h' -> 'hN" in found[k] for k in found)

    steps = [RNG.standard_normal((1, 4)).astype(np.float32) for _ in range(100)]
    calib = []  # as the model runs: each step with the float state at that point, both branches
    for cond in ((True, False) if in_if else (True,)):
        calib += _rollout(proto, steps[:60], cond)[2]
    xs = steps[60:]  # held out
    ctx = PassContext(options={"int8_min_conv_macs": 0}, calibration=calib)
    out, _ = apply_passes(proto, [QuantizeStatic()], ctx)
    onnx.checker.check_model(out, full_check=True)
    reasons = {d.where: d.reason for d in ctx.declines}
    assert "recurrent state path" in reasons["MatMul 'cell_h'"]
    graphs = [out.graph, *[a.g for n in out.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]]
    weights_dq = {n.input[0] for g in graphs for n in g.node if n.op_type == "DequantizeLinear"}
    assert {"we_quantized", "wx_quantized", "wo_quantized"} <= weights_dq  # encoder, input -> cell, head: int8
    assert not any(w.startswith("wh") for w in weights_dq)  # the state's own MatMul keeps its float weight
    producers = {o: n.op_type for g in graphs for n in g.node for o in n.output}
    state_out = out.graph.output[1].name
    assert producers[state_out] != "DequantizeLinear"
    if not in_if:  # the state leaves float although the (int8) head reads it
        assert producers[state_out] == "Mul"
    # differential over a held-out stream: the state carried 40 calls stays close to float
    for cond in ((True, False) if in_if else (True,)):
        y_ref, h_ref, _ = _rollout(proto, xs, cond)
        y_q, h_q, _ = _rollout(out, xs, cond)
        assert np.max(np.abs(h_q - h_ref)) < 0.05, np.max(np.abs(h_q - h_ref))
        assert compare_arrays("y", y_ref, y_q).cosine > 0.99  # the int8 head: close, clipped at held-out extremes


def test_no_recurrent_state_without_a_second_input_feeding_it():
    # image -> image (same shape in and out), plus a second output: a transform, not a carried state
    nodes = [h.make_node("MatMul", ["x", "w"], ["y"], name="mm"), h.make_node("Relu", ["y"], ["r"], name="relu")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 8]),
                                  h.make_tensor_value_info("unused", T.FLOAT, [2, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2, 8]), h.make_tensor_value_info("r", T.FLOAT, [2, 8])],
                     [_w("w", 8, 8)])
    assert recurrent_state_regions(gs.import_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))) == {}
    assert recurrent_state_regions(gs.import_onnx(_recurrent_model())) != {}


def test_long_tailed_tensors_by_span_over_mean_abs():
    from types import SimpleNamespace as S

    from onnxopt.analysis.quant_regions import long_tailed_tensors

    stats = {"gelu": S(min=-0.17, max=24.18, mean_abs=0.129), "relu": S(min=0.0, max=6.0, mean_abs=0.3),
             "dead": S(min=0.0, max=0.0, mean_abs=0.0)}
    found = long_tailed_tensors(stats)
    assert set(found) == {"gelu"} and "189x its mean |x|" in found["gelu"]
    assert long_tailed_tensors(stats, 0) == {}
    assert set(long_tailed_tensors(stats, 10)) == {"gelu", "relu"}
