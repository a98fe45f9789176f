"""QuantizeWeights: every format end to end on zoo models against numpy's decode, MatMulNBits / GatherBlockQuantized
against the decoder form, GPTQ against round-to-nearest on real layer inputs, plans, subgraphs and declines."""

from collections import Counter

import numpy as np
import onnx
import pytest
from differential import apply_passes, op_types
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx import version_converter

from onnxopt.ir import Model
from onnxopt.model_io import iter_graph_protos, model_size
from onnxopt.models.zoo import build, sample_inputs
from onnxopt.pass_manager import PassContext
from onnxopt.pass_state import WeightsReport
from onnxopt.passes.quantize_weights import QuantizeWeights
from onnxopt.plan import Plan, Region, RegionPlan
from onnxopt.verify import compare_outputs, format_diffs, run_model
from onnxopt.weight_codecs import encode
from onnxopt.weight_formats import parse_weights

_CACHE: dict[str, onnx.ModelProto] = {}


def zoo25(name: str) -> onnx.ModelProto:
    if name not in _CACHE:
        _CACHE[name] = version_converter.convert_version(build(name), 25)
    return _CACHE[name]


def quantize(proto, calibration=None, **options):
    ctx = PassContext(options=options, calibration=calibration)
    out, _ = apply_passes(proto, [QuantizeWeights()], ctx)
    onnx.checker.check_model(out, full_check=True)
    return out, ctx


def numpy_reference(proto: onnx.ModelProto, fmt: str) -> onnx.ModelProto:
    """``proto`` with every weight the pass rewrites replaced by numpy's decode of its round-to-nearest encoding."""
    ref = onnx.ModelProto()
    ref.CopyFrom(proto)
    spec = parse_weights(fmt)
    for g in iter_graph_protos(ref.graph):
        inits = {t.name: t for t in g.initializer}
        inits.update({n.output[0]: a.t for n in g.node if n.op_type == "Constant" for a in n.attribute
                      if a.name == "value"})
        for node in g.node:
            idx = 0 if node.op_type == "Gather" else 1
            if node.op_type not in ("MatMul", "Gemm", "Conv", "Gather") or node.input[idx] not in inits:
                continue
            w = nh.to_array(inits[node.input[idx]]).astype(np.float32)
            if node.op_type == "Gather" and (w.ndim != 2 or node.input[1] in inits):
                continue
            trans = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            layout = {"Conv": (0, 1), "Gather": (0, 1)}.get(node.op_type, (1, 0))
            wl = w.T if trans else w
            d = encode(wl, spec, *layout).decode()
            inits[node.input[idx]].CopyFrom(nh.from_array(d.T if trans else d, inits[node.input[idx]].name))
    return ref


def assert_same(a, b, feeds, rtol=1e-4, atol=1e-5):
    diffs = compare_outputs(run_model(a, feeds, optimize=False), run_model(b, feeds, optimize=False), rtol=rtol,
                            atol=atol)
    assert all(d.ok for d in diffs), format_diffs(diffs)


FORMATS = ["int4", "int4:block=32:asym", "ternary", "binary", "pow2", "kmeans:16", "w8:block=32"]


@pytest.mark.parametrize("name,fmts", [("small_cnn", FORMATS), ("bert", FORMATS),
                                       ("resnet18", ["int4:block=64", "ternary", "kmeans:16"]),
                                       ("mobilenetv2", ["int4:asym", "binary", "pow2"])])
def test_each_format_decodes_exactly_as_numpy(name, fmts):
    m = zoo25(name)
    feeds = sample_inputs(m, seed=5)
    for fmt in fmts:
        out, ctx = quantize(m, weights=fmt + ":rtn")
        assert_same(numpy_reference(m, fmt), out, feeds)
        rep = ctx.state(WeightsReport)
        assert rep.layers and all(r["format"] == parse_weights(fmt).name.replace("int8", "w8") for r in rep.layers)
        assert model_size(out) < 0.45 * model_size(m)
        run_model(out, feeds, optimize=True)  # loads and runs with onnxruntime's optimizations too


