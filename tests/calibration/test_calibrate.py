"""calibrate() / calibrate_many() on small models built with onnx.helper, against numpy."""

import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.calibration import calibrate, calibrate_many, calibration_tensors, open_calibration_data
from onnxopt.errors import UserError

_WEIGHTS_RNG = np.random.default_rng(0)  # the MLP's fixed weights, drawn once at import
W = _WEIGHTS_RNG.standard_normal((8, 16)).astype(np.float32)
B = _WEIGHTS_RNG.standard_normal(16).astype(np.float32)


def _mlp():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["act"]),
        helper.make_node("Shape", ["act"], ["shp"]),
        helper.make_node("Sigmoid", ["act"], ["y"]),
    ]
    g = helper.make_graph(nodes, "mlp", [x], [y], [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    return m


def _feeds(n=10, seed=1):
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal((3, 8)) * (1 + i)).astype(np.float32)} for i in range(n)]


def _numpy_tensors(feeds):
    out = {"x": [], "mm": [], "pre": [], "act": [], "y": []}
    for f in feeds:
        x = f["x"]
        mm = x @ W
        pre = mm + B
        act = np.maximum(pre, 0)
        for k, v in zip(out, [x, mm, pre, act, 1 / (1 + np.exp(-act))], strict=True):
            out[k].append(v)
    return {k: np.concatenate([a.ravel() for a in v]) for k, v in out.items()}


def test_default_tensors_are_float_non_constant():
    assert calibration_tensors(_mlp()) == ["x", "mm", "pre", "act", "y"]


@pytest.mark.parametrize("engine", ["onnxruntime", "reference"])
def test_minmax_matches_numpy(engine):
    feeds = _feeds()
    ranges = calibrate(_mlp(), feeds, engine=engine, progress=False)
    ref = _numpy_tensors(feeds)
    assert set(ranges) == set(ref)
    for name, values in ref.items():
        r = ranges[name]
        assert r.min == pytest.approx(float(values.min()), rel=1e-5, abs=1e-6), name
        assert r.max == pytest.approx(float(values.max()), rel=1e-5, abs=1e-6), name
        assert r.mean_abs == pytest.approx(float(np.abs(values).mean()), rel=1e-4), name
        assert r.count == values.size and r.updates == len(feeds)


def test_percentile_and_entropy_and_mse_against_numpy():
    feeds = _feeds(30)
    ref = _numpy_tensors(feeds)
    many = calibrate_many(_mlp(), feeds, ["pre", "act"], ["minmax", "percentile", "entropy", "mse"],
                          engine="onnxruntime", options={"percentile": {"percentile": 99.0}}, progress=False)
    for name in ("pre", "act"):
        absx = np.abs(ref[name].astype(np.float64))
        absmax = absx.max()
        assert many["minmax"][name].threshold == pytest.approx(absmax, rel=1e-6)
        p = many["percentile"][name]
        width_upper = 2 * absmax / 2048  # the histogram range is at most twice the max |x|
        assert abs(p.threshold - np.percentile(absx, 99.0, method="inverted_cdf")) <= width_upper
        for m in ("entropy", "mse"):
            t = many[m][name].threshold
            assert 0 < t <= absmax * (1 + 1e-6)
            assert many[m][name].min == many["minmax"][name].min  # same pass, same statistics
    # a single method through calibrate() gives the same as calibrate_many
    single = calibrate(_mlp(), feeds, ["pre"], "percentile", engine="onnxruntime", percentile=99.0, progress=False)
    assert single["pre"].as_dict() == many["percentile"]["pre"].as_dict()


def test_deterministic_and_reader_once():
    a = calibrate(_mlp(), _feeds(), method="entropy", engine="onnxruntime", progress=False)
    b = calibrate(_mlp(), _feeds(), method="entropy", engine="onnxruntime", progress=False)
    assert {k: v.as_dict() for k, v in a.items()} == {k: v.as_dict() for k, v in b.items()}


def test_channel_axis_and_initializer_requested():
    feeds = _feeds()
    r = calibrate(_mlp(), feeds, ["act", "W"], engine="onnxruntime", channel_axis=1, progress=False)
    acts = np.concatenate([np.maximum(f["x"] @ W + B, 0) for f in feeds])
    np.testing.assert_allclose(r["act"].channel_max, acts.max(axis=0), rtol=1e-5, atol=1e-6)
    assert r["W"].updates == 1 and r["W"].max == float(W.max())
    np.testing.assert_array_equal(r["W"].channel_max, W.max(axis=0))


