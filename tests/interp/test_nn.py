"""NN kernels against onnxruntime (optimizations off) on single-node models, and jitted loops vs numpy."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnxopt.interp.ops import _nn_jit as J
from onnxopt.interp.ops import _nn_np as P
from onnxopt.interp.ops import nn

RNG = np.random.default_rng(0)  # replaced in each test by the test's own generator (conftest.py: rng)


def ort_node(op, inputs: dict, n_out=1, opset=17, **attrs):
    """Run one node in onnxruntime with graph optimizations disabled (values of ``inputs`` are feeds)."""
    inputs = {k: np.asarray(v) for k, v in inputs.items()}
    names = list(inputs)
    node = helper.make_node(op, names, [f"y{i}" for i in range(n_out)], **attrs)
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in inputs.items()]
    outs = [onnx.ValueInfoProto(name=f"y{i}") for i in range(n_out)]
    model = helper.make_model(helper.make_graph([node], "g", ins, outs), opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    for o in model.graph.output:  # ops without shape inference (functions): type the output like input 0
        if not o.type.HasField("tensor_type"):
            o.type.CopyFrom(ins[0].type)
    if all(o.type.tensor_type.HasField("shape") for o in model.graph.output):  # the checker needs known ranks
        onnx.checker.check_model(model, full_check=True)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    res = sess.run(None, inputs)
    return res if n_out > 1 else res[0]


def close(a, b, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    assert a.dtype == b.dtype and a.shape == b.shape


CONV_CASES = [
    dict(shape=(1, 4, 9, 9), m=6, k=(3, 3)),
    dict(shape=(2, 4, 9, 8), m=6, k=(3, 3), strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(shape=(1, 4, 10, 10), m=4, k=(3, 3), group=2, dilations=[2, 2], pads=[2, 1, 0, 1]),
    dict(shape=(1, 6, 11, 11), m=6, k=(3, 3), group=6, pads=[1, 1, 1, 1]),  # depthwise
    dict(shape=(1, 4, 11, 11), m=8, k=(5, 5), group=4, strides=[2, 2], auto_pad="SAME_UPPER"),  # depthwise x2
    dict(shape=(1, 3, 7, 9), m=5, k=(2, 3), auto_pad="SAME_LOWER", strides=[2, 1]),
    dict(shape=(1, 8, 7, 7), m=16, k=(1, 1)),  # pointwise
    dict(shape=(1, 8, 7, 7), m=4, k=(1, 1), strides=[2, 2]),
    dict(shape=(1, 3, 20), m=4, k=(5,), strides=[3], pads=[2, 1], dilations=[2]),  # 1-D
    dict(shape=(1, 4, 20), m=4, k=(3,), group=4, pads=[1, 1]),  # 1-D depthwise
    dict(shape=(1, 2, 5, 6, 7), m=3, k=(2, 3, 2), strides=[1, 2, 1], pads=[1, 0, 1, 0, 1, 1]),  # 3-D
    dict(shape=(1, 4, 9, 9), m=4, k=(3, 3), auto_pad="VALID", strides=[2, 2]),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_onnxruntime(case):
    case = dict(case)
    shape, m, k = case.pop("shape"), case.pop("m"), case.pop("k")
    g = case.get("group", 1)
    x = RNG.standard_normal(shape, dtype=np.float32)
    w = RNG.standard_normal((m, shape[1] // g, *k), dtype=np.float32)
    b = RNG.standard_normal(m, dtype=np.float32)
    ref = ort_node("Conv", {"x": x, "w": w, "b": b}, **case)
    close(nn.Conv(x, w, b, **case), ref, rtol=1e-4, atol=1e-4)


CT_CASES = [
    dict(shape=(1, 3, 5, 5), m=2, k=(3, 3)),
    dict(shape=(1, 4, 5, 6), m=3, k=(3, 3), strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    dict(shape=(1, 4, 5, 5), m=2, k=(3, 3), group=2, strides=[2, 2], output_shape=[10, 10]),
    dict(shape=(1, 2, 4, 4), m=2, k=(3, 3), strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(shape=(1, 2, 6), m=3, k=(3,), strides=[2], dilations=[2]),
    dict(shape=(1, 2, 3, 4, 3), m=2, k=(2, 2, 2), strides=[2, 1, 2]),
]


@pytest.mark.parametrize("case", CT_CASES)
def test_conv_transpose_matches_onnxruntime(case):
    case = dict(case)
    shape, m, k = case.pop("shape"), case.pop("m"), case.pop("k")
    g = case.get("group", 1)
    x = RNG.standard_normal(shape, dtype=np.float32)
    w = RNG.standard_normal((shape[1], m // g if g > 1 else m, *k), dtype=np.float32)
    ref = ort_node("ConvTranspose", {"x": x, "w": w}, **case)
    close(nn.ConvTranspose(x, w, **case), ref, rtol=1e-4, atol=1e-4)


POOL_CASES = [
    dict(shape=(1, 3, 8, 8), kernel_shape=[2, 2], strides=[2, 2]),
    dict(shape=(2, 3, 9, 9), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(shape=(1, 2, 10, 9), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(shape=(1, 2, 7, 7), kernel_shape=[3, 2], auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(shape=(1, 2, 12), kernel_shape=[3], strides=[2], pads=[1, 0]),
    dict(shape=(1, 2, 5, 6, 5), kernel_shape=[2, 2, 2], strides=[2, 2, 2], pads=[0, 1, 0, 1, 0, 1]),
]


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("op", ["MaxPool", "AvgPool0", "AvgPool1", "LpPool"])
def test_pool_matches_onnxruntime(case, op):
    case = dict(case)
    x = RNG.standard_normal(case.pop("shape"), dtype=np.float32)
    if op == "MaxPool":
        ref = ort_node("MaxPool", {"x": x}, n_out=2, **case)
        y, idx = nn.max_pool(x, **case)
        close(y, ref[0])
        np.testing.assert_array_equal(idx, ref[1])
        close(nn.max_pool(x, with_indices=False, **case), ref[0])  # the faster loop without indices
    elif op == "LpPool":  # opset 18: the first LpPool with ceil_mode and dilations
        ref = ort_node("LpPool", {"x": x}, p=2, opset=18, **case)
        close(nn.LpPool(x, p=2, **case), ref, rtol=1e-4)
    else:
        cip = int(op[-1])
        ref = ort_node("AveragePool", {"x": x}, count_include_pad=cip, **case)
        close(nn.AveragePool(x, count_include_pad=cip, **case), ref)


def test_maxpool_dilations_and_storage_order():
    x = RNG.standard_normal((1, 2, 9, 8), dtype=np.float32)
    for attrs in (dict(dilations=[2, 2]), dict(storage_order=1, pads=[1, 1, 1, 1])):
        ref = ort_node("MaxPool", {"x": x}, n_out=2, kernel_shape=[3, 3], **attrs)
        y, idx = nn.max_pool(x, kernel_shape=[3, 3], **attrs)
        close(y, ref[0])
        np.testing.assert_array_equal(idx, ref[1])


def test_global_pools_and_norms():
    x = RNG.standard_normal((2, 4, 5, 6), dtype=np.float32)
    close(nn.GlobalAveragePool(x), ort_node("GlobalAveragePool", {"x": x}))
    close(nn.GlobalMaxPool(x), ort_node("GlobalMaxPool", {"x": x}))
    s, b = RNG.random(4, dtype=np.float32) + 0.5, RNG.standard_normal(4, dtype=np.float32)
    mu, var = RNG.standard_normal(4, dtype=np.float32), RNG.random(4, dtype=np.float32) + 0.1
    feeds = {"x": x, "s": s, "b": b, "m": mu, "v": var}
    close(nn.BatchNormalization(x, s, b, mu, var, epsilon=1e-3), ort_node("BatchNormalization", feeds, epsilon=1e-3))
    close(nn.InstanceNormalization(x, s, b), ort_node("InstanceNormalization", {"x": x, "s": s, "b": b}), rtol=1e-4)
    ls, lb = RNG.standard_normal(6, dtype=np.float32), RNG.standard_normal(6, dtype=np.float32)
    close(nn.LayerNormalization(x, ls, lb)[0], ort_node("LayerNormalization", {"x": x, "s": ls, "b": lb}), rtol=1e-4)
    close(nn.LRN(x, size=3, alpha=1e-2), ort_node("LRN", {"x": x}, size=3, alpha=1e-2))
    gs, gb = RNG.standard_normal(4, dtype=np.float32), RNG.standard_normal(4, dtype=np.float32)
    close(nn.GroupNormalization(x, gs, gb, num_groups=2),
          ort_node("GroupNormalization", {"x": x, "s": gs, "b": gb}, opset=21, num_groups=2), rtol=1e-4)


# --- jitted loops against their numpy twins -------------------------------------------------------------------

@pytest.mark.parametrize("k,s,d,p", [((1, 3, 3), (1, 1, 1), (1, 1, 1), (0, 1, 1)),
                                     ((1, 3, 2), (1, 2, 3), (1, 2, 1), (0, 2, 0)),
                                     ((2, 2, 3), (2, 1, 1), (1, 1, 2), (1, 0, 1))])
def test_im2col_col2im_jit_vs_numpy(k, s, d, p):
    x = RNG.standard_normal((3, 4, 9, 8))
    pe = p
    out = [(n + 2 * pp - ((kk - 1) * dd + 1)) // ss + 1
           for n, pp, kk, dd, ss in zip(x.shape[1:], p, k, d, s, strict=False)]
    ref = P.im2col_nd(x, k, s, d, p, pe, out)
    np.testing.assert_allclose(J.im2col3d(x, *k, *s, *d, *p, *out), ref)
    cols = RNG.standard_normal((2 * int(np.prod(k)), int(np.prod(out))))
    ins = out
    ref2 = P.col2im_nd(cols, 2, list(x.shape[1:]), k, s, d, p, ins)
    np.testing.assert_allclose(J.col2im3d(cols, 2, *x.shape[1:], *k, *s, *d, *p, *ins), ref2)


@pytest.mark.parametrize("shape,ph,pw,sh,sw,Hq,Wq", [((3, 7, 9), 1, 1, 1, 1, 9, 11), ((3, 7, 9), 1, 2, 2, 2, 5, 6),
                                                      ((2, 5, 10), 0, 3, 1, 3, 5, 5), ((2, 5, 4), 2, 5, 3, 2, 2, 3),
                                                      ((2, 6, 7), 3, 0, 2, 4, 6, 1), ((1, 3, 3), 0, 0, 2, 2, 1, 1)])
def test_pad_phases_jit_vs_numpy(shape, ph, pw, sh, sw, Hq, Wq):
    x = RNG.standard_normal(shape).astype(np.float32)
    got = J.pad_phases(x, ph, pw, sh, sw, Hq, Wq)
    want = P.pad_phases_np(x, ph, pw, sh, sw, Hq, Wq)
    assert got.shape == want.shape == (shape[0], sh, sw, Hq, Wq)
    np.testing.assert_array_equal(got, want)
    padded = np.pad(x, [(0, 0), (ph, sh * Hq), (pw, sw * Wq)])
    np.testing.assert_array_equal(got[:, 1 % sh, 1 % sw], padded[:, 1 % sh::sh, 1 % sw::sw][:, :Hq, :Wq])


DW_CASES = [(1, (1, 1), (1, 1), (12, 13)), (2, (2, 2), (1, 1), (12, 13)), (1, (1, 2), (2, 1), (12, 13)),
            (1, (2, 2), (2, 2), (15, 17)), (1, (3, 2), (1, 3), (14, 11)), (3, (2, 1), (1, 1), (9, 10)),
            (1, (1, 1), (1, 1), (70, 71)), (1, (1, 1), (2, 3), (60, 75)), (2, (2, 2), (1, 1), (101, 99)),
            (1, (2, 3), (3, 1), (97, 120))]  # last four: row loop, not whole planes


@pytest.mark.parametrize("mult,s,d,hw", DW_CASES)
def test_depthwise_jit_vs_numpy(mult, s, d, hw):
    x = RNG.standard_normal((3, *hw)).astype(np.float32)
    w = RNG.standard_normal((3 * mult, 3, 3)).astype(np.float32)
    bias = RNG.standard_normal(3 * mult).astype(np.float32)
    out = [(n - ((3 - 1) * dd + 1)) // ss + 1 for n, dd, ss in zip(hw, d, s, strict=False)]
    Hq, Wq = out[0] + 2 * d[0] // s[0] + 1, out[1] + 2 * d[1] // s[1]
    xq = J.pad_phases(x, 0, 0, *s, Hq, Wq)
    got = J.depthwise2d(xq, w, bias, mult, *d, np.empty((3 * mult, *out), np.float32))
    want = P.depthwise_nd(x, w, mult, s, d, out) + bias[:, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


DW_CONV_CASES = [
    dict(shape=(1, 5, 13, 11), k=(3, 3), strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(shape=(2, 4, 12, 15), k=(3, 3), strides=[2, 2], pads=[0, 2, 1, 0], dilations=[2, 1]),
    dict(shape=(1, 3, 17, 16), k=(5, 5), strides=[2, 2], pads=[2, 2, 2, 2], dilations=[2, 2]),
    dict(shape=(1, 4, 9, 9), k=(5, 5), strides=[1, 1], pads=[2, 2, 2, 2]),
    dict(shape=(1, 4, 7, 7), k=(3, 3), strides=[1, 1], pads=[3, 0, 0, 3], dilations=[2, 3]),
    dict(shape=(1, 3, 11, 10), k=(3, 2), strides=[3, 2], pads=[1, 0, 2, 1]),
    dict(shape=(1, 2, 40, 41), k=(3, 3), strides=[1, 1], pads=[1, 1, 1, 1]),  # row loop
    dict(shape=(1, 2, 99, 101), k=(3, 3), strides=[2, 2], pads=[1, 0, 1, 1]),  # row loop
    dict(shape=(1, 2, 8, 9), k=(3, 3), strides=[1, 2], auto_pad="SAME_LOWER", mult=2),
    dict(shape=(1, 3, 21), k=(5,), strides=[2], pads=[2, 1], dilations=[2]),  # 1-D
    dict(shape=(1, 3, 19), k=(3,), strides=[1], pads=[0, 4], mult=3),  # 1-D
]


@pytest.mark.parametrize("case", DW_CONV_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_depthwise_conv_matches_onnxruntime(case, with_bias):
    case = dict(case)
    shape, k, mult = case.pop("shape"), case.pop("k"), case.pop("mult", 1)
    c = shape[1]
    x = RNG.standard_normal(shape, dtype=np.float32)
    w = RNG.standard_normal((c * mult, 1, *k), dtype=np.float32)
    feeds = {"x": x, "w": w}
    if with_bias:
        feeds["b"] = RNG.standard_normal(c * mult, dtype=np.float32)
    ref = ort_node("Conv", feeds, group=c, **case)
    close(nn.Conv(*feeds.values(), group=c, **case), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_jit_vs_numpy(dtype):
    x = RNG.standard_normal((2, 5, 3, 4)).astype(dtype)
    s, b = RNG.random(5).astype(dtype) + 0.5, RNG.standard_normal(5).astype(dtype)
    mu, var = RNG.standard_normal(5).astype(dtype), RNG.random(5).astype(dtype) + 0.1
    got = J.batchnorm(x.reshape(2, 5, -1), s, b, mu, var, dtype(1e-3))
    np.testing.assert_allclose(got, P.batchnorm_np(x.reshape(2, 5, -1), s, b, mu, var, 1e-3), rtol=1e-6, atol=1e-6)
    y = nn.BatchNormalization(x[:, :, ::2], s, b, mu, var, epsilon=1e-3)  # non-contiguous input
    assert y.dtype == dtype
    np.testing.assert_allclose(y, P.batchnorm_np(np.ascontiguousarray(x[:, :, ::2]).reshape(2, 5, -1), s, b, mu, var,
                                                 1e-3).reshape(y.shape), rtol=1e-6, atol=1e-6)


def test_batchnorm_mixed_dtypes_and_float16():
    x = RNG.standard_normal((1, 3, 4)).astype(np.float16)
    s, b, mu, var = (np.float32([1.0, 2.0, 0.5]), np.float32([0.1, 0.0, -1.0]), np.float32([0.0, 1.0, 2.0]),
                     np.float32([1.0, 0.5, 2.0]))
    y = nn.BatchNormalization(x, s, b, mu, var)
    assert y.dtype == np.float16
    xf = x.astype(np.float32).reshape(1, 3, -1)
    np.testing.assert_allclose(y.astype(np.float32), P.batchnorm_np(xf, s, b, mu, var, 1e-5).reshape(y.shape),
                               rtol=2e-3, atol=2e-3)
    y32 = nn.BatchNormalization(x.astype(np.float32), s.astype(np.float64), b, mu, var)
    assert y32.dtype == np.float32


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("ceil", [0, 1])
def test_pool_jit_vs_numpy(mode, ceil):
    x = RNG.standard_normal((2, 3, 10, 11))
    k, s, d, pb, pe = [2, 3, 3], [1, 2, 2], [1, 1, 2], [0, 1, 1], [1, 1, 0]
    pb_, pe_, out, _, _ = nn.pool_geometry(list(x.shape[1:]), k, s, d, pb + pe, "NOTSET", ceil)
    y, _ = J.pool3d(x, mode, 2.0, *k, *s, *d, *pb, *pe, *out, False)
    np.testing.assert_allclose(y, P.pool_nd(x, mode, 2.0, k, s, d, pb, pe, out), rtol=1e-12)


def test_conv_rank4_uses_numpy_path():
    x = RNG.standard_normal((1, 2, 3, 4, 3, 4)).astype(np.float32)
    w = RNG.standard_normal((2, 2, 2, 2, 2, 2)).astype(np.float32)
    y = nn.Conv(x, w)
    # compare with a rank-3 conv over the fused first spatial dims done by explicit summation
    ref = np.zeros((1, 2, 2, 3, 2, 3), np.float64)
    for a, b, c, e in np.ndindex(2, 2, 2, 2):
        ref += np.einsum("ncdhwv,mc->nmdhwv", x[:, :, a:a + 2, b:b + 3, c:c + 2, e:e + 3], w[:, :, a, b, c, e])
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("s,d", [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((2, 1), (1, 2))])
def test_maxpool2d_jit_vs_numpy(s, d):
    xp = RNG.standard_normal((3, 11, 12)).astype(np.float32)
    k = (3, 2)
    out = [(n - ((kk - 1) * dd + 1)) // ss + 1 for n, kk, dd, ss in zip(xp.shape[1:], k, d, s, strict=False)]
    np.testing.assert_array_equal(J.maxpool2d(xp, *k, *s, *d, *out), P.pool_nd(xp, 0, 0, k, s, d, [0, 0], [0, 0], out))
