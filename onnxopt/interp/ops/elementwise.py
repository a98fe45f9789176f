"""Elementwise kernels: arithmetic, comparisons, logic, bitwise, unary math and activations.

numpy's ufuncs are already vectorised; Erf (``math.erf`` has no numpy ufunc) is a Numba loop.
Integer results keep the first input's dtype and wrap like C, as the spec's reference does.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from onnxopt.interp.registry import kernel

_FLT_MAX = float(np.finfo(np.float32).max)


def _legacy_broadcast(a: np.ndarray, b: np.ndarray, broadcast: int, axis: int | None) -> np.ndarray:
    """Opset < 7 binary ops: ``b`` aligned to ``a`` starting at ``axis`` (default: trailing)."""
    if not broadcast or b.ndim == a.ndim or axis is None:
        return b
    axis = axis % a.ndim if a.ndim else 0
    return b.reshape(b.shape + (1,) * (a.ndim - axis - b.ndim))


def _binary(name: str, fn, legacy: bool = True) -> None:
    def k(a, b, broadcast=0, axis=None):
        if broadcast:
            b = _legacy_broadcast(a, b, broadcast, axis)
        r = fn(a, b)
        return r if r.dtype == a.dtype else r.astype(a.dtype)

    def k7(a, b):
        r = fn(a, b)
        return r if r.dtype == a.dtype else r.astype(a.dtype)

    k.__name__ = k7.__name__ = name
    if legacy:
        kernel(name, since=1)(k)
    kernel(name, since=7)(k7)


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncating toward zero (C semantics), exact for int64."""
    q = np.floor_divide(a, b)
    r = np.remainder(a, b)
    adjust = (r != 0) & ((a < 0) ^ (b < 0))
    return q + adjust.astype(q.dtype)


def _div(a, b):
    if a.dtype.kind in "iu":
        return _int_div(a, b)
    return np.divide(a, b)


_binary("Add", np.add)
_binary("Sub", np.subtract)
_binary("Mul", np.multiply)
_binary("Div", _div)


@kernel("Pow", since=1)
def Pow(x, y):
    if x.dtype.kind in "iu" and y.dtype.kind in "iu" and not (y < 0).any():
        r = np.power(x.astype(np.int64), y.astype(np.int64))
    elif x.dtype.kind == "f" and y.dtype.kind in "iu":
        r = np.power(x, y.astype(x.dtype))
    else:
        r = np.power(x.astype(np.float64) if x.dtype.kind in "iu" else x, y)
    return r.astype(x.dtype, copy=False)


@kernel("Mod", since=10)
def Mod(a, b, fmod=0):
    if fmod:
        return np.fmod(a, b).astype(a.dtype, copy=False)
    return np.mod(a, b).astype(a.dtype, copy=False)


@kernel("BitShift", since=11)
def BitShift(x, y, direction="LEFT"):
    if direction == "LEFT":
        return np.left_shift(x, y).astype(x.dtype, copy=False)
    return np.right_shift(x, y).astype(x.dtype, copy=False)


def _simple(name: str, fn, since: int = 1) -> None:
    def k(*args):
        return fn(*args)

    k.__name__ = name
    kernel(name, since=since)(k)


for _name, _fn in (("BitwiseAnd", np.bitwise_and), ("BitwiseOr", np.bitwise_or), ("BitwiseXor", np.bitwise_xor)):
    _simple(_name, _fn, since=18)
_simple("BitwiseNot", np.invert, since=18)
for _name, _fn in (("And", np.logical_and), ("Or", np.logical_or), ("Xor", np.logical_xor)):
    _simple(_name, _fn, since=1)
    _simple(_name, _fn, since=7)
_simple("Not", np.logical_not)
for _name, _fn in (("Equal", np.equal), ("Greater", np.greater), ("Less", np.less)):
    _simple(_name, _fn, since=1)
    _simple(_name, _fn, since=7)
_simple("GreaterOrEqual", np.greater_equal, since=12)
_simple("LessOrEqual", np.less_equal, since=12)


def _unary(name: str, fn, since: int = 1) -> None:
    def k(x):
        r = fn(x)
        return r if r.dtype == x.dtype else r.astype(x.dtype)

    k.__name__ = name
    kernel(name, since=since)(k)


