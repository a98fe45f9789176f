"""Weight formats bit by bit against numpy: parsing, int4/int2 packing, each encoder's rule, GPTQ, the plan's ladder."""

import ml_dtypes
import numpy as np
import pytest
from onnx import numpy_helper

from onnxopt.errors import UserError
from onnxopt.plan import FORMATS, format_spec
from onnxopt.weight_codecs import encode, gptq, kmeans_1d, output_error, to_2d
from onnxopt.weight_formats import WeightSpec, next_format, pack_bits, parse_weights, plan_name, unpack_bits


def correlated(rng, k, rows=3000):
    """Inputs whose features are strongly correlated (what GPTQ exploits), and their Hessian."""
    mix = rng.standard_normal((k, k)) * 0.4
    x = rng.standard_normal((rows, k)) @ mix + 0.3 * rng.standard_normal((rows, k))
    return x, x.T @ x


@pytest.mark.parametrize("text,name,bits,opset", [
    ("int4", "int4", 4, 21), ("INT4:block=32", "int4:block=32", 4, 21), ("int4:asym:block=128", "int4:block=128:asym",
                                                                         4, 21),
    ("ternary", "ternary", 2, 25), ("binary:rtn", "binary", 2, 25), ("pow2", "pow2", 4, 21),
    ("kmeans:16", "kmeans:16", 4, 21), ("kmeans:200", "kmeans:200", 8, 21), ("w8", "int8", 8, 13),
    ("int8:block=64", "int8:block=64", 8, 21),
])
def test_parse(text, name, bits, opset):
    spec = parse_weights(text)
    assert (spec.name, spec.bits, spec.opset) == (name, bits, opset)
    assert plan_name(spec) in FORMATS  # every parsed format is a plan format
    assert format_spec(plan_name(spec)).activations is None  # weight-only


@pytest.mark.parametrize("text,words", [
    ("int3", "unknown weight format"), ("int4:block=7", "block size 7"), ("int4:block=x", "not a number"),
    ("kmeans", "number of centroids"), ("kmeans:300", "2 <= K <= 256"), ("ternary:asym", "does not apply"),
    ("pow2:block=32", "does not apply"),
])
def test_parse_errors_are_one_line_user_errors(text, words):
    with pytest.raises(UserError, match=words) as e:
        parse_weights(text)
    assert "\n" not in str(e.value)