def test_sizes_and_what_the_report_says():
    m = zoo25("resnet18")
    out4, ctx4 = quantize(m, weights="int4:rtn")
    outt, ctxt = quantize(m, weights="ternary:rtn")
    assert model_size(out4) <= 0.2 * model_size(m) and model_size(outt) <= 0.1 * model_size(m)
    rep = ctxt.state(WeightsReport)
    assert rep.ratio < 0.07 and rep.bytes_before > 40e6
    assert any("storage format" in n for n in rep.notes)  # Conv int2: the DequantizeLinear runs every inference
    assert Counter(op_types(outt))["DequantizeLinear"] == sum(1 for r in rep.layers)
    assert any(t.data_type == T.INT2 for t in outt.graph.initializer)
    _, ctxk = quantize(zoo25("small_cnn"), weights="kmeans:16:rtn")
    assert any("file size" in n for n in ctxk.state(WeightsReport).notes)


def test_int2_with_n_not_a_multiple_of_4_is_stored_as_int4():
    """onnxruntime 1.32's fused 2-bit MatMulNBits is wrong when N % 4 != 0: such layers store int4 (same values)."""
    m = zoo25("small_cnn")  # its fc has N = 10
    out, ctx = quantize(m, weights="ternary:rtn")
    fc = next(r for r in ctx.state(WeightsReport).layers if r["op"] == "Gemm")
    assert any("stored as int4" in n for n in fc["notes"])
    feeds = sample_inputs(m, seed=2)
    diffs = compare_outputs(run_model(out, feeds, optimize=False), run_model(out, feeds, optimize=True))
    assert min(d.cosine for d in diffs) > 0.999


@pytest.mark.parametrize("fmt", ["int4:block=32", "int4:block=64:asym", "int4", "ternary", "w8"])
def test_matmulnbits_equals_the_decoder_form(fmt):
    m = zoo25("bert")
    feeds = sample_inputs(m, seed=4)
    plain, _ = quantize(m, weights=fmt + ":rtn")
    nbits, ctx = quantize(m, weights=fmt + ":rtn", weights_matmulnbits=1)  # accuracy level 1: fp32 compute
    ops = Counter(op_types(nbits))
    assert ops["MatMulNBits"] == 24 and ops["MatMul"] == 8  # the 8 attention MatMuls read two activations
    assert any(o.domain == "com.microsoft" for o in nbits.opset_import)
    node = next(n for n in nbits.graph.node if n.op_type == "MatMulNBits")
    assert {a.name: a.i for a in node.attribute}["accuracy_level"] == 1
    if fmt.startswith("int4"):
        assert ops["GatherBlockQuantized"] == 2  # the word and position embeddings
    assert_same(plain, nbits, feeds, rtol=1e-3, atol=1e-3)


def test_gemm_with_bias_as_matmulnbits_and_transb_flipped():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 40)).astype(np.float32)  # [N, K] with transB=1
    b = rng.standard_normal(12).astype(np.float32)
    g = h.make_graph([h.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="fc")], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [3, 40])],
                     [h.make_tensor_value_info("y", T.FLOAT, [3, 12])],
                     [nh.from_array(w, "w"), nh.from_array(b, "b")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
    feeds = {"x": rng.standard_normal((3, 40)).astype(np.float32)}
    plain, _ = quantize(m, weights="int4:block=16:rtn")
    gemm = next(n for n in plain.graph.node if n.op_type == "Gemm")
    assert not any(a.name == "transB" and a.i for a in gemm.attribute)
    assert_same(numpy_reference(m, "int4:block=16"), plain, feeds)
    nbits, _ = quantize(m, weights="int4:block=16:rtn", weights_matmulnbits=1)
    assert op_types(nbits) == ["MatMulNBits"]
    assert_same(plain, nbits, feeds, rtol=1e-3, atol=1e-3)


def correlated_layer(rng, k=64, n=32, samples=16):
    mix = rng.standard_normal((k, k)).astype(np.float32) * 0.5
    feeds = [{"x": (rng.standard_normal((8, k)).astype(np.float32) @ mix)} for _ in range(samples)]
    g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, ["b", k])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["b", n])],
                     [nh.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 25)]), feeds


