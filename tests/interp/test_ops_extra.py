"""Kernels of norm_extra, misc, detection and signal against onnxruntime on single-node models, covering the
attributes and input forms the ONNX backend node tests leave out."""  # noqa: D205

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnxopt.interp import Interpreter

RNG = np.random.default_rng(0)  # replaced in each test by the test's own generator (conftest.py: rng)


def single_node(op, inputs: dict, opset: int, **attrs) -> onnx.ModelProto:
    """One-node model; an input whose value is None is an omitted optional input."""
    names = [k if v is not None else "" for k, v in inputs.items()]
    node = helper.make_node(op, names, ["y"], **attrs)
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.shape(v))
           for k, v in inputs.items() if v is not None]
    model = helper.make_model(helper.make_graph([node], "g", ins, [onnx.ValueInfoProto(name="y")]),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    if model.graph.output[0].type.tensor_type.HasField("shape"):
        onnx.checker.check_model(model, full_check=True)
    return model


def check(op, inputs: dict, opset: int, rtol=1e-5, atol=1e-5, **attrs):
    """Interpreter vs onnxruntime (optimizations off): same dtype, shape and values."""
    inputs = {k: (None if v is None else np.asarray(v)) for k, v in inputs.items()}
    feeds = {k: v for k, v in inputs.items() if v is not None}
    model = single_node(op, inputs, opset, **attrs)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    want = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = Interpreter(model).run(feeds)["y"]
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol)
    return got


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ norm_extra


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
def test_rms_normalization_axes(axis):
    x = f32(2, 3, 4)
    check("RMSNormalization", {"x": x, "s": f32(*x.shape[axis % 3:])}, 23, axis=axis, epsilon=1e-3)


def test_rms_normalization_float16_broadcast_scale():
    x = f32(2, 5, 6).astype(np.float16)
    check("RMSNormalization", {"x": x, "s": f32(1, 6).astype(np.float16)}, 23, rtol=2e-3, atol=2e-3, axis=1)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_lp_normalization_negative_values_and_zero_rows(p, axis):
    x = f32(4, 5)
    x[1] = 0
    x[:, 2] = 0
    check("LpNormalization", {"x": x}, 22, axis=axis, p=p)


def test_lp_normalization_float64_opset1():
    check("LpNormalization", {"x": RNG.standard_normal((3, 4, 2))}, 1, axis=1, p=1)


@pytest.mark.parametrize("axes", [[0, 2, 3], [1], [2, 3], [-1]])
def test_mean_variance_normalization_axes(axes):
    check("MeanVarianceNormalization", {"x": f32(2, 3, 4, 5) * 3 + 1}, 13, axes=axes)


# ------------------------------------------------------------------ misc


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis", [0, 2, -2])
def test_cumprod(exclusive, reverse, axis):
    x = (RNG.random((3, 4, 5)) + 0.5).astype(np.float32)
    check("CumProd", {"x": x, "axis": np.array(axis, np.int64)}, 26, exclusive=exclusive, reverse=reverse)


def test_cumprod_int32_axis_int32():
    x = RNG.integers(-3, 4, (4, 3)).astype(np.int32)
    check("CumProd", {"x": x, "axis": np.array([1], np.int32)}, 26, reverse=1)


@pytest.mark.parametrize(("batch_axis", "time_axis"), [(0, 1), (1, 0)])
def test_reverse_sequence_3d(batch_axis, time_axis):
    x = f32(4, 5, 3) if batch_axis == 0 else f32(5, 4, 3)
    lens = np.array([5, 0, 1, 3], np.int64)
    check("ReverseSequence", {"x": x, "lens": lens}, 10, batch_axis=batch_axis, time_axis=time_axis)


def test_reverse_sequence_int64_data():
    x = RNG.integers(0, 100, (6, 3)).astype(np.int64)
    check("ReverseSequence", {"x": x, "lens": np.array([2, 6, 4], np.int64)}, 10)


def test_det_batched():
    check("Det", {"x": f32(2, 3, 4, 4)}, 22, rtol=1e-4)
    check("Det", {"x": f32(5, 5)}, 11, rtol=1e-4)


# ------------------------------------------------------------------ detection


