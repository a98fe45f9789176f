"""LSTM, GRU and RNN kernels against onnxruntime (optimizations off) on single-node models, the Numba cells
against their numpy twins, and the three silero VAD models run chunk by chunk in the interpreter vs onnxruntime.

Tests marked `realmodel` fetch silero-vad once into the cache; deselect them offline with `-m "not realmodel"`.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnxopt.interp import Interpreter
from onnxopt.interp.ops import rnn

RNG = np.random.default_rng(0)  # replaced in each test by the test's own generator (conftest.py: rng)
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
T, B, I, H = 5, 3, 4, 6


def _model(op: str, feeds: dict, n_out: int, attrs: dict) -> onnx.ModelProto:
    names = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"][: 8 if op == "LSTM" else 6]
    inputs = [n if n in feeds else "" for n in names]
    while inputs and inputs[-1] == "":
        inputs.pop()
    node = helper.make_node(op, inputs, [f"y{i}" for i in range(n_out)], **attrs)
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in feeds.items()]
    outs = [onnx.ValueInfoProto(name=f"y{i}") for i in range(n_out)]
    model = helper.make_model(helper.make_graph([node], "g", ins, outs), opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _feeds(op, direction="forward", layout=0, bias=True, lens=None, init=False, peep=False, dtype=np.float32):
    nd = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    f = {"X": RNG.normal(size=(B, T, I) if layout else (T, B, I)),
         "W": RNG.normal(0, 0.5, (nd, g * H, I)), "R": RNG.normal(0, 0.5, (nd, g * H, H))}
    if bias:
        f["B"] = RNG.normal(0, 0.3, (nd, 2 * g * H))
    if lens is not None:
        f["sequence_lens"] = np.array(lens, np.int32)
    if init:
        shape = (B, nd, H) if layout else (nd, B, H)
        f["initial_h"] = RNG.normal(0, 0.5, shape)
        if op == "LSTM":
            f["initial_c"] = RNG.normal(0, 0.5, shape)
    if peep:
        f["P"] = RNG.normal(0, 0.5, (nd, 3 * H))
    return {k: v if v.dtype.kind == "i" else v.astype(dtype) for k, v in f.items()}


CASES = [
    ("LSTM", dict(), dict()),
    ("LSTM", dict(direction="reverse", init=True), dict(direction="reverse")),
    ("LSTM", dict(direction="bidirectional", init=True, peep=True), dict(direction="bidirectional")),
    ("LSTM", dict(lens=[5, 2, 3], init=True), dict()),
    ("LSTM", dict(direction="reverse", lens=[1, 5, 3]), dict(direction="reverse")),
    ("LSTM", dict(direction="bidirectional", lens=[4, 5, 2], peep=True), dict(direction="bidirectional")),
    ("LSTM", dict(peep=True), dict(clip=0.7)),
    ("LSTM", dict(init=True), dict(input_forget=1)),
    ("LSTM", dict(bias=False), dict(activations=["HardSigmoid", "Relu", "Softsign"], activation_alpha=[0.3],
                                    activation_beta=[0.4])),
    ("GRU", dict(), dict()),
    ("GRU", dict(init=True), dict(linear_before_reset=1)),
    ("GRU", dict(direction="bidirectional", init=True), dict(direction="bidirectional", linear_before_reset=1)),
    ("GRU", dict(direction="reverse", lens=[2, 5, 4]), dict(direction="reverse")),
    ("GRU", dict(lens=[3, 1, 5], init=True), dict(clip=0.5)),
    ("GRU", dict(), dict(activations=["LeakyRelu", "ScaledTanh"], activation_alpha=[0.2, 0.8],
                         activation_beta=[1.5])),
    ("RNN", dict(), dict()),
    ("RNN", dict(direction="bidirectional", init=True, lens=[5, 3, 1]), dict(direction="bidirectional")),
    ("RNN", dict(direction="reverse"), dict(direction="reverse", activations=["Relu"], clip=1.0)),
    ("RNN", dict(bias=False), dict(activations=["Affine"], activation_alpha=[0.5], activation_beta=[0.1])),
]


@pytest.mark.parametrize(("op", "fkw", "attrs"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_against_onnxruntime(op, fkw, attrs):
    feeds = _feeds(op, **fkw)
    n_out = 3 if op == "LSTM" else 2
    model = _model(op, feeds, n_out, dict(hidden_size=H, **attrs))
    want = _ort(model, feeds)
    got = Interpreter(model).run(feeds)
    for k, w in enumerate(want):
        g = got[f"y{k}"]
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"{op} y{k}")


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_layout_1_is_layout_0_transposed(op):
    """onnxruntime's CPU kernels reject layout=1: check it against layout 0 on the same data instead."""
    feeds = _feeds(op, direction="bidirectional", init=True, lens=[5, 2, 4])
    n_out = 3 if op == "LSTM" else 2
    ref = Interpreter(_model(op, feeds, n_out, dict(hidden_size=H, direction="bidirectional"))).run(feeds)
    swapped = {k: (np.swapaxes(v, 0, 1) if k in ("X", "initial_h", "initial_c") else v) for k, v in feeds.items()}
    got = Interpreter(_model(op, swapped, n_out, dict(hidden_size=H, direction="bidirectional", layout=1))).run(swapped)
    np.testing.assert_array_equal(got["y0"], np.transpose(ref["y0"], (2, 0, 1, 3)))
    for k in range(1, n_out):
        np.testing.assert_array_equal(got[f"y{k}"], np.swapaxes(ref[f"y{k}"], 0, 1))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_float64_computes_in_float64(op):
    """onnxruntime has no double recurrent kernels: float64 must agree with float32 and keep its dtype."""
    f64 = _feeds(op, init=True, dtype=np.float64)
    f32 = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in f64.items()}
    n_out = 3 if op == "LSTM" else 2
    got = Interpreter(_model(op, f64, n_out, dict(hidden_size=H))).run(f64)
    ref = Interpreter(_model(op, f32, n_out, dict(hidden_size=H))).run(f32)
    for k in range(n_out):
        assert got[f"y{k}"].dtype == np.float64
        np.testing.assert_allclose(got[f"y{k}"], ref[f"y{k}"], rtol=1e-4, atol=1e-5)


