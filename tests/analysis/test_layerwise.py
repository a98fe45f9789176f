"""The layer-wise engine: layer views against onnxruntime, the objectives against direct sums, and each solver
against the baseline it must beat."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.analysis.layerwise import Layer, capture, plan_rows, targets
from onnxopt.analysis.layerwise_solvers import (
    AdaRoundConfig,
    Grid,
    Quadratic,
    SoftmaxKL,
    adaround,
    search_scales,
)
from onnxopt.verify import run_model

RNG = np.random.default_rng(0)


def _conv_model(w: np.ndarray, b: np.ndarray, group: int, stride: int = 1, pad: int = 1, dil: int = 1
                ) -> onnx.ModelProto:
    cin = w.shape[1] * group
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", group=group, strides=[stride, stride],
                            pads=[pad] * 4, dilations=[dil, dil], kernel_shape=list(w.shape[2:]))
    g = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, cin, 9, 9])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("group,stride,dil", [(1, 1, 1), (2, 2, 1), (6, 1, 2)])
def test_conv_rows_reproduce_onnxruntime(group, stride, dil):
    w = RNG.standard_normal((6, 6 // group, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    proto = _conv_model(w, b, group, stride, 1, dil)
    x = RNG.standard_normal((2, 6, 9, 9)).astype(np.float32)
    y = run_model(proto, {"x": x})["y"]
    node = gs.import_onnx(proto).nodes[0]
    lay = Layer.of(node, w)
    assert lay.groups == group and lay.k == 6 // group * 9
    np.testing.assert_array_equal(lay.weight(lay.matrix(w)), w)
    pos = np.arange(lay.rows_total(y.shape))
    rows = lay.in_rows(x, pos, y.shape).reshape(len(pos), group, lay.k).transpose(1, 0, 2)
    pred = (rows @ lay.matrix(w)).transpose(1, 0, 2).reshape(len(pos), -1) + b
    np.testing.assert_allclose(pred, lay.out_rows(y, pos), rtol=1e-4, atol=1e-4)
    # the mean input row gives the mean output exactly (zero padding included)
    sums, n = lay.in_means(x, y.shape)
    mean = np.einsum("gk,gkc->gc", (sums / n).reshape(group, lay.k), lay.matrix(w)).reshape(-1) + b
    np.testing.assert_allclose(mean, y.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_dense_layers():
    w = RNG.standard_normal((5, 7)).astype(np.float32)
    gemm = gs.Node("Gemm", "g", attrs={"transB": 1})
    lay = Layer.of(gemm, w)
    assert (lay.k, lay.cout, lay.out_axis()) == (7, 5, 0)
    np.testing.assert_array_equal(lay.matrix(w)[0], w.T)
    np.testing.assert_array_equal(lay.weight(lay.matrix(w)), w)
    assert Layer.of(gs.Node("Gemm", "g", attrs={"transA": 1}), w) == "Gemm with transA/alpha/beta is not fitted"
    assert isinstance(Layer.of(gs.Node("Conv", "c", attrs={"auto_pad": "SAME_UPPER"}), np.zeros((2, 2, 3, 3))), str)


def test_plan_and_targets_stream_the_same_positions():
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = np.zeros(4, np.float32)
    proto = _conv_model(w, b, 1)
    feeds = [{"x": RNG.standard_normal((2, 3, 9, 9)).astype(np.float32)} for _ in range(5)]
    lay = Layer.of(gs.import_onnx(proto).nodes[0], w)
    plan = plan_rows(proto, feeds, [(lay, "y")], lambda _lay, _n: 10, np.random.default_rng(1))
    assert [len(p) for p in plan.positions["y"]] == [10] * 5
    assert plan.held("y").sum() == 10  # one feed in four is held out, whole
    tg = targets(proto, feeds, plan, [(lay, "y")])
    ys = [v["y"] for v in capture(proto, feeds, ["y"])]
    want = np.concatenate([lay.out_rows(y, p) for y, p in zip(ys, plan.positions["y"], strict=True)])
    np.testing.assert_array_equal(tg.rows["y"], want)


@pytest.mark.parametrize("rows", [20, 400])  # fewer rows than unknowns (rows kept), more (x'x kept)
def test_quadratic_matches_direct_sums(rows):
    g, k, c = 3, 50, 4
    x, w = RNG.standard_normal((g, rows, k)), RNG.standard_normal((g, k, c))
    y = x @ w + 0.1 * RNG.standard_normal((g, rows, c))
    q = Quadratic(g, k, c)
    for part in np.array_split(np.arange(rows), 3):
        q.add(x[:, part], y[:, part])
    assert (q.h is None) == (rows < k)
    w2 = w + 0.05 * RNG.standard_normal(w.shape)
    direct = ((x @ w2 - y) ** 2).sum(axis=1)
    np.testing.assert_allclose(q.errors(w2), direct, rtol=1e-8)
    np.testing.assert_allclose(q.grad(w2), 2 * x.transpose(0, 2, 1) @ (x @ w2 - y), rtol=1e-8, atol=1e-8)


def test_softmax_kl_gradient():
    x, w = RNG.standard_normal((1, 30, 6)), RNG.standard_normal((1, 6, 4))
    y = (x @ (w + 0.3 * RNG.standard_normal(w.shape)))[0][None]
    obj = SoftmaxKL(x, y, np.zeros(4), temperature=2.0)
    assert obj.errors(w).sum() > 0
    eps, i = 1e-6, (0, 2, 1)
    wp, wm = w.copy(), w.copy()
    wp[i] += eps
    wm[i] -= eps
    numeric = (obj.errors(wp).sum() - obj.errors(wm).sum()) / (2 * eps)
    assert obj.grad(w)[i] == pytest.approx(numeric, rel=1e-4)


def _problem(k: int = 128, c: int = 32, rows: int = 3000):
    """Correlated non-negative inputs (as after a ReLU) and heavy-tailed weights, on a 4-bit grid."""
    mix = RNG.standard_normal((k, k)) / np.sqrt(k)
    x = np.maximum(RNG.standard_normal((rows, k)) @ mix + 0.3, 0)[None]
    w = (RNG.standard_t(3, (k, c)) / np.sqrt(k))[None]
    q = Quadratic(1, k, c)
    q.add(x, x @ w)
    held = Quadratic(1, k, c)
    xh = np.maximum(RNG.standard_normal((rows, k)) @ mix + 0.3, 0)[None]
    held.add(xh, xh @ w)
    scale = np.abs(w).max(axis=1, keepdims=True) / 7
    return q, held, w, Grid(scale, np.zeros_like(scale), -7, 7)


def test_scale_grid_beats_absmax_at_4_bits():
    q, held, w, grid = _problem()
    g2, alpha = search_scales(q, w, grid, per_channel=True)
    assert alpha.min() < 1.0  # heavy tails: clipping pays
    before = held.errors(grid.value(grid.nearest(w))).sum()
    after = held.errors(g2.value(g2.nearest(w))).sum()
    assert after < 0.7 * before, (before, after)
    assert np.all(np.abs(g2.nearest(w)) <= 7)


def test_adaround_beats_nearest_rounding_on_the_same_grid():
    q, held, w, grid = _problem()
    grid, _ = search_scales(q, w, grid, per_channel=True)
    nearest = held.errors(grid.value(grid.nearest(w))).sum()
    learned = adaround(q, w, grid, AdaRoundConfig(iterations=300, min_iterations=300))
    assert set(np.unique(learned)) <= set(range(-7, 8))
    inside = np.abs(w / grid.scale) <= 7
    assert np.all(np.abs(learned - w / grid.scale)[inside] < 1.0)  # only up or down from the float weight
    assert np.any(learned != grid.nearest(w))
    after = held.errors(grid.value(learned)).sum()
    assert after < 0.85 * nearest, (nearest, after)