for _name, _fn in (
    ("Exp", np.exp), ("Log", np.log), ("Sqrt", np.sqrt), ("Neg", np.negative), ("Abs", np.absolute),
    ("Sign", np.sign), ("Floor", np.floor), ("Ceil", np.ceil), ("Round", np.rint), ("Tanh", np.tanh),
    ("Sin", np.sin), ("Cos", np.cos), ("Tan", np.tan), ("Asin", np.arcsin), ("Acos", np.arccos),
    ("Atan", np.arctan), ("Sinh", np.sinh), ("Cosh", np.cosh), ("Asinh", np.arcsinh), ("Acosh", np.arccosh),
    ("Atanh", np.arctanh), ("Reciprocal", np.reciprocal),
):
    _unary(_name, _fn)


@kernel("IsNaN", since=9)
def IsNaN(x):
    return np.isnan(x)


@kernel("IsInf", since=10)
def IsInf(x, detect_negative=1, detect_positive=1):
    if detect_negative and detect_positive:
        return np.isinf(x)
    if detect_negative:
        return np.isneginf(x)
    if detect_positive:
        return np.isposinf(x)
    return np.zeros(x.shape, dtype=bool)


# ---------------------------------------------------------------- Erf (Numba)


@numba.njit(cache=True)
def _erf_loop(x, out):  # pragma: no cover - compiled
    for i in range(x.size):
        out[i] = math.erf(x[i])


