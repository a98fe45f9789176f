"""Layer-input Hessians: im2col rows against onnxruntime's Conv, H against numpy's X^T X, chunking and sampling."""

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxopt.analysis.layer_hessians import ConvGeometry, HessianRequest, conv_geometry, im2col, layer_hessians
from onnxopt.verify import run_model


def conv_model(w, **attrs):
    g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], **attrs)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [2, w.shape[1], 9, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], [nh.from_array(w, "w")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_im2col_rows_times_the_weight_are_the_conv(rng):
    w = rng.standard_normal((5, 3, 3, 2)).astype(np.float32)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    attrs = {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]}
    geom, why = conv_geometry(attrs, w.shape[2:])
    assert why is None and geom == ConvGeometry((3, 2), (2, 1), (1, 0, 2, 1), (1, 2))
    y = run_model(conv_model(w, **attrs), {"x": x})["y"]  # [2, 5, OH, OW]
    rows = im2col(x, geom)
    got = (rows @ w.reshape(5, -1).T).reshape(2, y.shape[2], y.shape[3], 5).transpose(0, 3, 1, 2)
    assert np.allclose(got, y, atol=1e-4)


def test_grouped_and_same_padded_convs_are_refused():
    assert conv_geometry({"group": 2}, (3, 3))[0] is None
    assert "auto_pad" in conv_geometry({"auto_pad": "SAME_UPPER"}, (3, 3))[1]
    assert conv_geometry({}, (3,))[0] is None


def test_matmul_and_conv_hessians_equal_numpy(rng):
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    m = h.make_graph([h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                      h.make_node("Relu", ["c"], ["r"]), h.make_node("Flatten", ["r"], ["f"]),
                      h.make_node("MatMul", ["f", "m"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 5, 5])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 2])],
                     [nh.from_array(w, "w"), nh.from_array(rng.standard_normal((100, 2)).astype(np.float32), "m")])
    proto = h.make_model(m, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    feeds = [{"x": rng.standard_normal((1, 3, 5, 5)).astype(np.float32)} for _ in range(3)]
    geom = ConvGeometry((3, 3), pads=(1, 1, 1, 1))
    reqs = [HessianRequest("conv", "x", 27, geom), HessianRequest("mm", "f", 100), HessianRequest("mm2", "f", 100)]
    got = layer_hessians(proto, feeds, reqs, max_bytes=1)  # one request per chunk: the data is read per chunk
    xs = np.concatenate([im2col(f["x"], geom) for f in feeds]).astype(np.float64)
    assert np.allclose(got["conv"], xs.T @ xs)
    fs = np.concatenate([_flat(proto, f) for f in feeds])
    assert np.allclose(got["mm"], fs.T @ fs, rtol=1e-5, atol=1e-4)
    assert got["mm"] is got["mm2"]  # the same input: one H


def _flat(proto, feed):
    from onnxopt.analysis.layer_hessians import _with_outputs

    return run_model(_with_outputs(proto, ["f"]), feed)["f"].astype(np.float64)


def test_rows_per_sample_caps_large_maps(rng):
    g = h.make_graph([h.make_node("MatMul", ["x", "m"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [500, 4])], [h.make_tensor_value_info("y", T.FLOAT, None)],
                     [nh.from_array(np.ones((4, 2), np.float32), "m")])
    proto = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    x = np.ones((500, 4), np.float32)
    got = layer_hessians(proto, [{"x": x}], [HessianRequest("mm", "x", 4)], rows_per_sample=64)
    assert np.allclose(got["mm"], np.full((4, 4), 64.0))
