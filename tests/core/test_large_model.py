"""Models over 2 GB, on a small model: the large-model thresholds are lowered so that an MLP of a few MB takes the
same path a 2.5 GB one does (weights left in their file, read through memory maps, copied file to file, never
serialized whole; onnxruntime and onnx.checker get files). bench/large_model.py measures the real size."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import model_io, weights
from onnxopt.cli import main
from onnxopt.ir import Model
from onnxopt.tensor_files import external_source
from onnxopt.verify import compare_arrays

DIM, LAYERS = 256, 8
WEIGHT_BYTES = DIM * DIM * 4
THRESHOLD = 1 << 20  # the MLP holds 2 MiB of weights: large


@pytest.fixture(autouse=True)
def _small_thresholds(monkeypatch):
    monkeypatch.setattr(model_io, "EXTERNAL_THRESHOLD", THRESHOLD)
    monkeypatch.setattr(model_io, "ALIGN_ABOVE", 128 << 10)  # 256 KiB weights start on aligned offsets
    monkeypatch.setattr(weights, "SPILL_MIN", 16 << 10)  # the 64 KiB int8 weights leave memory on export


def mlp(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(LAYERS):
        w = rng.standard_normal((DIM, DIM)).astype(np.float32) * np.float32(np.sqrt(2 / DIM))
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(DIM).astype(np.float32) * 0.01, f"b{i}")]
        y = "y" if i == LAYERS - 1 else f"h{i}"
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"],
                  [f"a{i}"]), helper.make_node("Relu", [f"a{i}"], [y])]
        x = y
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, DIM])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, DIM])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def saved_mlp(folder, opset: int = 17):
    src = folder / "in"
    src.mkdir()
    path = src / "big.onnx"
    onnx.save_model(mlp(opset), str(path), save_as_external_data=True, location="big.onnx.data")
    return path


def ort_run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def locations(path) -> set[str]:
    m = onnx.load_model(str(path), load_external_data=False)
    return {e.value for t in model_io.all_tensors(m) for e in t.external_data if e.key == "location"}


def test_load_leaves_weights_in_their_file(tmp_path):
    path = saved_mlp(tmp_path)
    m = model_io.load_model(path)
    inits = {t.name: t for t in m.graph.initializer}
    src = external_source(inits["w0"])
    assert src is not None and src[0] == str((path.parent / "big.onnx.data").resolve()) and src[2] == WEIGHT_BYTES
    assert not inits["w0"].HasField("raw_data")
    assert external_source(inits["b0"]) is None and inits["b0"].HasField("raw_data")  # small: read in
    assert model_io.is_large(m)
    assert abs(model_io.model_size(m) - LAYERS * (WEIGHT_BYTES + DIM * 4)) < 4096  # never serialized for it


def test_save_copies_file_to_file_and_leaves_the_source_alone(tmp_path):
    path = saved_mlp(tmp_path)
    m = model_io.load_model(path)
    out = model_io.save_model(m, tmp_path / "copy.onnx")
    assert locations(out) == {"copy.onnx.data"}  # relative, never the absolute path of the source
    for t in onnx.load_model(str(out), load_external_data=False).graph.initializer:
        info = {e.key: int(e.value) for e in t.external_data if e.key in ("offset", "length")}
        if info.get("length", 0) >= model_io.ALIGN_ABOVE:
            assert info["offset"] % model_io.ALIGNMENT == 0, t.name
    reloaded = onnx.load_model(str(out))
    original = mlp()
    for a, b in zip(original.graph.initializer, reloaded.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    assert external_source(next(t for t in m.graph.initializer if t.name == "w0")) is not None  # m unchanged


def test_model_reads_weights_through_read_only_maps(tmp_path):
    model = Model.from_onnx(model_io.load_model(saved_mlp(tmp_path)))
    assert model.large
    w = next(t for t in model.graph.tensors().values() if t.name == "w0")
    values = w.values
    assert isinstance(values, weights.FileArray) and not values.flags.writeable
    np.testing.assert_array_equal(values, numpy_helper.to_array(mlp().graph.initializer[0]))
    with pytest.raises(ValueError):
        values[0, 0] = 1.0  # a pass writing into a weight fails loudly instead of being lost
    model.release_weights()
    assert isinstance(w._values, weights.FileValues)
    proto = model.to_onnx()
    exported = next(t for t in proto.graph.initializer if t.name == "w0")
    assert not exported.HasField("raw_data") and external_source(exported) is not None


@pytest.fixture
def spies(monkeypatch):
    """What onnxruntime and onnx.checker were given: the byte size of every serialized model handed to a session,
    and every in-memory model the checker saw (none of them may be large)."""
    seen = {"session_bytes": [], "checked_large": []}
    real_session, real_check = ort.InferenceSession, onnx.checker.check_model

    class Session(real_session):
        def __init__(self, model, *args, **kwargs):
            seen["session_bytes"].append(len(model) if isinstance(model, bytes) else 0)
            super().__init__(model, *args, **kwargs)

    def check(model, *args, **kwargs):
        if isinstance(model, onnx.ModelProto) and model_io.is_large(model):
            seen["checked_large"].append(model.graph.name)
        return real_check(model, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(onnx.checker, "check_model", check)
    return seen


@pytest.mark.parametrize("mode,opset", [("none", 17), ("dynamic", 17), ("none", 11)])
def test_optimize_end_to_end(tmp_path, spies, mode, opset):
    path = saved_mlp(tmp_path, opset)
    out, report_path = tmp_path / "out.onnx", tmp_path / "report.json"
    rc = main(["optimize", str(path), "-o", str(out), "--quantize", mode, "--report", str(report_path)])
    assert rc == 0
    assert (tmp_path / "out.onnx.data").is_file() and locations(out) == {"out.onnx.data"}
    assert out.stat().st_size < WEIGHT_BYTES  # the weights are in the data file, not in the model
    assert max(spies["session_bytes"]) < WEIGHT_BYTES, "a whole model was serialized for onnxruntime"
    assert spies["checked_large"] == [], "a large model was checked in memory"
    onnx.checker.check_model(str(out), full_check=True)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, DIM)).astype(np.float32)}
    ref, got = ort_run(path, feeds), ort_run(out, feeds)
    diff = compare_arrays("y", ref, got, rtol=1e-4, atol=1e-5)
    assert diff.ok if mode == "none" else diff.cosine > 0.99, diff
    report = json.loads(report_path.read_text())
    assert report["verify"]["ok"] is True and report["verify"]["outputs"][0]["name"] == "y"
    assert report["bytes_before"] >= LAYERS * WEIGHT_BYTES
    assert report["file_bytes_after"] == out.stat().st_size + (tmp_path / "out.onnx.data").stat().st_size
    if mode == "dynamic":
        assert report["bytes_after"] < report["bytes_before"] / 3
        assert "MatMulInteger" in {n.op_type for n in onnx.load_model(str(out), load_external_data=False).graph.node}
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".onnxopt-")], "temporary folder left behind"


def test_output_never_replaces_the_data_file_weights_are_read_from(tmp_path, capsys):
    path = tmp_path / "m.onnx"  # its weights in out.onnx.data: `-o out.onnx` would replace that file
    onnx.save_model(mlp(), str(path), save_as_external_data=True, location="out.onnx.data")
    before = (tmp_path / "out.onnx.data").read_bytes()
    assert main(["optimize", str(path), "-o", str(tmp_path / "out.onnx"), "--quantize", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input model's weights are read from" in err[0]
    assert (tmp_path / "out.onnx.data").read_bytes() == before and not (tmp_path / "out.onnx").exists()