def erf_numpy(x: np.ndarray) -> np.ndarray:
    """Plain (slow) version of Erf, the reference the Numba kernel is tested against."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    return np.array([math.erf(v) for v in flat], dtype=np.float64).reshape(np.shape(x)).astype(x.dtype)


@kernel("Erf", since=9)
def Erf(x):
    if x.dtype.kind in "iu":
        return erf_numpy(x)
    work = x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)
    flat = np.ascontiguousarray(work).reshape(-1)
    out = np.empty_like(flat)
    _erf_loop(flat, out)
    return out.reshape(x.shape).astype(x.dtype, copy=False)


# ---------------------------------------------------------------- activations


@numba.njit(cache=True)
def _leaky_loop(x, alpha, out):  # pragma: no cover - compiled; alpha 0 gives Relu
    for i in range(x.size):
        v = x[i]
        out[i] = v * alpha if v < 0 else v


def _leaky_jit(x: np.ndarray, alpha: float) -> np.ndarray:
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    _leaky_loop(flat, x.dtype.type(alpha), out)
    return out.reshape(x.shape)


def leaky_relu_numpy(x: np.ndarray, alpha: float) -> np.ndarray:
    """Plain numpy LeakyRelu (Relu for alpha 0), the reference of the Numba loop."""
    return np.where(x < 0, x * x.dtype.type(alpha), x)


@kernel("Relu", since=1)
def Relu(x):
    if x.dtype in (np.float32, np.float64):
        return _leaky_jit(x, 0.0)  # numpy's maximum is several times slower than this loop
    return np.maximum(x, x.dtype.type(0))


@kernel("LeakyRelu", since=1)
def LeakyRelu(x, alpha=0.01):
    if x.dtype in (np.float32, np.float64):
        return _leaky_jit(x, alpha)
    return leaky_relu_numpy(x, alpha)


@kernel("PRelu", since=1)
def PRelu(x, slope):
    return np.where(x < 0, x * slope, x).astype(x.dtype, copy=False)


@kernel("Elu", since=1)
def Elu(x, alpha=1.0):
    return np.where(x < 0, x.dtype.type(alpha) * np.expm1(x), x)


@kernel("Selu", since=1)
def Selu(x, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    a, g = x.dtype.type(alpha), x.dtype.type(gamma)
    return np.where(x > 0, g * x, g * (a * np.exp(x) - a))


@kernel("Celu", since=12)
def Celu(x, alpha=1.0):
    a = x.dtype.type(alpha)
    return (np.maximum(x, 0) + np.minimum(0, a * np.expm1(x / a))).astype(x.dtype, copy=False)


@kernel("ThresholdedRelu", since=10)
def ThresholdedRelu(x, alpha=1.0):
    return np.where(x > x.dtype.type(alpha), x, x.dtype.type(0))


@kernel("Shrink", since=9)
def Shrink(x, bias=0.0, lambd=0.5):
    r = np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0))
    return r.astype(x.dtype, copy=False)


@kernel("Gelu", since=20)
def Gelu(x, approximate="none"):
    if approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        return (0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x**3)))).astype(x.dtype, copy=False)
    return (0.5 * x * (1.0 + Erf(x * x.dtype.type(1.0 / math.sqrt(2.0))))).astype(x.dtype, copy=False)


@kernel("Sigmoid", since=1)
def Sigmoid(x):
    one = x.dtype.type(1)
    return one / (one + np.exp(-x))


@numba.njit(cache=True, nogil=True)
def _hard_sigmoid_loop(x, alpha, beta, swish, out):  # pragma: no cover - compiled
    for i in range(x.size):
        v = x[i]
        h = v * alpha + beta
        if h < 0:
            h = 0
        elif h > 1:
            h = 1
        out[i] = v * h if swish else h


def _flat_jit(loop, x: np.ndarray, *args) -> np.ndarray:
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    loop(flat, *args, out)
    return out.reshape(x.shape)


def hard_sigmoid_numpy(x: np.ndarray, alpha: float, beta: float, swish: bool) -> np.ndarray:
    """Plain numpy HardSigmoid (times x for HardSwish), the reference of the Numba loop."""
    t = x.dtype.type
    h = np.clip(x * t(alpha) + t(beta), t(0), t(1))
    return x * h if swish else h


@kernel("HardSigmoid", since=1)
def HardSigmoid(x, alpha=0.2, beta=0.5):
    t = x.dtype.type
    if x.dtype in (np.float32, np.float64):
        return _flat_jit(_hard_sigmoid_loop, x, t(alpha), t(beta), False)
    return hard_sigmoid_numpy(x, alpha, beta, False)


@kernel("HardSwish", since=14)
def HardSwish(x):
    t = x.dtype.type
    if x.dtype in (np.float32, np.float64):
        return _flat_jit(_hard_sigmoid_loop, x, t(1 / 6), t(0.5), True)
    return hard_sigmoid_numpy(x, 1 / 6, 0.5, True)


@kernel("Softplus", since=1)
def Softplus(x):
    return np.logaddexp(x.dtype.type(0), x)


@kernel("Softsign", since=1)
def Softsign(x):
    return x / (x.dtype.type(1) + np.abs(x))


@kernel("Mish", since=18)
def Mish(x):
    return x * np.tanh(np.logaddexp(x.dtype.type(0), x))


@kernel("Swish", since=24)
def Swish(x, alpha=1.0):
    one = x.dtype.type(1)
    return x / (one + np.exp(-x.dtype.type(alpha) * x))


# ---------------------------------------------------------------- clip and variadic


@numba.njit(cache=True, nogil=True)
def _clip_loop(x, lo, hi, out):  # pragma: no cover - compiled; NaN stays NaN, lo > hi gives hi
    for i in range(x.size):
        v = x[i]
        if v < lo:
            v = lo
        if v > hi:
            v = hi
        out[i] = v


def _clip(x, lo, hi):
    if lo is not None and hi is not None and x.dtype in (np.float32, np.float64) and np.ndim(lo) == np.ndim(hi) == 0:
        return _flat_jit(_clip_loop, x, x.dtype.type(lo), x.dtype.type(hi))
    return clip_numpy(x, lo, hi)


def clip_numpy(x, lo, hi):
    """Plain numpy Clip, the reference of the Numba loop."""
    if lo is not None and hi is not None:
        return np.clip(x, lo, hi)  # one SIMD pass; values above both bounds end at hi as the spec says
    if lo is not None:
        x = np.maximum(x, lo)
    if hi is not None:
        x = np.minimum(x, hi)
    return x


@kernel("Clip", since=1)
def Clip(x, min=-_FLT_MAX, max=_FLT_MAX):  # noqa: A002 - spec attribute names
    return _clip(x, x.dtype.type(min), x.dtype.type(max)).astype(x.dtype, copy=False)


@kernel("Clip", since=11)
def Clip_11(x, min=None, max=None):  # noqa: A002
    lo = None if min is None else min.astype(x.dtype, copy=False)
    hi = None if max is None else max.astype(x.dtype, copy=False)
    return _clip(x, lo, hi).astype(x.dtype, copy=False)


def _variadic(name: str, fn) -> None:
    def k(*xs):
        r = xs[0]
        for x in xs[1:]:
            r = fn(r, x)
        return r.astype(xs[0].dtype, copy=False) if len(xs) > 1 else r.copy()

    k.__name__ = name
    kernel(name, since=1)(k)


_variadic("Max", np.maximum)
_variadic("Min", np.minimum)
_variadic("Sum", np.add)


@kernel("Mean", since=1)
def Mean(*xs):
    r = xs[0]
    for x in xs[1:]:
        r = r + x
    return (r / len(xs)).astype(xs[0].dtype, copy=False)


@kernel("Where", since=9)
def Where(condition, x, y):
    return np.where(condition, x, y)
