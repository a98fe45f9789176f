"""EqualizeCrossLayer: on a depthwise-separable block whose channels span decades, the float model computes the
same, and with per-tensor int8 weights the quantized model gets much closer to it; ReLU6 and PReLU with care."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from differential import apply_passes, assert_equivalent
from onnx import TensorProto, helper, numpy_helper

from onnxopt.pass_manager import PassContext
from onnxopt.passes.equalize_cross_layer import EqualizeCrossLayer
from onnxopt.passes.quantize_static import QuantizeStatic
from onnxopt.quant_scheme import QuantScheme, TensorQuant
from onnxopt.recovery import RecoveryReport
from onnxopt.verify import run_model

RNG = np.random.default_rng(0)  # replaced in each test by the test's own generator (conftest.py: rng)
PER_TENSOR = TensorQuant(dtype="int8", symmetric=True, per_channel=False)


def separable_block(act: str = "Relu", hot: int = 4) -> onnx.ModelProto:
    """x [1,8,12,12] -> Conv 1x1 (8 -> 16) -> act -> depthwise 3x3 -> act -> Conv 1x1 (16 -> 8). Channel c of both
    convs before the projection is scaled by 10^U(-2, 0.5), as trained MobileNets' depthwise channels spread; the
    first ``hot`` depthwise channels get a large bias, so their activations never reach zero (bias absorption)."""
    spread1, spread2 = 10 ** RNG.uniform(-2, 0.5, 16), 10 ** RNG.uniform(-2, 0.5, 16)
    w1 = RNG.standard_normal((16, 8, 1, 1)) / np.sqrt(8) * spread1[:, None, None, None]
    w2 = RNG.standard_normal((16, 1, 3, 3)) / 3 * spread2[:, None, None, None]
    b2 = 0.05 * RNG.standard_normal(16)
    b2[:hot] = 3.0
    w3 = RNG.standard_normal((8, 16, 1, 1)) / 4
    inits = {"w1": w1, "b1": 0.05 * RNG.standard_normal(16), "w2": w2, "b2": b2, "w3": w3, "b3": np.zeros(8)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], name="expand", kernel_shape=[1, 1])]
    nodes += _act(act, "h1", "a1", "act1", inits)
    nodes.append(helper.make_node("Conv", ["a1", "w2", "b2"], ["h2"], name="dw", kernel_shape=[3, 3], group=16,
                                  pads=[1, 1, 1, 1]))
    nodes += _act(act, "h2", "a2", "act2", inits)
    nodes.append(helper.make_node("Conv", ["a2", "w3", "b3"], ["y"], name="project", kernel_shape=[1, 1]))
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 12, 12])],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _act(op: str, x: str, y: str, name: str, inits: dict) -> list[onnx.NodeProto]:
    if op == "Relu6":
        inits[f"{name}_lo"], inits[f"{name}_hi"] = np.array(0.0), np.array(6.0)
        return [helper.make_node("Clip", [x, f"{name}_lo", f"{name}_hi"], [y], name=name)]
    if op == "PRelu":
        inits[f"{name}_slope"] = RNG.uniform(0.05, 0.3, (16, 1, 1))
        return [helper.make_node("PRelu", [x, f"{name}_slope"], [y], name=name)]
    return [helper.make_node(op, [x], [y], name=name)]


def feeds(n: int, scale: float = 1.0) -> list[dict[str, np.ndarray]]:
    return [{"x": (scale * RNG.standard_normal((1, 8, 12, 12))).astype(np.float32)} for _ in range(n)]


def equalize(proto, calib=None, **options):
    ctx = PassContext(options=options, calibration=calib)
    out, _ = apply_passes(proto, [EqualizeCrossLayer(PER_TENSOR)], ctx)
    onnx.checker.check_model(out, full_check=True)
    return out, ctx


def quantized_error(before, proto, calib, held) -> float:
    ctx = PassContext(options={"scheme": QuantScheme(weights=PER_TENSOR), "int8_min_conv_macs": 0},
                      calibration=calib)
    out, _ = apply_passes(proto, [QuantizeStatic()], ctx)
    onnx.checker.check_model(out, full_check=True)
    ref = np.concatenate([run_model(before, f)["y"] for f in held])
    got = np.concatenate([run_model(out, f, optimize=False)["y"] for f in held])
    return float(np.sum((got - ref) ** 2) / np.sum(ref ** 2))


def test_depthwise_block_with_per_tensor_weights():
    proto = separable_block()
    calib, held = feeds(16), feeds(8)
    out, ctx = equalize(proto, calib)
    for f in calib:  # exact on the calibration data, bias absorption included
        assert_equivalent(proto, out, f, rtol=1e-4, atol=1e-4)
    assert_equivalent(proto, out, held[0], rtol=1e-3, atol=1e-3)
    step = next(s for s in ctx.state(RecoveryReport).steps if s.step == "cle")
    assert step.detail["pairs"] == 2 and step.detail["biases_absorbed"] == 1
    errs = {e.layer: e for e in ctx.state(RecoveryReport).layers}
    assert errs["dw"].after < 0.5 * errs["dw"].before and errs["expand"].after < errs["expand"].before
    before, after = quantized_error(proto, proto, calib, held), quantized_error(proto, out, calib, held)
    assert after < 0.5 * before, (before, after)


def test_relu6_that_never_clips_becomes_relu():
    proto = separable_block("Relu6", hot=0)
    calib = feeds(8, scale=0.5)
    hi = max(float(np.max(v)) for f in calib for v in run_model(proto, f).values())
    out, ctx = equalize(proto, calib)
    assert [n.op_type for n in out.graph.node].count("Clip") == 0
    assert hi < 6
    for f in calib:
        assert_equivalent(proto, out, f, rtol=1e-4, atol=1e-4)


def test_relu6_that_clips_is_left_alone():
    proto = separable_block("Relu6", hot=0)
    out, ctx = equalize(proto, feeds(8, scale=100.0))
    assert [n.op_type for n in out.graph.node].count("Clip") == 2
    assert sum("ReLU6 clips" in d.reason for d in ctx.declines) == 2
    assert_equivalent(proto, out, feeds(1, scale=100.0)[0])
    out, ctx = equalize(proto, None, cle_relu6="relu")  # as AIMET does: lossy where it clipped
    assert [n.op_type for n in out.graph.node].count("Clip") == 0


@pytest.mark.parametrize("act", ["PRelu", "LeakyRelu"])
def test_positively_homogeneous_activations_are_exact(act):
    proto = separable_block(act)
    out, ctx = equalize(proto, None, cle_absorb=False)
    assert ctx.state(RecoveryReport).steps[0].detail["pairs"] == 2
    assert_equivalent(proto, out, feeds(1)[0], rtol=1e-4, atol=1e-4)
    w_before = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    w_after = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    dw = next(n for n in out.graph.node if n.name == "dw")
    def spread(w):
        r = np.abs(w).reshape(16, -1).max(1)
        return r.max() / r.min()

    assert spread(w_after[dw.input[1]]) < 0.2 * spread(w_before["w2"])  # the channel ranges came together
