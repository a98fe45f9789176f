"""Reductions, ArgMax/ArgMin, CumSum and the softmax family against onnxruntime (optimizations off)."""

from __future__ import annotations

import numpy as np
import pytest
from test_nn import close, ort_node

from onnxopt.interp.ops import reduce as R

RNG = np.random.default_rng(3)  # replaced in each test by the test's own generator (conftest.py: rng)
X = (np.random.default_rng(3).random((3, 4, 5)) + 0.1).astype(np.float32)  # fixed, shared read-only


@pytest.mark.parametrize("op", list(R.REDUCE_KERNELS))
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([0, -1], 0), (None, 1), (None, 0)])
def test_reduce_attr_and_input_forms(op, axes, keepdims):
    with_attr, with_input = R.REDUCE_KERNELS[op]
    kw = {"axes": axes} if axes is not None else {}
    close(with_attr(X, keepdims=keepdims, **kw), ort_node(op, {"x": X}, opset=11, keepdims=keepdims, **kw), rtol=1e-5)
    feeds = {"x": X} if axes is None else {"x": X, "axes": np.array(axes, np.int64)}
    close(with_input(*feeds.values(), keepdims=keepdims), ort_node(op, feeds, opset=18, keepdims=keepdims), rtol=1e-5)


def test_noop_with_empty_axes_and_empty_sets():
    _, rsum = R.REDUCE_KERNELS["ReduceSum"]
    assert rsum(X, np.array([], np.int64), noop_with_empty_axes=1) is X
    e = np.zeros((2, 0, 3), np.float32)
    _, rmax = R.REDUCE_KERNELS["ReduceMax"]
    assert np.all(rmax(e, np.array([1], np.int64)) == -np.inf)
    _, rprod = R.REDUCE_KERNELS["ReduceProd"]
    assert np.all(rprod(e, np.array([1], np.int64)) == 1)


@pytest.mark.parametrize("fn,op", [(R.ArgMax, "ArgMax"), (R.ArgMin, "ArgMin")])
@pytest.mark.parametrize("attrs", [dict(axis=1), dict(axis=-1, keepdims=0), dict(axis=0, select_last_index=1)])
def test_arg(fn, op, attrs):
    x = RNG.integers(0, 3, (3, 4, 5)).astype(np.float32)  # ties
    np.testing.assert_array_equal(fn(x, **attrs), ort_node(op, {"x": x}, opset=13, **attrs))


@pytest.mark.parametrize("attrs", [dict(), dict(exclusive=1), dict(reverse=1), dict(exclusive=1, reverse=1)])
def test_cumsum(attrs):
    ax = np.array(1, np.int64)
    close(R.CumSum(X, ax, **attrs), ort_node("CumSum", {"x": X, "axis": ax}, opset=14, **attrs))


@pytest.mark.parametrize("name", ["Softmax", "LogSoftmax", "Hardmax"])
def test_softmax_family_both_semantics(name):
    old, new = getattr(R, f"{name}_1"), getattr(R, name)
    for axis in (0, 1, 2, -1):
        close(old(X, axis=axis), ort_node(name, {"x": X}, opset=11, axis=axis))
        close(new(X, axis=axis), ort_node(name, {"x": X}, opset=13, axis=axis))
