"""Elementwise kernels: the Numba Erf against its plain version, integer semantics to the spec, and a
differential check of the float math against onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxopt.interp import Interpreter
from onnxopt.interp.ops import elementwise as ew


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_numba_erf_matches_plain_version(dtype):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(1000) * 3, [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, 6.0, -6.0]])
    x = x.astype(dtype).reshape(8, -1)
    got = ew.Erf(x)
    want = ew.erf_numpy(x)
    assert got.dtype == x.dtype and got.shape == x.shape
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-6 if dtype != np.float16
                               else 1e-3, atol=0)
    ref = np.array([math.erf(v) for v in x.astype(np.float64).reshape(-1)]).reshape(x.shape)
    np.testing.assert_allclose(want.astype(np.float64), ref, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.3])
def test_numba_leaky_relu_matches_numpy_version(dtype, alpha):
    x = np.random.default_rng(2).standard_normal((3, 5, 7)).astype(dtype)
    x = np.concatenate([x.reshape(-1), [-0.0, np.inf, -np.inf, np.nan]]).astype(dtype)[::2]  # non-contiguous
    got = ew.LeakyRelu(x, alpha=alpha) if alpha else ew.Relu(x)
    assert got.dtype == x.dtype
    with np.errstate(invalid="ignore"):  # inf * 0 in the numpy version
        np.testing.assert_array_equal(got, ew.leaky_relu_numpy(x, alpha))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("op", ["HardSigmoid", "HardSwish", "Clip"])
def test_numba_hard_activations_and_clip_match_numpy_versions(dtype, op):
    x = np.random.default_rng(3).standard_normal((4, 6, 5)).astype(dtype) * 5
    x = np.concatenate([x.reshape(-1), [-0.0, np.inf, -np.inf, np.nan, 3.0, -3.0]]).astype(dtype)[::2]
    if op == "HardSigmoid":
        got, want = ew.HardSigmoid(x, alpha=0.3, beta=0.4), ew.hard_sigmoid_numpy(x, 0.3, 0.4, False)
    elif op == "HardSwish":
        with np.errstate(invalid="ignore"):  # inf * 0 in the numpy version
            got, want = ew.HardSwish(x), ew.hard_sigmoid_numpy(x, 1 / 6, 0.5, True)
    else:
        lo, hi = np.array(-1.5, dtype), np.array(2.5, dtype)
        got, want = ew.Clip_11(x, lo, hi), ew.clip_numpy(x, lo, hi)
        np.testing.assert_array_equal(ew.Clip_11(x, None, hi), ew.clip_numpy(x, None, hi))
    assert got.dtype == x.dtype and got.shape == x.shape
    np.testing.assert_array_equal(got, want)


def test_clip_min_above_max_gives_max():
    x = np.array([-5, 0, 5], np.float32)
    np.testing.assert_array_equal(ew.Clip_11(x, np.array(3, np.float32), np.array(1, np.float32)), [1, 1, 1])


def test_erf_non_contiguous_input():
    x = np.linspace(-3, 3, 40, dtype=np.float32).reshape(4, 10)[:, ::3]
    np.testing.assert_allclose(ew.Erf(x), ew.erf_numpy(x), rtol=1e-6)


def test_integer_div_truncates_toward_zero_exactly():
    a = np.array([7, -7, 7, -7, 2**62 + 1, -(2**62) - 1], np.int64)
    b = np.array([2, 2, -2, -2, 3, 3], np.int64)
    np.testing.assert_array_equal(ew._div(a, b), [3, -3, -3, 3, (2**62 + 1) // 3, -((2**62 + 1) // 3)])


def test_mod_sign_follows_divisor_unless_fmod():
    a = np.array([-4, 7, 5, -3], np.int32)
    b = np.array([3, -3, 2, -2], np.int32)
    np.testing.assert_array_equal(ew.Mod(a, b), [2, -2, 1, -1])
    np.testing.assert_array_equal(ew.Mod(a, b, fmod=1), [-1, 1, 1, -1])


def test_round_is_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4, 2.6], np.float32)
    np.testing.assert_array_equal(Interpreter(_unary("Round")).run({"x": x})["y"], [0, 2, 2, -0, -2, 2, 3])


def test_integer_pow_and_relu_keep_dtype():
    assert ew.Pow(np.array([2, 3], np.int32), np.array([10, 2], np.int64)).tolist() == [1024, 9]
    r = ew.Relu(np.array([-128, 5], np.int8))
    assert r.dtype == np.int8 and r.tolist() == [0, 5]


def _clip_model(opset):
    if opset < 11:
        node = helper.make_node("Clip", ["x"], ["y"], min=-1.0, max=2.0)
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])]
    else:
        node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
                  (("x", [5]), ("lo", []), ("hi", []))]
    graph = helper.make_graph([node], "clip", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [6, 11, 13])
def test_clip_attribute_and_input_forms(opset):
    x = np.array([-3, -1, 0, 1.5, 9], np.float32)
    feeds = {"x": x} if opset < 11 else {"x": x, "lo": np.array(-1, np.float32), "hi": np.array(2, np.float32)}
    np.testing.assert_array_equal(Interpreter(_clip_model(opset)).run(feeds)["y"], [-1, -1, 0, 1.5, 2])


def _unary(op, **attrs):
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], op,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize(
    "op, attrs",
    [("Erf", {}), ("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Sigmoid", {}), ("HardSigmoid", {}),
     ("HardSwish", {}), ("Softplus", {}), ("Softsign", {}), ("Mish", {}), ("Tanh", {}), ("Elu", {"alpha": 0.7}),
     ("Selu", {}), ("Celu", {"alpha": 2.0}), ("LeakyRelu", {"alpha": 0.1}), ("Exp", {}), ("Sin", {})],
)
def test_float_math_matches_onnxruntime(op, attrs):
    model = _unary(op, **attrs)
    x = (np.random.default_rng(3).standard_normal((64, 33)) * 4).astype(np.float32)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    got = Interpreter(model).run({"x": x})["y"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