def test_user_errors():
    with pytest.raises(UserError, match="'nope' is not in the model"):
        calibrate(_mlp(), _feeds(), ["nope"], progress=False)
    with pytest.raises(UserError, match="unknown calibration method"):
        calibrate(_mlp(), _feeds(), method="kl", progress=False)
    with pytest.raises(UserError, match="percentile"):
        calibrate(_mlp(), _feeds(), method="percentile", percentile=101, progress=False)
    with pytest.raises(UserError, match="input 'x' is missing"):
        calibrate(_mlp(), [{"z": np.zeros((1, 8), np.float32)}], progress=False)
    with pytest.raises(UserError, match="empty"):
        calibrate(_mlp(), [], progress=False)
    with pytest.raises(UserError, match="engine"):
        calibrate(_mlp(), _feeds(), engine="tvm", progress=False)


def _if_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])

    def branch(name, op):
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [4])
        nodes = [
            helper.make_node(op, ["x"], [f"{name}_t"]),
            helper.make_node("Mul", [f"{name}_t", "two"], [f"{name}_out"]),
        ]
        return helper.make_graph(nodes, name, [], [out])

    nodes = [
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32))),
        helper.make_node("If", ["c"], ["y"], then_branch=branch("then", "Relu"), else_branch=branch("else", "Neg")),
    ]
    m = helper.make_model(helper.make_graph(nodes, "if", [x, cond], [y]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    return m


def test_auto_uses_interpreter_for_subgraph_tensors():
    m = _if_model()
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal(4).astype(np.float32), "c": np.array(i % 2 == 0)} for i in range(6)]
    r = calibrate(m, feeds, ["then_t", "else_out", "y"], engine="auto", progress=False)
    then_t = np.concatenate([np.maximum(f["x"], 0) for f in feeds[0::2]])
    else_out = np.concatenate([-2 * f["x"] for f in feeds[1::2]])
    assert r["then_t"].max == pytest.approx(float(then_t.max())) and r["then_t"].updates == 3
    assert r["else_out"].min == pytest.approx(float(else_out.min())) and r["else_out"].updates == 3
    assert r["y"].updates == 6
    with pytest.raises(UserError, match="inside an If/Loop/Scan subgraph"):
        calibrate(m, feeds, ["then_t"], engine="onnxruntime", progress=False)
    assert "then_t" in calibration_tensors(m) and "two" not in calibration_tensors(m)


