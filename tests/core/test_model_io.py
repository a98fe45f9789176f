"""Model I/O: external data stays inside the model's folder, saves are atomic, bad files give one clear error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.errors import UserError
from onnxopt.model_io import check_writable, has_external_data, load_model, save_model
from onnxopt.verify import make_feeds, run_model


def tiny_model(n: int = 64) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(n * n, dtype=np.float32).reshape(n, n) / (n * n), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_round_trip_keeps_outputs(tmp_path):
    m = tiny_model()
    path = save_model(m, tmp_path / "m.onnx")
    loaded = load_model(path)
    feeds = make_feeds(m)
    np.testing.assert_array_equal(run_model(m, feeds)["y"], run_model(loaded, feeds)["y"])
    assert not list(tmp_path.glob(".onnxopt-*")), "temporary folder left behind"


def test_external_data_both_ways(tmp_path):
    m = tiny_model()
    save_model(m, tmp_path / "m.onnx", external_data=True)
    assert (tmp_path / "m.onnx.data").is_file()
    raw = onnx.load_model(str(tmp_path / "m.onnx"), load_external_data=False)
    assert has_external_data(raw)
    loaded = load_model(tmp_path / "m.onnx")
    feeds = make_feeds(m)
    np.testing.assert_array_equal(run_model(m, feeds)["y"], run_model(loaded, feeds)["y"])


def _with_location(tmp_path, location: str) -> str:
    m = tiny_model()
    save_model(m, tmp_path / "m.onnx", external_data=True)
    raw = onnx.load_model(str(tmp_path / "m.onnx"), load_external_data=False)
    for t in raw.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    path = tmp_path / "evil.onnx"
    onnx.save_model(raw, str(path))
    return str(path)


@pytest.mark.parametrize("location,words", [
    ("../secret.bin", "outside the model's folder"),
    ("/etc/passwd", "absolute path"),
    ("sub/../../x.bin", "outside the model's folder"),
    ("missing.bin", "is missing"),
])
def test_external_data_refused(tmp_path, location, words):
    path = _with_location(tmp_path, location)
    before = open(path, "rb").read()
    with pytest.raises(UserError, match=words):
        load_model(path)
    assert open(path, "rb").read() == before


def test_truncated_external_data(tmp_path):
    m = tiny_model()
    save_model(m, tmp_path / "m.onnx", external_data=True)
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(UserError, match="too short"):
        load_model(tmp_path / "m.onnx")


@pytest.mark.parametrize("content,words", [
    (b"", "empty"),
    (b"this is not a model at all, just some text\n" * 10, "not a valid ONNX model"),
])
def test_bad_files(tmp_path, content, words):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(UserError, match=words):
        load_model(path)


def test_truncated_model(tmp_path):
    path = tmp_path / "m.onnx"
    save_model(tiny_model(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a valid ONNX model"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_model(tmp_path / "nope.onnx")


def test_unwritable_output(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        check_writable(tmp_path / "no" / "dir" / "m.onnx")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        save_model(tiny_model(), a_file / "m.onnx")
    with pytest.raises(UserError, match="is a folder"):
        save_model(tiny_model(), tmp_path)


def test_unwritable_output_filesystem():
    # /proc refuses new files even to root, so this holds whoever runs the tests
    with pytest.raises(UserError, match="cannot write"):
        save_model(tiny_model(), "/proc/onnxopt-test.onnx")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", boom)
    with pytest.raises(UserError, match="No space left"):
        save_model(tiny_model(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
