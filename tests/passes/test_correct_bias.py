"""CorrectBias: on a layer whose weight rounding error has a non-zero mean, the mean output shift goes (measured
on held-out inputs too), the squared error drops, and the model stays valid and agrees with the interpreter."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from differential import apply_passes
from onnx import TensorProto, helper, numpy_helper

from onnxopt.pass_manager import PassContext
from onnxopt.passes.correct_bias import CorrectBias
from onnxopt.passes.keep_float_reference import KeepFloatReference
from onnxopt.passes.quantize_static import QuantizeStatic
from onnxopt.quant_scheme import QuantScheme, TensorQuant
from onnxopt.recovery import RecoveryReport
from onnxopt.verify import run_model

RNG = np.random.default_rng(0)  # replaced in each test by the test's own generator (conftest.py: rng)


def biased_rounding_model(bias: bool = True) -> onnx.ModelProto:
    """x -> Relu -> Conv 3x3 (8 -> 6). Every weight sits 0.4 of a step above a grid point of its (per-tensor and
    per-channel) int8 grid, so rounding to nearest moves each one down: with inputs >= 0 (the Relu) every output
    channel's mean falls by 0.4 x step x the sum of its mean inputs."""
    step = 0.01
    w_int = RNG.integers(-100, 100, size=(6, 8, 3, 3)).astype(np.float32)
    w = (w_int + 0.4) * step
    w[:, 0, 0, 0] = 127 * step  # pins every channel's absmax, so the grid step is exactly ``step``
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
    ins = ["r", "w"]
    if bias:
        inits.append(numpy_helper.from_array((0.1 * RNG.standard_normal(6)).astype(np.float32), "b"))
        ins.append("b")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Conv", ins, ["y"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3])]
    g = helper.make_graph(nodes, "biased", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 10, 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def feeds(n: int) -> list[dict[str, np.ndarray]]:
    return [{"x": (RNG.standard_normal((1, 8, 10, 10)) + 0.5).astype(np.float32)} for _ in range(n)]


def quantized(proto, calib, recover: bool, per_channel: bool = True, **options):
    scheme = QuantScheme(weights=TensorQuant(dtype="int8", symmetric=True, per_channel=per_channel))
    ctx = PassContext(options={"scheme": scheme, "int8_min_conv_macs": 0, **options}, calibration=calib)
    passes = [KeepFloatReference(), QuantizeStatic()] + ([CorrectBias()] if recover else [])
    out, _ = apply_passes(proto, passes, ctx)
    onnx.checker.check_model(out, full_check=True)
    return out, ctx


def shift_and_error(before, after, held) -> tuple[float, float]:
    """Mean |per-channel mean shift| of the output, and the relative squared error, over ``held``."""
    ref = np.concatenate([run_model(before, f)["y"] for f in held])
    got = np.concatenate([run_model(after, f, optimize=False)["y"] for f in held])  # Q/DQ as the spec says
    d = got - ref
    return float(np.abs(d.mean(axis=(0, 2, 3))).mean()), float(np.sum(d * d) / np.sum(ref * ref))


@pytest.mark.parametrize("mode", ["fast", "sequential"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_mean_shift_of_biased_rounding_is_corrected(mode, per_channel):
    proto = biased_rounding_model()
    calib, held = feeds(16), feeds(8)
    plain, _ = quantized(proto, calib, False, per_channel)
    fixed, ctx = quantized(proto, calib, True, per_channel, bias_correction=mode)
    shift0, err0 = shift_and_error(proto, plain, held)
    shift1, err1 = shift_and_error(proto, fixed, held)
    assert shift0 > 0.05  # the rounding error really has a mean
    assert shift1 < 0.1 * shift0, (shift0, shift1)
    assert err1 < 0.5 * err0, (err0, err1)
    rep = ctx.state(RecoveryReport)
    (layer,) = [e for e in rep.layers if e.step == "bias"]
    assert layer.layer == "conv" and layer.after < layer.before
    assert layer.inputs == ("float" if mode == "fast" else "quantized")
    # the corrected bias is int32 with scale = input scale x weight scale: onnxruntime can still fuse the conv
    dq = [n for n in fixed.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in
          [i for c in fixed.graph.node if c.op_type == "Conv" for i in c.input[2:]]]
    inits = {t.name: numpy_helper.to_array(t) for t in fixed.graph.initializer}
    assert dq and inits[dq[0].input[0]].dtype == np.int32
    ref = run_model(fixed, held[0], "reference")["y"]  # the interpreter runs the corrected model the same way
    np.testing.assert_allclose(ref, run_model(fixed, held[0], optimize=False)["y"], rtol=1e-4, atol=1e-4)


def test_conv_without_bias_gets_one():
    proto = biased_rounding_model(bias=False)
    calib, held = feeds(16), feeds(4)
    plain, _ = quantized(proto, calib, False)
    fixed, _ = quantized(proto, calib, True)
    conv = next(n for n in fixed.graph.node if n.op_type == "Conv")
    assert len(conv.input) == 3 and conv.input[2]
    assert shift_and_error(proto, fixed, held)[0] < 0.1 * shift_and_error(proto, plain, held)[0]


def test_declines_without_float_reference():
    proto = biased_rounding_model()
    ctx = PassContext(options={"int8_min_conv_macs": 0}, calibration=feeds(4))
    out, _ = apply_passes(proto, [QuantizeStatic(), CorrectBias()], ctx)
    assert any(d.pass_name == "CorrectBias" and "float reference" in d.reason for d in ctx.declines)
    plain, _ = quantized(proto, feeds(4), False)
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in plain.graph.node]