def test_steps_past_sequence_length_are_zero():
    feeds = _feeds("LSTM", lens=[2, 5, 1])
    y = Interpreter(_model("LSTM", feeds, 1, dict(hidden_size=H))).run(feeds)["y0"]
    assert not y[2:, 0, 0].any() and not y[1:, 0, 2].any() and y[4, 0, 1].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("peep", "clip", "input_forget"), [(False, None, 0), (True, 0.6, 0), (True, None, 1)])
def test_lstm_cell_jit_matches_numpy(dtype, peep, clip, input_forget):
    gates = RNG.normal(0, 2, (3, 4 * H)).astype(dtype)
    c = RNG.normal(0, 1, (3, H)).astype(dtype)
    p = RNG.normal(0, 1, 3 * H).astype(dtype)
    h_np, c_np = rnn.lstm_cell_np(gates, c, p if peep else None, clip, input_forget)
    h_j, c_j = rnn.lstm_cell_jit(gates, c, p, peep, -1.0 if clip is None else clip, bool(input_forget))
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(h_j, h_np, rtol=tol, atol=tol)
    np.testing.assert_allclose(c_j, c_np, rtol=tol, atol=tol)
    assert h_j.dtype == dtype


@pytest.mark.parametrize("clip", [None, 0.8])
def test_gru_update_jit_matches_numpy(clip):
    z, hh, h = (RNG.normal(0, 2, (3, H)).astype(np.float32) for _ in range(3))
    want = rnn.gru_update_np(z, hh, h, clip)
    got = rnn.gru_update_jit(z, hh, h, -1.0 if clip is None else clip)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_unknown_activation_is_an_error():
    feeds = _feeds("RNN")
    model = _model("RNN", feeds, 1, dict(hidden_size=H))
    with pytest.raises(ValueError, match="activation"):
        rnn.RNN(*(feeds[k] for k in ("X", "W", "R", "B")), activations=["Swish"])
    assert Interpreter(model).run(feeds)["y0"].shape == (T, 1, B, H)


@pytest.mark.realmodel
@pytest.mark.parametrize("name", ["silero_vad", "silero_vad_16k_op15", "silero_vad_op18_ifless"])
def test_silero_vad_stream_matches_onnxruntime(name):
    """Twelve chunks of a tone in noise (context prepended, state carried), interpreter vs onnxruntime."""
    from onnxopt.models.fetch import fetch

    path = fetch(name)
    interp = Interpreter(path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    t = np.arange(576 * 12)
    audio = (0.3 * np.sin(t / 7.0) * (t > 2000) + rng.normal(0, 0.02, t.size)).astype(np.float32)
    s_i = s_o = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)
    for k in range(12):
        x = audio[k * 576:(k + 1) * 576][None]
        got = interp.run({"input": x, "state": s_i, "sr": sr})
        want = sess.run(["output", "stateN"], {"input": x, "state": s_o, "sr": sr})
        np.testing.assert_allclose(got["output"], want[0], rtol=1e-4, atol=2e-5, err_msg=f"{name} chunk {k}")
        np.testing.assert_allclose(got["stateN"], want[1], rtol=1e-4, atol=2e-5, err_msg=f"{name} chunk {k}")
        s_i, s_o = got["stateN"], want[1]
    assert np.abs(s_o).max() > 0.01  # the state really moved
