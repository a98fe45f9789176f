"""SmoothActivations: the float model computes the same, and dynamic int8 after it moves less from float."""

import numpy as np
import onnx
import pytest
from differential import apply_passes, assert_equivalent, op_types
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.pass_manager import PassContext
from onnxopt.passes.quantize_dynamic import QuantizeDynamic
from onnxopt.passes.smooth_activations import SmoothActivations
from onnxopt.recovery import RecoveryReport
from onnxopt.targets import get_target
from onnxopt.verify import run_model

K, N, SEQ = 32, 48, 16


def transformer_block(rng, outliers=True):
    """LayerNorm whose gamma gives 3 channels 40x the others (BERT's outlier dims), read by two MatMuls (Q/K-like)
    and by a residual Add, then a Gemm (transB) reading the sum."""
    gamma = np.ones(K, np.float32)
    if outliers:
        gamma[[3, 11, 20]] = 40.0
    inits = {"gamma": gamma, "beta": np.zeros(K, np.float32),
             "w1": rng.standard_normal((K, N)).astype(np.float32) * 0.2,
             "w2": rng.standard_normal((K, N)).astype(np.float32) * 0.2,
             "w3": rng.standard_normal((N, K)).astype(np.float32) * 0.2,  # Gemm transB: [N, K]
             "b3": rng.standard_normal(N).astype(np.float32)}
    nodes = [h.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1),
             h.make_node("MatMul", ["ln", "w1"], ["q"]), h.make_node("MatMul", ["ln", "w2"], ["k"]),
             h.make_node("Add", ["q", "k"], ["qk"]),
             h.make_node("ReduceMean", ["ln"], ["res"], axes=[-1], keepdims=1),
             h.make_node("Reshape", ["ln", "shape2d"], ["ln2"]),
             h.make_node("Gemm", ["ln2", "w3", "b3"], ["g"], transB=1)]
    inits["shape2d"] = np.array([SEQ, K], np.int64)
    outs = [h.make_tensor_value_info(n, T.FLOAT, None) for n in ("qk", "res", "g")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, SEQ, K])], outs,
                         [nh.from_array(v, k) for k, v in inits.items()])
    return onnx.shape_inference.infer_shapes(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))


def feeds(rng, n):
    return [{"x": rng.standard_normal((1, SEQ, K)).astype(np.float32)} for _ in range(n)]


SCHEME = get_target("x86-avx2").scheme


def smooth(model, calib):
    ctx = PassContext(calibration=calib)
    out, _ = apply_passes(model, [SmoothActivations(SCHEME)], ctx)
    return out, ctx


def rel_error(ref_model, model, data):
    e = t = 0.0
    for f in data:
        ref, got = run_model(ref_model, f), run_model(model, f)
        for k in ("qk", "g"):
            e += float(np.sum((got[k] - ref[k]) ** 2))
            t += float(np.sum(ref[k] ** 2))
    return e / t


def test_same_function_and_dynamic_int8_closer(rng):
    model = transformer_block(rng)
    calib, held = feeds(rng, 8), feeds(rng, 4)
    out, ctx = smooth(model, calib)
    for f in held:
        assert_equivalent(model, out, f, rtol=1e-4, atol=1e-4)
    # one Mul for the LayerNorm output (ln), one for its reshape read by the Gemm: the residual reads ln unchanged
    assert op_types(out).count("Mul") == 2
    mul_inputs = {n.input[0] for n in out.graph.node if n.op_type == "Mul"}
    assert mul_inputs == {"ln", "ln2"}
    assert next(n for n in out.graph.node if n.op_type == "ReduceMean").input[0] == "ln"
    layers = [e for e in ctx.state(RecoveryReport).layers if e.step == "smooth"]
    assert len(layers) == 2 and all(e.after < e.before for e in layers)

    def dynamic(m):
        q, _ = apply_passes(m, [QuantizeDynamic()], PassContext(options={"scheme": SCHEME}))
        onnx.checker.check_model(q, full_check=True)
        assert op_types(q).count("MatMulInteger") == 3
        return q

    plain, smoothed = rel_error(model, dynamic(model), held), rel_error(model, dynamic(out), held)
    assert smoothed < 0.5 * plain, (plain, smoothed)


