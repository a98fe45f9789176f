"""Golden outputs: record, check with tolerances, clear errors for bad files, the pytest helper."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import golden
from onnxopt.errors import UserError
from onnxopt.testing import assert_matches_golden


def _model(path, scale=0.5, w_value=1.0):
    """x -> MatMul(w) -> y (float) and y -> QuantizeLinear -> q (uint8)."""
    w = numpy_helper.from_array(np.full((4, 3), w_value, np.float32), "w")
    s = numpy_helper.from_array(np.array(scale, np.float32), "s")
    z = numpy_helper.from_array(np.array(128, np.uint8), "z")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("QuantizeLinear", ["y", "s", "z"], ["q"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
                           helper.make_tensor_value_info("q", TensorProto.UINT8, [2, 3])], [w, s, z])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return path


X = {"x": np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)}


@pytest.mark.parametrize("engine", ["reference", "onnxruntime"])
def test_record_then_check_passes_across_engines(tmp_path, engine):
    mp = _model(tmp_path / "m.onnx")
    out = golden.record(mp, X, tmp_path / "g.npz", engine=engine)
    g = golden.load(tmp_path / "g.npz")
    assert g.meta["engine"] == engine and g.meta["model_sha256"] == golden.sha256_file(mp)
    np.testing.assert_array_equal(g.inputs["x"], X["x"])
    assert set(out) == {"y", "q"}
    other = "onnxruntime" if engine == "reference" else "reference"
    rep = golden.check(mp, tmp_path / "g.npz", engine=other)  # recorded on one engine, checked on the other
    assert rep.ok, str(rep)
    assert [r.name for r in rep.rows] == ["y", "q"]
    assert_matches_golden(mp, tmp_path / "g.npz")


def test_float_tolerance_and_int_steps(tmp_path):
    mp = _model(tmp_path / "m.onnx")
    golden.record(mp, X, tmp_path / "g.npz")
    mp2 = _model(tmp_path / "m2.onnx", w_value=1.0 + 3e-3)  # outputs move a little
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = golden.check(mp2, tmp_path / "g.npz")
        assert not rep.ok
        bad = {r.name: r for r in rep.rows}
        assert not bad["y"].ok and bad["y"].max_abs > 0 and bad["y"].cosine > 0.999
        loose = golden.check(mp2, tmp_path / "g.npz", per_output={"y": {"rtol": 1e-2}}, int_steps=1)
        assert loose.ok, str(loose)
        with pytest.raises(AssertionError, match="DOES NOT match"):
            assert_matches_golden(mp2, tmp_path / "g.npz")


def test_float_output_within_steps_of_a_scale():
    want = np.array([1.0, 2.0, 3.0], np.float32)
    got = want + np.float32(0.09)
    assert not golden.compare("o", got, want, rtol=0, atol=1e-6).ok
    assert golden.compare("o", got, want, rtol=0, atol=1e-6, steps=2, scale=0.05).ok
    assert not golden.compare("o", got, want, rtol=0, atol=1e-6, steps=1, scale=0.05).ok


def test_sha_mismatch_warns_unless_strict(tmp_path):
    mp = _model(tmp_path / "m.onnx")
    golden.record(mp, X, tmp_path / "g.npz")
    mp2 = _model(tmp_path / "m2.onnx", scale=0.5000001)  # same outputs, other bytes
    with pytest.warns(UserWarning, match="not the model file"):
        rep = golden.check(mp2, tmp_path / "g.npz")
    assert rep.ok and not rep.sha_match
    with pytest.raises(UserError, match="strict"):
        golden.check(mp2, tmp_path / "g.npz", strict=True)


def test_bad_files_raise_user_error(tmp_path):
    mp = _model(tmp_path / "m.onnx")
    with pytest.raises(UserError, match="does not exist"):
        golden.check(mp, tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="unreadable"):
        golden.check(mp, tmp_path / "junk.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(UserError, match="not an onnxopt golden"):
        golden.check(mp, tmp_path / "foreign.npz")
    golden.record(mp, X, tmp_path / "g.npz")
    with pytest.raises(UserError, match="unknown output"):
        golden.check(mp, tmp_path / "g.npz", per_output={"nope": {"rtol": 1}})
    # a model that lacks a recorded output
    m = onnx.load(mp)
    del m.graph.output[1]
    onnx.save(m, tmp_path / "m3.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match="no output"):
            golden.check(tmp_path / "m3.onnx", tmp_path / "g.npz")
    with pytest.raises(UserError, match="unknown engine"):
        golden.record(mp, X, tmp_path / "g2.npz", engine="tvm")


def test_int4_outputs_round_trip_through_the_file(tmp_path):
    import ml_dtypes

    arr = np.array([-8, -1, 0, 7], np.int8).astype(ml_dtypes.int4)
    packed, name = golden._pack(arr)
    assert name == "int4"
    np.testing.assert_array_equal(golden._unpack(packed, name).astype(np.int8), [-8, -1, 0, 7])