def _boxes(n_batch, n_boxes, center):
    xy = RNG.random((n_batch, n_boxes, 2)) * 10
    wh = RNG.random((n_batch, n_boxes, 2)) * 4 + 0.5
    if center:
        return np.concatenate([xy, wh], axis=-1).astype(np.float32)
    y1x1 = xy[..., ::-1]
    out = np.concatenate([y1x1, y1x1 + wh[..., ::-1]], axis=-1)
    out[0, ::3] = out[0, ::3][:, [2, 3, 0, 1]]  # flipped corners are valid too
    return out.astype(np.float32)


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("score_threshold", [None, 0.3])
def test_non_max_suppression(center, score_threshold):
    boxes = _boxes(2, 40, center)
    scores = RNG.random((2, 3, 40)).astype(np.float32)
    scores[1, 0, :5] = 0.5  # ties break by box index
    inputs = {"boxes": boxes, "scores": scores, "max_out": np.array([7], np.int64),
              "iou": np.array([0.2], np.float32),
              "score": None if score_threshold is None else np.array([score_threshold], np.float32)}
    check("NonMaxSuppression", inputs, 11, center_point_box=center)


def test_non_max_suppression_omitted_max_output_selects_nothing():
    got = check("NonMaxSuppression", {"boxes": _boxes(1, 5, 0), "scores": f32(1, 1, 5)}, 11)
    assert got.shape == (0, 3)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("ctm", ["half_pixel", "output_half_pixel"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align(mode, ctm, sampling_ratio):
    x = f32(2, 3, 12, 10)
    rois = np.array([[0, 0, 9, 9], [2.5, 1.2, 7.7, 11.3], [-2, -3, 4, 5], [8, 8, 30, 30], [3, 3, 3.2, 3.4]],
                    np.float32)
    idx = np.array([0, 1, 1, 0, 1], np.int64)
    check("RoiAlign", {"x": x, "rois": rois * 2, "idx": idx}, 16, mode=mode, coordinate_transformation_mode=ctm,
          sampling_ratio=sampling_ratio, output_height=3, output_width=4, spatial_scale=0.5)


def test_roi_align_opset10_has_no_half_pixel_shift():
    rois = np.array([[0.5, 1.0, 6.0, 7.5], [2.0, 2.0, 2.5, 3.0]], np.float32)
    check("RoiAlign", {"x": f32(1, 2, 8, 8), "rois": rois, "idx": np.zeros(2, np.int64)}, 10,
          output_height=2, output_width=3)


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [0, 1])
def test_grid_sample_2d(mode, padding_mode, align_corners):
    x = f32(2, 3, 5, 6)
    grid = (RNG.random((2, 4, 7, 2)) * 3.2 - 1.6).astype(np.float32)  # well outside [-1, 1] too
    check("GridSample", {"x": x, "grid": grid}, 20, mode=mode, padding_mode=padding_mode,
          align_corners=align_corners, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
def test_grid_sample_opset16_mode_names(mode):
    grid = (RNG.random((1, 3, 3, 2)) * 2.4 - 1.2).astype(np.float32)
    check("GridSample", {"x": f32(1, 2, 4, 4), "grid": grid}, 16, mode=mode, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_grid_sample_3d(mode, padding_mode):
    grid = (RNG.random((1, 2, 3, 4, 3)) * 2.6 - 1.3).astype(np.float32)
    check("GridSample", {"x": f32(1, 2, 3, 4, 5), "grid": grid}, 20, mode=mode, padding_mode=padding_mode,
          rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("size", [[2, 3, 4, 5], [2, 1, 3, 4, 5]])
def test_affine_grid(align_corners, size):
    r = len(size) - 2
    theta = f32(2, r, r + 1)
    check("AffineGrid", {"theta": theta, "size": np.array(size, np.int64)}, 20, align_corners=align_corners)


@pytest.mark.parametrize(("image", "block", "attrs"), [
    ([5, 6], [2, 3], {}),
    ([7, 8], [3, 2], dict(strides=[2, 1], dilations=[1, 2], pads=[1, 0, 2, 1])),
    ([9, 9], [3, 3], dict(strides=[2, 2], pads=[1, 1, 1, 1])),
])
def test_col2im_2d(image, block, attrs):
    nd = len(image)
    st, di = attrs.get("strides", [1] * nd), attrs.get("dilations", [1] * nd)
    pads = attrs.get("pads", [0] * 2 * nd)
    L = int(np.prod([(n + pads[i] + pads[i + nd] - (k - 1) * d - 1) // s + 1
                     for i, (n, k, s, d) in enumerate(zip(image, block, st, di, strict=True))]))
    x = f32(2, 3 * int(np.prod(block)), L)
    check("Col2Im", {"x": x, "image": np.array(image, np.int64), "block": np.array(block, np.int64)}, 18, **attrs)


@pytest.mark.parametrize(("shape", "pool"), [
    ((1, 2, 7, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ((2, 3, 6, 8), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ((1, 2, 9), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
])
def test_max_unpool_inverts_max_pool(shape, pool):
    x = f32(*shape)
    model = single_node("MaxPool", {"x": x}, 12, **pool)
    model.graph.output.append(helper.make_tensor_value_info("idx", onnx.TensorProto.INT64, None))
    model.graph.node[0].output.append("idx")
    pooled, idx = Interpreter(model).run({"x": x}).values()
    a = check("MaxUnpool", {"p": pooled, "i": idx}, 22, **pool)
    # output_shape equal to the inferred shape: onnxruntime and the spec's reference agree
    b = check("MaxUnpool", {"p": pooled, "i": idx, "shape": np.array(x.shape, np.int64)}, 22, **pool)
    np.testing.assert_array_equal(a, b)
    assert set(np.flatnonzero(a)) == set(idx.reshape(-1))


def test_max_unpool_larger_output_shape_pads_at_the_end():
    # the spec's reference semantics (onnxruntime differs: it scatters the indices into output_shape)
    x = np.array([[[[5, 6], [7, 8]]]], np.float32)
    idx = np.array([[[[5, 7], [13, 15]]]], np.int64)
    model = single_node("MaxUnpool", {"x": x, "i": idx, "s": np.array([1, 1, 5, 5], np.int64)}, 22,
                        kernel_shape=[2, 2], strides=[2, 2])
    got = Interpreter(model).run({"x": x, "i": idx, "s": np.array([1, 1, 5, 5], np.int64)})["y"]
    want = np.zeros((1, 1, 5, 5), np.float32)
    want[0, 0, 1, 1], want[0, 0, 1, 3], want[0, 0, 3, 1], want[0, 0, 3, 3] = 5, 6, 7, 8
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("shape", "axes"), [([3, 8], None), ([7, 2], [0, 1]), ([5], [-1]), ([2, 9], [-3, 1])])
def test_center_crop_pad(shape, axes):
    x = f32(4, 6, 5)
    attrs = {} if axes is None else {"axes": axes}
    if axes is None:
        shape = [*shape, 6]
    check("CenterCropPad", {"x": x, "shape": np.array(shape, np.int64)}, 18, **attrs)


# ------------------------------------------------------------------ signal


@pytest.mark.parametrize("complex_in", [False, True])
@pytest.mark.parametrize("inverse", [0, 1])
@pytest.mark.parametrize("dft_length", [None, 6, 13])
@pytest.mark.parametrize("axis", [1, 2, -2])
def test_dft(complex_in, inverse, dft_length, axis):
    x = f32(2, 9, 10, 2 if complex_in else 1)
    inputs = {"x": x, "n": None if dft_length is None else np.array(dft_length, np.int64),
              "axis": np.array(axis, np.int64)}
    check("DFT", inputs, 20, inverse=inverse, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dft_length", [None, 8, 11])
def test_dft_onesided_and_irfft(dft_length):
    x = f32(3, 10, 1)
    n = None if dft_length is None else np.array(dft_length, np.int64)
    check("DFT", {"x": x, "n": n}, 20, onesided=1, rtol=1e-4, atol=1e-4)
    spec = f32(3, 6, 2)
    check("DFT", {"x": spec, "n": n}, 20, onesided=1, inverse=1, rtol=1e-4, atol=1e-4)


def test_dft_opset17_axis_attribute():
    check("DFT", {"x": f32(2, 5, 7, 2)}, 17, axis=2, rtol=1e-4, atol=1e-4)
    check("DFT", {"x": f32(2, 5, 7, 1), "n": np.array(8, np.int64)}, 17, onesided=1, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("complex_in", [False, True])
@pytest.mark.parametrize("with_window", [False, True])
def test_stft(complex_in, with_window):
    x = f32(2, 64, 2 if complex_in else 1)
    win = np.hanning(16).astype(np.float32) if with_window else None
    inputs = {"x": x, "step": np.array(6, np.int64), "win": win,
              "flen": None if with_window else np.array(16, np.int64)}
    check("STFT", inputs, 17, onesided=0 if complex_in else 1, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
@pytest.mark.parametrize("dtype", [onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE])
def test_windows(op, periodic, dtype):
    check(op, {"n": np.array(17, np.int64)}, 17, periodic=periodic, output_datatype=dtype, atol=1e-6)


@pytest.mark.parametrize(("bins", "n_fft", "rate", "lo", "hi"), [(8, 16, 8192, 0.0, 4096.0),
                                                               (20, 512, 16000, 30.0, 7600.0),
                                                               (5, 64, 22050, 100.0, 3000.0)])
def test_mel_weight_matrix(bins, n_fft, rate, lo, hi):
    inputs = {"bins": np.array(bins, np.int64), "n": np.array(n_fft, np.int64), "rate": np.array(rate, np.int64),
              "lo": np.array(lo, np.float32), "hi": np.array(hi, np.float32)}
    check("MelWeightMatrix", inputs, 17)
