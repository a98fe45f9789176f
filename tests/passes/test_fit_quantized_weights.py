"""FitQuantizedWeights with 4-bit weights: the quantized model gets closer to the float one on held-out inputs, the
weights stay on their grid, every layer's error goes down, and the model stays valid and agrees with the
interpreter.

4-bit weights here are QuantScheme's TensorQuant(dtype="int4") in QDQ form: a 4-bit grid ([-7, 7]) on int8
storage, with int8 activations; issue 11's weight-only int4 (DequantizeLinear of INT4, opset 21) is fitted too.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from differential import apply_passes
from onnx import TensorProto, helper, numpy_helper

from onnxopt.pass_manager import PassContext
from onnxopt.passes.fit_quantized_weights import FitQuantizedWeights, classifier_head
from onnxopt.passes.keep_float_reference import KeepFloatReference
from onnxopt.passes.quantize_static import QuantizeStatic
from onnxopt.quant_scheme import QuantScheme, TensorQuant
from onnxopt.recovery import RecoveryReport
from onnxopt.verify import run_model

RNG = np.random.default_rng(0)  # replaced in each test by the test's own generator (conftest.py: rng)
INT4 = QuantScheme(weights=TensorQuant(dtype="int4", symmetric=True, per_channel=True))


def small_net() -> onnx.ModelProto:
    """Conv 3x3 (8 -> 16) -> Relu -> depthwise 3x3 -> Relu -> Conv 1x1 (16 -> 8) -> GlobalAveragePool -> Flatten ->
    Gemm (8 -> 4) -> logits. Weights heavy-tailed (Student t), as trained weights are; the projection has no bias
    (the fit gives it one, and the layers after it must still run)."""
    def t(*shape, fan):
        return (RNG.standard_t(4, shape) / np.sqrt(fan)).astype(np.float32)

    inits = {"w1": t(16, 8, 3, 3, fan=72), "b1": t(16, fan=100), "w2": t(16, 1, 3, 3, fan=9), "b2": t(16, fan=100),
             "w3": t(8, 16, 1, 1, fan=16), "fc": t(4, 8, fan=8), "fcb": t(4, fan=100)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", kernel_shape=[3, 3], pads=[1] * 4,
                              group=16),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], name="project", kernel_shape=[1, 1]),  # no bias
             helper.make_node("GlobalAveragePool", ["c3"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def feeds(n: int) -> list[dict[str, np.ndarray]]:
    return [{"x": RNG.standard_normal((1, 8, 12, 12)).astype(np.float32)} for _ in range(n)]


def quantized(proto, calib, fit: bool, **options):
    ctx = PassContext(options={"scheme": INT4, "int8_min_conv_macs": 0, **options}, calibration=calib)
    passes = [KeepFloatReference(), QuantizeStatic()] + ([FitQuantizedWeights()] if fit else [])
    out, _ = apply_passes(proto, passes, ctx)
    onnx.checker.check_model(out, full_check=True)
    return out, ctx


def error(before, after, held, name: str = "logits") -> float:
    ref = np.concatenate([run_model(before, f)[name] for f in held])
    got = np.concatenate([run_model(after, f, optimize=False)[name] for f in held])  # Q/DQ as the spec says
    return float(np.sum((got - ref) ** 2) / np.sum(ref ** 2))


def test_fit_int4_weights_to_the_float_model():
    proto = small_net()
    calib, held = feeds(24), feeds(8)
    plain, _ = quantized(proto, calib, False)
    fitted, ctx = quantized(proto, calib, True, fit_iterations=200, fit_objective="auto")
    before, after = error(proto, plain, held), error(proto, fitted, held)
    assert after < 0.85 * before, (before, after)
    inits = {t.name: numpy_helper.to_array(t) for t in fitted.graph.initializer}
    for n in fitted.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8:
            assert np.abs(inits[n.input[0]]).max() <= 7, n.name  # still a 4-bit grid
    layers = [e for e in ctx.state(RecoveryReport).layers if e.step == "fit"]
    assert {e.layer for e in layers} == {"conv1", "dw", "project", "fc"}
    assert all(e.after <= e.before for e in layers) and any(e.after < 0.8 * e.before for e in layers)
    assert "kl" in next(e.note for e in layers if e.layer == "fc")  # the classifier's last layer
    # every int32 bias still has scale = input scale x weight scale, so runtimes can fuse the layers
    producers = {o: n for n in fitted.graph.node for o in n.output}
    for conv in (n for n in fitted.graph.node if n.op_type in ("Conv", "Gemm")):
        x_dq, w_dq, b_dq = (producers[i] for i in conv.input[:3])
        want = inits[x_dq.input[1]] * inits[w_dq.input[1]]
        np.testing.assert_allclose(inits[b_dq.input[1]], want, rtol=1e-6)
    ref = run_model(fitted, held[0], "reference")["logits"]
    np.testing.assert_allclose(ref, run_model(fitted, held[0], optimize=False)["logits"], rtol=1e-3, atol=1e-4)


def test_fit_is_deterministic():
    proto, calib = small_net(), feeds(12)
    a, _ = quantized(proto, calib, True, fit_iterations=50)
    b, _ = quantized(proto, calib, True, fit_iterations=50)
    assert a.SerializeToString() == b.SerializeToString()


def test_classifier_head_detection():
    proto = small_net()
    nodes = {n.name: n for n in proto.graph.node}
    assert classifier_head(proto, nodes["fc"]) and not classifier_head(proto, nodes["project"])


def test_issue11_weight_only_int4_is_fitted():
    pytest.importorskip("onnxopt.passes.quantize_weights")
    from onnxopt.passes.quantize_weights import QuantizeWeights
    from onnxopt.passes.upgrade_opset import UpgradeOpset

    proto = small_net()
    calib, held = feeds(16), feeds(6)
    opts = {"weights": "int4:rtn"}

    def run(fit: bool):
        ctx = PassContext(options=dict(opts), calibration=calib)
        steps = [UpgradeOpset(21), KeepFloatReference(), QuantizeWeights()] + ([FitQuantizedWeights()] if fit else [])
        out, _ = apply_passes(proto, steps, ctx)
        onnx.checker.check_model(out, full_check=True)
        return out, ctx

    plain, _ = run(False)
    fitted, ctx = run(True)
    fitted_layers = [e for e in ctx.state(RecoveryReport).layers if e.step == "fit"]
    assert fitted_layers, [d.reason for d in ctx.declines if d.pass_name == "FitQuantizedWeights"]
    assert error(proto, fitted, held) < error(proto, plain, held)


def test_layers_with_few_rows_get_their_bias_fitted_only(monkeypatch):
    """``fit_min_rows``: the classifier after the global pooling sees one row per sample (18 training rows for 8
    weights per output): with 4 x 8 required, scales and rounding are not searched for it, only for the convs."""
    import onnxopt.passes.fit_quantized_weights as fqw

    proto, calib = small_net(), feeds(24)
    fc_shape = (8, 4)  # the Gemm's weight as the fit sees it, [k, cout]

    def fitted_shapes(**options) -> list[tuple[int, ...]]:
        seen: list[tuple[int, ...]] = []
        real = fqw.adaround

        def spy(obj, w, grid, cfg):
            seen.append(tuple(np.shape(w)[-2:]))
            return real(obj, w, grid, cfg)

        monkeypatch.setattr(fqw, "adaround", spy)
        _, ctx = quantized(proto, calib, True, fit_iterations=50, **options)
        monkeypatch.setattr(fqw, "adaround", real)
        notes = {e.layer: e.note for e in ctx.state(RecoveryReport).layers if e.step == "fit"}
        assert set(notes) == {"conv1", "dw", "project", "fc"}
        return seen, notes

    seen, _ = fitted_shapes()
    assert fc_shape in seen  # 18 rows >= 1 x 8: rounding is learned for the classifier too
    seen, notes = fitted_shapes(fit_min_rows=4)
    assert fc_shape not in seen and len(seen) == 3, seen  # the three convs only
    assert notes["fc"].split(",")[0] in ("bias", "kept"), notes["fc"]


def test_whole_model_check_keeps_a_fit_that_helps():
    proto = small_net()
    calib = feeds(24)
    plain, _ = quantized(proto, calib, False)
    fitted, ctx = quantized(proto, calib, True, fit_iterations=100)
    fit = next(s for s in ctx.state(RecoveryReport).steps if s.step == "fit")
    assert fit.detail["applied"] is True and fit.layers == 4
    assert fit.detail["held_out_error_after"] <= fit.detail["held_out_error_before"]
    assert fit.detail["held_out_samples"] == 6
    assert fitted.SerializeToString() != plain.SerializeToString()
    assert not [d for d in ctx.declines if d.pass_name == "FitQuantizedWeights"]


def test_whole_model_check_reverts_a_fit_that_hurts(monkeypatch):
    """Each layer's choice is judged on its own rows; the whole model is judged on the held-out samples too. Here
    every fitted layer's weight is then spoiled (signs flipped): the model gets further from float, and the pass
    puts every weight back, so the output is the quantized model as it was."""
    import onnxopt.passes.fit_quantized_weights as fqw

    proto = small_net()
    calib, held = feeds(24), feeds(6)
    plain, _ = quantized(proto, calib, False)
    real = fqw.write_weight

    def spoil(graph, ql, q, scale):
        return real(graph, ql, -q, scale)

    monkeypatch.setattr(fqw, "write_weight", spoil)
    out, ctx = quantized(proto, calib, True, fit_iterations=50, fit_bias=False)
    fit = next(s for s in ctx.state(RecoveryReport).steps if s.step == "fit")
    assert fit.detail["applied"] is False and fit.layers == 0
    assert fit.detail["held_out_error_after"] > fit.detail["held_out_error_before"]
    (decline,) = [d for d in ctx.declines if d.pass_name == "FitQuantizedWeights"]
    assert "held-out" in decline.reason
    layers = [e for e in ctx.state(RecoveryReport).layers if e.step == "fit"]
    assert layers and all(e.after == e.before for e in layers)
    assert error(proto, out, held) == pytest.approx(error(proto, plain, held), rel=1e-6)
    onnx.checker.check_model(out, full_check=True)


def test_incremental_capture_gives_the_same_fit():
    """Layer inputs computed from the ones captured before (a cut of the model per layer) are the values a run of
    the whole prefix gives: the fitted models are the same bytes."""
    proto, calib = small_net(), feeds(12)
    a, _ = quantized(proto, calib, True, fit_iterations=50)
    b, _ = quantized(proto, calib, True, fit_iterations=50, fit_incremental=False)
    assert a.SerializeToString() == b.SerializeToString()


def test_sequential_bias_correction_from_kept_inputs_is_exact(monkeypatch):
    """CorrectBias's sequential form computes each layer's output from its kept input (InputCapture): the same
    model as capturing every output from the whole prefix."""
    import onnxopt.passes.correct_bias as cb
    from onnxopt.analysis.layerwise import capture
    from onnxopt.passes.correct_bias import CorrectBias

    class WholePrefix:
        def __init__(self, feeds):
            self.feeds = feeds

        def values(self, proto, name, keep=True):
            return [v[name] for v in capture(proto, self.feeds, [name], optimize=False)]

    proto, calib = small_net(), feeds(12)

    def run():
        ctx = PassContext(options={"scheme": INT4, "int8_min_conv_macs": 0, "bias_correction": "sequential"},
                          calibration=calib)
        out, _ = apply_passes(proto, [KeepFloatReference(), QuantizeStatic(), CorrectBias()], ctx)
        assert next(s for s in ctx.state(RecoveryReport).steps if s.step == "bias").layers == 4
        return out

    kept = run()
    monkeypatch.setattr(cb, "InputCapture", WholePrefix)
    whole = run()
    assert kept.SerializeToString() == whole.SerializeToString()
    onnx.checker.check_model(kept, full_check=True)