@pytest.mark.parametrize("fmt", ["int4:block=32", "int4", "ternary", "pow2"])
def test_calibration_compensation_beats_round_to_nearest(rng, fmt):
    m, feeds = correlated_layer(rng)
    held = [{"x": f["x"][::-1].copy()} for f in feeds[:4]]  # the same distribution, rows not fitted on
    rtn, _ = quantize(m, feeds, weights=fmt + ":rtn")
    comp, ctx = quantize(m, feeds, weights=fmt)
    assert ctx.state(WeightsReport).layers[0]["rounding"] in ("gptq", "least-squares alpha")

    def err(q):
        return sum(float(np.sum((run_model(m, f)["y"] - run_model(q, f)["y"]) ** 2)) for f in held)

    assert err(comp) < err(rtn)


def test_conv_compensation_on_resnet_layer_inputs():
    m = zoo25("small_cnn")
    feeds = [sample_inputs(m, seed=i) for i in range(4)]
    out, ctx = quantize(m, feeds, weights="int4")
    rounding = {r["node"]: r["rounding"] for r in ctx.state(WeightsReport).layers}
    assert rounding["Conv_0"] == rounding["Conv_1"] == rounding["fc"] == "gptq"
    cos = [d.cosine for d in compare_outputs(run_model(m, feeds[0]), run_model(out, feeds[0]))]
    assert min(cos) > 0.999


def test_formats_from_options_and_from_a_plan():
    m = zoo25("small_cnn")
    out, ctx = quantize(m, weight_formats={"Conv_1": "ternary", "fc": "float"}, weights="int4")
    assert {r["node"]: r["format"] for r in ctx.state(WeightsReport).layers} == {"Conv_0": "int4", "Conv_1": "ternary"}
    regions = [Region("r1", ("Conv_0",), ("Conv",), ()), Region("r2", ("fc",), ("Gemm",), ())]
    plan = Plan("generic", "static", regions, {"r1": RegionPlan("kmeans:8", "test"), "r2": RegionPlan("int8", "x")})
    ctx = PassContext(options={"weights": "pow2"})  # the plan decides its regions, --weights the rest
    ctx.plan = plan
    model = Model.from_onnx(m)
    QuantizeWeights().run(model, ctx)
    assert {r["node"]: r["format"] for r in ctx.state(WeightsReport).layers} == {"Conv_0": "kmeans:8", "Conv_1": "pow2"}


def test_layers_inside_subgraphs():
    m = zoo25("control_flow")
    feeds = sample_inputs(m, seed=1)
    out, ctx = quantize(m, [feeds], weights="int4")
    rep = ctx.state(WeightsReport).layers
    assert rep and all(r["rounding"] == "nearest" for r in rep)
    assert_same(numpy_reference(m, "int4"), out, feeds)


def test_declines():
    m17 = build("small_cnn")  # opset 17: int2 needs 25
    _, ctx = quantize(m17, weights="ternary")
    assert ctx.state(WeightsReport) is None
    assert any("needs opset 25" in d.reason for d in ctx.declines)
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 2, 5, 5])
    g = h.make_graph([h.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct"),
                      h.make_node("Flatten", ["y"], ["y2"], axis=0),
                      h.make_node("MatMul", ["c", "y2"], ["z"], name="left")], "g", [x],
                     [h.make_tensor_value_info("z", T.FLOAT, [4, 147])],
                     [nh.from_array(np.ones((2, 3, 3, 3), np.float32), "w"), nh.from_array(np.ones((4, 1), np.float32),
                                                                                           "c")])
    mm = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
    out, ctx = quantize(mm, weights="int4")
    reasons = {d.where: d.reason for d in ctx.declines}
    assert "not rewritten" in reasons["ConvTranspose 'ct'"]
    assert "first input" in reasons["MatMul 'left'"]
    assert op_types(out) == op_types(mm)