def test_leaves_alone_what_it_cannot_improve(rng):
    """Every channel of the activation reaches exactly 1 and every weight row exactly 0.5: any alpha scales all
    channels alike, which per-tensor and per-column grids undo, so no alpha lowers the error and nothing changes."""
    w = np.where(rng.random((K, N)) < 0.5, -0.5, 0.5).astype(np.float32) * rng.uniform(0.2, 1.0, (K, N)).astype(
        np.float32)
    w[np.arange(K), rng.integers(0, N, K)] = 0.5  # each row's |max| is 0.5
    graph = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"])], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, [1, SEQ, K])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)], [nh.from_array(w, "w")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    calib = []
    for _ in range(4):
        x = rng.uniform(-1, 1, (1, SEQ, K)).astype(np.float32)
        x[0, rng.integers(0, SEQ, K), np.arange(K)] = 1.0  # each channel's |max| is 1
        calib.append({"x": x})
    out, ctx = smooth(model, calib)
    assert op_types(out) == ["MatMul"]
    (entry,) = [e for e in ctx.state(RecoveryReport).layers if e.step == "smooth"]
    assert "kept" in entry.note and entry.after == entry.before > 0


def test_subgraph_readers_are_declined(rng):
    then_g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["t"])], "then", [],
                          [h.make_tensor_value_info("t", T.FLOAT, [1, SEQ, N])],
                          [nh.from_array(rng.standard_normal((K, N)).astype(np.float32), "w")])
    else_g = h.make_graph([h.make_node("Identity", ["z"], ["e"])], "else", [],
                          [h.make_tensor_value_info("e", T.FLOAT, [1, SEQ, N])])
    graph = h.make_graph([h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, [1, SEQ, K]),
                          h.make_tensor_value_info("z", T.FLOAT, [1, SEQ, N]),
                          h.make_tensor_value_info("c", T.BOOL, [])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, SEQ, N])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    calib = [{"x": f["x"], "z": np.zeros((1, SEQ, N), np.float32), "c": np.array(True)} for f in feeds(rng, 2)]
    out, ctx = smooth(model, calib)
    assert op_types(out) == op_types(model)
    assert any("in a subgraph" in d.reason for d in ctx.declines), [d.reason for d in ctx.declines]


def test_without_calibration_data_declines(rng):
    model = transformer_block(rng)
    ctx = PassContext()
    out, _ = apply_passes(model, [SmoothActivations(SCHEME)], ctx)
    assert op_types(out) == op_types(model)
    assert any("no calibration data" in d.reason for d in ctx.declines)


def test_rule_says_skip(rng):
    model = transformer_block(rng)
    ctx = PassContext(calibration=feeds(rng, 4))
    out, _ = apply_passes(model, [SmoothActivations(SCHEME, quantized_as=lambda m, data: None)], ctx)
    assert op_types(out) == op_types(model)


@pytest.mark.parametrize("quantize,recover,expected", [
    ("dynamic", None, None),         # not a default (it did not pay where the planner decides: see recipe_recover)
    ("dynamic", "smooth", "dynamic"),
    ("auto", "smooth", "dynamic"),   # auto chooses dynamic for this transformer block ...
    ("static", "smooth", "static"),  # ... and a static simulation when static is asked for
])
def test_recipe_rule(rng, quantize, recover, expected):
    from onnxopt.ir import Model
    from onnxopt.targets.recipe_recover import recover_steps

    opts = {"quantize": quantize, "calibration": feeds(rng, 2), **({"recover": recover} if recover else {})}
    before, _ = recover_steps(SCHEME, opts)
    steps = [s for s in before if isinstance(s, SmoothActivations)]
    got = steps[0].quantized_as(Model.from_onnx(transformer_block(rng)), True) if steps else None
    assert got == expected