def _big_model():
    # [64, 256] @ [256, 4096] -> three 1 MB-float intermediates per sample
    w = np.random.default_rng(3).standard_normal((256, 4096)).astype(np.float32) * 0.05
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 4096])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"]), helper.make_node("Relu", ["mm"], ["r"]),
             helper.make_node("Tanh", ["r"], ["y"])]
    g = helper.make_graph(nodes, "big", [x], [y], [numpy_helper.from_array(w, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_memory_does_not_grow_with_samples():
    m = _big_model()

    def stream(n):
        rng = np.random.default_rng(4)
        for _ in range(n):
            yield {"x": rng.standard_normal((64, 256)).astype(np.float32)}

    peaks = {}
    calibrate_many(m, stream(2), methods=["minmax", "entropy"], engine="onnxruntime", progress=False)  # warm up
    tracemalloc.start()
    try:
        for n in (20, 200):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            data = open_calibration_data(stream(n), {"x": (np.dtype(np.float32), (64, 256))})
            res = calibrate_many(m, data, methods=["minmax", "entropy"], engine="onnxruntime", progress=False)
            peaks[n] = tracemalloc.get_traced_memory()[1] - base
            assert res["minmax"]["y"].updates == n
    finally:
        tracemalloc.stop()
    assert peaks[20] > 4 * 64 * 4096  # it did see the big intermediates
    assert peaks[200] <= 1.2 * peaks[20], peaks


# -- graph-side reductions (ort_engine.GRAPH_REDUCTIONS) against fetching whole tensors ----------------------


def _both_paths(monkeypatch, model, feeds, tensors=None, **kw):
    import importlib

    from onnxopt.calibration import ort_engine

    calibrate_module = importlib.import_module("onnxopt.calibration.calibrate")
    reduced_names = []
    real = calibrate_module._Folder.reduced

    def spy(self, name, *args):
        reduced_names.append(name)
        return real(self, name, *args)

    monkeypatch.setattr(calibrate_module._Folder, "reduced", spy)
    out = {}
    for flag in (True, False):
        monkeypatch.setattr(ort_engine, "GRAPH_REDUCTIONS", flag)
        out[flag] = calibrate_many(model, feeds, tensors, ["minmax"], engine="onnxruntime", progress=False, **kw)
    return out[True]["minmax"], out[False]["minmax"], set(reduced_names)


def _assert_same(reduced, whole):
    assert list(reduced) == list(whole)
    for name in whole:
        a, b = reduced[name].as_dict(), whole[name].as_dict()
        ma, mb = a.pop("mean_abs"), b.pop("mean_abs")
        assert a == b, name  # min, max, counts, per-channel extremes: exact
        assert ma == pytest.approx(mb, rel=2e-6, abs=1e-30), name


@pytest.mark.parametrize("name", ["small_cnn", "mobilenetv2", "bert", "dynamic", "opset11_constants"])
def test_graph_reductions_match_whole_tensors_on_zoo(monkeypatch, name):
    from onnxopt.calibration.calibrate import _Inventory
    from onnxopt.models import zoo

    m = zoo.build(name)
    feeds = [zoo.sample_inputs(m, seed=i) for i in range(2)]
    inv = _Inventory(m)
    main = [t for t in inv.default_tensors() if t in set(inv.main)]
    reduced, whole, used = _both_paths(monkeypatch, m, feeds, main, channel_axis=1)
    _assert_same(reduced, whole)
    assert len(used) >= len([t for t in main if t not in inv.feeds]) // 2  # the reduced path did run


def _mixed_model():
    """Float rank 3 (dynamic batch), float64 rank 1, float16 rank 3, a float scalar, an empty tensor, int64."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 3])
    i64 = numpy_helper.from_array
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Cast", ["a"], ["d"], to=TensorProto.DOUBLE),
        helper.make_node("ReduceMax", ["d"], ["d1"], axes=[0, 2], keepdims=0),
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("ReduceMean", ["x"], ["s"], keepdims=0),
        helper.make_node("Slice", ["x", "zero", "zero", "one"], ["e"]),
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Tanh", ["x"], ["y"]),
    ]
    g = helper.make_graph(nodes, "mixed", [x], [y], [i64(np.array([0], np.int64), "zero"),
                                                    i64(np.array([1], np.int64), "one")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("averaging", [None, 0.3])
def test_graph_reductions_dtypes_ranks_empty_and_nonfinite(monkeypatch, averaging):
    from onnxopt.calibration import ort_engine
    from onnxopt.calibration.calibrate import _Inventory

    m = _mixed_model()
    rng = np.random.default_rng(5)
    feeds = [{"x": (rng.standard_normal((1 + i % 3, 4, 3)) * (i + 1)).astype(np.float32)} for i in range(6)]
    feeds[2]["x"][0, 1, 2] = np.nan  # the reduced path re-runs such samples whole
    feeds[4]["x"][1, 0, 0] = np.inf
    tensors = ["a", "d", "d1", "h", "s", "e", "shp", "y"]
    reduced, whole, used = _both_paths(monkeypatch, m, feeds, tensors, channel_axis={"a": 1, "h": 2, "d1": 0},
                                       options={"minmax": {"averaging_constant": averaging}})
    _assert_same(reduced, whole)
    assert used == {"a", "d", "h", "s", "e", "y"}  # d1 is rank 1 per-channel, shp is int64: fetched whole
    assert whole["e"].updates == 6 and whole["e"].count == 0
    assert whole["a"].nonfinite == 2 and whole["s"].nonfinite == 2 and whole["h"].nonfinite == 2
    assert whole["h"].channel_min.shape == (3,)
    # the augmented model is a valid model
    inv = _Inventory(m)
    r, f = ort_engine.plan(tensors, inv.types, inv.value_infos, 1, False)
    aug, _ = ort_engine.augment(m, inv.value_infos, inv.types, f, r, 1)
    onnx.checker.check_model(aug, full_check=True)


def test_graph_reductions_opset18_axes_inputs(monkeypatch):
    m = _mlp()
    m.opset_import[0].version = 18
    onnx.checker.check_model(m, full_check=True)
    reduced, whole, used = _both_paths(monkeypatch, m, _feeds(), channel_axis=1)
    _assert_same(reduced, whole)
    assert used == {"mm", "pre", "act", "y"}
    assert reduced["act"].channel_max.shape == (16,)
