"""The recovery recipe: --recover parsing, each target's default, where the steps go in a pipeline, and
--per-tensor-weights reaching the quantizer."""

from __future__ import annotations

import pytest

from onnxopt.errors import UserError
from onnxopt.pass_manager import FixedPoint
from onnxopt.quant_scheme import QuantScheme, TensorQuant
from onnxopt.targets import get_target
from onnxopt.targets.recipe_recover import default_recover, parse_recover, recover_steps, scheme_for_options

PER_CHANNEL = QuantScheme()
PER_TENSOR = QuantScheme(weights=TensorQuant(dtype="int8", symmetric=True, per_channel=False))
FOUR_BIT = QuantScheme(weights=TensorQuant(dtype="int4", symmetric=True, per_channel=True))


def names(steps) -> list[str]:
    out = []
    for s in steps:
        out += names(s.passes) if isinstance(s, FixedPoint) else [s.name]
    return out


@pytest.mark.parametrize("spec,want", [("bias", ("bias",)), ("fit, cle,bias", ("fit", "cle", "bias")),
                                       ("none", ()), (["cle", "cle"], ("cle",)), (None, None)])
def test_parse(spec, want):
    assert parse_recover(spec) == want


@pytest.mark.parametrize("spec", ["bais", "none,bias", "", "fit;bias"])
def test_bad_lists_are_user_errors(spec):
    with pytest.raises(UserError, match="--recover"):
        parse_recover(spec)


@pytest.mark.parametrize("scheme,options,want", [
    (PER_CHANNEL, {}, ("bias",)),
    (PER_TENSOR, {}, ("cle", "bias")),
    (FOUR_BIT, {}, ("fit", "bias")),
    (PER_CHANNEL, {"quantize": "none"}, ()),
    (PER_CHANNEL, {"quantize": "dynamic"}, ()),
    (PER_CHANNEL, {"weights": "int4"}, ()),  # weight-only without calibration data: nothing to fit to
    (PER_CHANNEL, {"weights": "int4", "calibration": "c.npz"}, ("fit", "bias")),
    (PER_CHANNEL, {"weights": "int4:block=32", "calibration": "c.npz"}, ()),  # blocked scales are not fitted
    (PER_CHANNEL, {"weights": "ternary", "calibration": "c.npz"}, ()),
    (None, {}, ()),
])
def test_defaults(scheme, options, want):
    assert default_recover(scheme, options) == want


def test_steps_go_around_quantization():
    before, after = recover_steps(PER_TENSOR, {"recover": "bias,fit,cle"})
    assert names(before) == ["EqualizeCrossLayer", "KeepFloatReference"]
    assert names(after) == ["FitQuantizedWeights", "CorrectBias"]
    assert recover_steps(PER_TENSOR, {"recover": "none"}) == ([], [])
    assert recover_steps(PER_TENSOR, {"recover": "bias", "quantize": "none"}) == ([], [])


def test_generic_pipeline_order_and_per_tensor_weights():
    target = get_target("generic")
    steps = names(target.pipeline({"per_tensor_weights": True}))
    i = steps.index
    assert i("EqualizeCrossLayer") < i("KeepFloatReference") < i("PlanPrecision") < i("QuantizeStatic") \
        < i("CorrectBias")
    assert "FitQuantizedWeights" not in steps
    assert "EqualizeCrossLayer" not in names(target.pipeline({}))  # per-channel weights: no CLE by default
    policy = target.precision_policy({"per_tensor_weights": True})
    assert policy.scheme.weights.per_channel is False
    assert scheme_for_options(PER_CHANNEL, {}) is PER_CHANNEL


def test_every_target_builds_its_recovery_steps():
    for name in ("generic", "x86-vnni", "x86-avx2", "arm", "tensorrt"):
        steps = names(get_target(name).pipeline({"recover": "cle,bias,fit"}))
        assert {"EqualizeCrossLayer", "KeepFloatReference", "FitQuantizedWeights", "CorrectBias"} <= set(steps), name


@pytest.mark.parametrize("target,pack", [("generic", False), ("x86-avx2", True), ("arm", True)])
def test_weight_only_recovery_runs_before_packing(target, pack):
    """Weight-only int4 with data: KeepFloatReference before quantization, then QuantizeWeights (decoder form), the
    fit and the bias correction, then the MatMulNBits packing on the onnxruntime CPU targets."""
    t = get_target(target)
    steps = names(t.pipeline({"weights": "int4", "calibration": "c.npz"}))
    i = steps.index
    assert i("KeepFloatReference") < i("QuantizeWeights") < i("FitQuantizedWeights") < i("CorrectBias")
    assert steps.count("FitQuantizedWeights") == 1 and steps.count("CorrectBias") == 1
    assert ("PackMatMulNBits" in steps) == pack and (not pack or i("CorrectBias") < i("PackMatMulNBits"))
    off = names(t.pipeline({"weights": "int4", "calibration": "c.npz", "recover": "none"}))
    assert not {"KeepFloatReference", "FitQuantizedWeights", "CorrectBias", "PackMatMulNBits"} & set(off)
    only_bias = names(t.pipeline({"weights": "int4:block=32", "recover": "bias"}))
    assert "CorrectBias" in only_bias and "FitQuantizedWeights" not in only_bias