def test_ladder():
    assert [next_format(f) for f in ("binary", "ternary", "pow2", "kmeans:16", "int4:block=32", "w8")] == [
        "ternary", "int4", "int4", "int4", "w8", "float"]
    assert next_format("int8") is None  # the activation + weight format is not a weight format
    assert FORMATS["binary"].rank < FORMATS["ternary"].rank < FORMATS["int4"].rank < FORMATS["w8"].rank


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("count", [1, 3, 7, 8, 33])
def test_pack_roundtrip(rng, bits, count):
    v = rng.integers(0, 2**bits, (3, count))
    packed = pack_bits(v, bits)
    assert packed.shape == (3, -(-count * bits // 8))
    assert np.array_equal(unpack_bits(packed, bits, count), v)
    assert packed[0, 0] & ((1 << bits) - 1) == v[0, 0]  # the first value sits in the lowest bits


@pytest.mark.parametrize("dtype,bits,offset", [(ml_dtypes.int4, 4, 16), (ml_dtypes.uint4, 4, 0),
                                               (ml_dtypes.int2, 2, 4)])
def test_onnx_sub_byte_packing_is_ours(rng, dtype, bits, offset):
    """ONNX's int4/int2 serialization (what the graph stores) packs as pack_bits does, odd sizes included."""
    lo, hi = int(ml_dtypes.iinfo(dtype).min), int(ml_dtypes.iinfo(dtype).max)
    v = rng.integers(lo, hi + 1, (5, 7))
    raw = numpy_helper.from_array(v.astype(dtype), "t").raw_data
    two = (v + offset) % (1 << bits) if lo < 0 else v  # two's complement in ``bits``
    assert raw == pack_bits(two.reshape(-1), bits).tobytes()


def test_int4_blocks_and_the_last_remainder(rng):
    """Blocks of 16 along K=37: three blocks, the last one of 5 rows; sign-aware symmetric scales, exact decode."""
    w = rng.standard_normal((37, 6)).astype(np.float32)
    enc = encode(w, parse_weights("int4:block=16"), out_axis=1, in_axis=0)
    assert enc.values.dtype == ml_dtypes.int4 and enc.scale.shape == (3, 6) and enc.block == 16 and enc.axis == 0
    for b, rows in enumerate((slice(0, 16), slice(16, 32), slice(32, 37))):
        part = w[rows]
        vmax = part[np.argmax(np.abs(part), axis=0), np.arange(6)]
        assert np.allclose(enc.scale[b], vmax / -8)
        q = np.clip(np.rint(part / (vmax / -8)), -8, 7)
        assert np.array_equal(enc.values[rows].astype(np.int64), q)
        assert np.array_equal(enc.decode()[rows], (q * (vmax / -8)).astype(np.float32))
    assert enc.storage_bytes == (37 * 6 + 1) // 2 + 3 * 6 * 4


def test_int4_asym_per_channel(rng):
    w = (rng.standard_normal((9, 5)) + 0.5).astype(np.float32)
    enc = encode(w, parse_weights("int4:asym"), out_axis=1, in_axis=0)
    lo, hi = np.minimum(w.min(0), 0), np.maximum(w.max(0), 0)
    scale = ((hi - lo) / 15).astype(np.float32)
    zp = np.clip(np.rint(-lo / scale), 0, 15)
    assert enc.values.dtype == ml_dtypes.uint4 and enc.zero_point.dtype == ml_dtypes.uint4
    assert np.allclose(enc.scale, scale) and np.array_equal(enc.zero_point.astype(np.int64), zp)
    q = np.clip(np.rint(w / scale) + zp, 0, 15)
    assert np.array_equal(enc.decode(), ((q - zp) * scale).astype(np.float32))
    assert np.abs(enc.decode() - w).max() <= scale.max() / 2 + 1e-6


def test_conv_blocks_run_along_input_channels(rng):
    w = rng.standard_normal((4, 40, 3, 3)).astype(np.float32)
    enc = encode(w, parse_weights("int4:block=32"), out_axis=0, in_axis=1)
    assert enc.scale.shape == (4, 2, 3, 3) and enc.axis == 1
    part = w[:, 32:, 1, 2]  # the remainder block (8 channels) at one kernel position
    vmax = part[np.arange(4), np.argmax(np.abs(part), axis=1)]
    assert np.allclose(enc.scale[:, 1, 1, 2], vmax / -8)


def test_ternary_follows_twn(rng):
    w = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    enc = encode(w, parse_weights("ternary"), out_axis=0, in_axis=1)
    assert enc.values.dtype == ml_dtypes.int2 and enc.scale.shape == (3,)
    for o in range(3):
        a = np.abs(w[o])
        delta = 0.7 * a.mean()
        t = np.sign(w[o]) * (a > delta)
        assert np.array_equal(enc.values[o].astype(np.int64), t)
        assert np.isclose(enc.scale[o], a[a > delta].mean())
    assert set(np.unique(enc.values.astype(np.int64))) <= {-1, 0, 1}


def test_binary_follows_xnor(rng):
    w = rng.standard_normal((8, 5)).astype(np.float32)
    w[0, 0] = 0.0
    enc = encode(w, parse_weights("binary"), out_axis=1, in_axis=0)
    assert np.array_equal(enc.values.astype(np.int64), np.where(w >= 0, 1, -1))
    assert np.allclose(enc.scale, np.abs(w).mean(0))
    assert np.array_equal(enc.decode(), enc.values.astype(np.float32) * enc.scale)  # what DequantizeLinear gives


@pytest.mark.parametrize("fmt", ["ternary", "binary"])
def test_alpha_refit_lowers_the_layer_output_error(rng, fmt):
    w = rng.standard_normal((48, 12)).astype(np.float32)
    _, h = correlated(rng, 48)
    plain = encode(w, parse_weights(fmt + ":rtn"), 1, 0)
    fit = encode(w, parse_weights(fmt), 1, 0, hessian=h)
    assert np.array_equal(plain.values.astype(np.int8), fit.values.astype(np.int8))  # same signs, new alpha
    e_plain = output_error(w.T, plain.decode().T, h)
    e_fit = output_error(w.T, fit.decode().T, h)
    assert e_fit < e_plain
    for f in (0.95, 1.05):  # least squares: any other alpha does worse
        assert output_error(w.T, (fit.decode() * f).T, h) > e_fit
    t = to_2d(plain.values.astype(np.float64), 1)
    expect = ((w.T @ h) * t).sum(1) / ((t @ h) * t).sum(1)
    assert np.allclose(fit.scale, expect, rtol=1e-5)


def test_pow2_values_are_signed_powers_of_two_in_the_channel_range(rng):
    w = (rng.standard_normal((30, 6)) * np.array([0.01, 0.1, 1, 3, 10, 0.5])).astype(np.float32)
    enc = encode(w, parse_weights("pow2"), out_axis=1, in_axis=0)
    d = enc.decode()
    assert enc.values.dtype == ml_dtypes.uint4 and enc.codebook.shape == (16,)
    kmax = np.rint(np.log2(np.abs(w).max(0)))
    assert np.array_equal(enc.scale, np.exp2(kmax).astype(np.float32))
    nz = d != 0
    k = np.log2(np.abs(d[nz]))
    assert np.array_equal(k, np.rint(k))  # exact powers of two
    kcol = np.broadcast_to(kmax, d.shape)[nz]
    assert np.all((k <= kcol) & (k >= kcol - 6))
    grid = np.array([0] + [s * 2.0**e for s in (1, -1) for e in range(-6, 1)])
    best = np.abs(w[..., None] / enc.scale[None, :, None] - grid).min(-1) * enc.scale
    assert np.allclose(np.abs(d - w), best, atol=1e-6)  # round to the nearest level


@pytest.mark.parametrize("k,dtype", [(4, ml_dtypes.uint4), (16, ml_dtypes.uint4), (64, np.uint8)])
def test_kmeans_is_a_lloyd_fixed_point(rng, k, dtype):
    w = rng.standard_normal((50, 20)).astype(np.float32)
    enc = encode(w, parse_weights(f"kmeans:{k}"), out_axis=1, in_axis=0)
    assert enc.values.dtype == dtype and enc.codebook.shape == (k,)
    assert len(np.unique(enc.decode())) <= k
    idx = enc.values.astype(np.int64)
    for c in np.unique(idx):
        assert np.isclose(enc.codebook[c], w[idx == c].mean(), atol=1e-5)  # each centroid is its members' mean
    d = np.abs(w[..., None] - enc.codebook).min(-1)
    assert np.allclose(np.abs(enc.decode() - w), d, atol=1e-6)  # every weight at its nearest centroid


def test_kmeans_1d_fewer_distinct_values_than_centroids():
    c = kmeans_1d(np.array([1.0, 1.0, 2.0, 2.0]), 4)
    assert c.shape == (4,) and {1.0, 2.0} <= set(np.round(c, 6))


@pytest.mark.parametrize("fmt", ["int4", "int4:block=32", "int4:block=16:asym", "pow2", "kmeans:16", "w8"])
def test_gptq_beats_round_to_nearest_on_correlated_inputs(rng, fmt):
    w = rng.standard_normal((64, 24)).astype(np.float32)
    _, h = correlated(rng, 64)
    spec = parse_weights(fmt)
    rtn = encode(w, parse_weights(fmt + ":rtn"), 1, 0)
    gp = encode(w, parse_weights(fmt + ":gptq"), 1, 0, hessian=h)
    assert gp.values.dtype == rtn.values.dtype and spec.name == gp.spec.name
    e_rtn, e_gptq = output_error(w.T, rtn.decode().T, h), output_error(w.T, gp.decode().T, h)
    assert e_gptq < 0.85 * e_rtn, (e_gptq, e_rtn)


def test_gptq_with_an_identity_hessian_is_round_to_nearest(rng):
    w = rng.standard_normal((5, 16))
    s = 0.25

    def quant(col, i):
        return np.rint(col / s) * s

    assert np.allclose(gptq(w, np.eye(16), quant, damp=0.0), np.rint(w / s) * s)


def test_weight_spec_rounding_is_not_part_of_the_name():
    assert WeightSpec("int4", 32, False, 0, "gptq").name == parse_weights("int4:block=32:rtn").name
