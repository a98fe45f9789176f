"""Inputs files that do not fit the model, and golden files of another model: one line, exit 2, nothing written."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_cli import assert_one_line_error, conv_bn_model, run_cli

from onnxopt.model_io import save_model


def relu_model(name: str, dtype: int = TensorProto.INT64) -> onnx.ModelProto:
    """A model whose only input, ``name``, differs from the conv model's ``x``."""
    graph = helper.make_graph([helper.make_node("Identity", [name], ["y"])], "g",
                              [helper.make_tensor_value_info(name, dtype, [2])],
                              [helper.make_tensor_value_info("y", dtype, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def model_path(tmp_path):
    return save_model(conv_bn_model(), tmp_path / "in.onnx")


BAD_INPUTS = {
    "missing": ({"z": np.zeros((1, 3, 8, 8), np.float32)}, "'z' is not an input"),
    "shape": ({"x": np.zeros((1, 4, 8, 8), np.float32)}, "dimension 1 is 4, expected 3"),
    "rank": ({"x": np.zeros((3, 8, 8), np.float32)}, "expects rank 4"),
    "dtype": ({"x": np.zeros((1, 3, 8, 8), np.int32)}, "expects dtype float32, given int32"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_optimize_inputs_that_do_not_fit(model_path, tmp_path, capsys, case):
    feeds, words = BAD_INPUTS[case]
    np.savez(tmp_path / "x.npz", **feeds)
    before = model_path.read_bytes()
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(["optimize", model_path, "-o", out, "--quantize", "none", "--inputs",
                            tmp_path / "x.npz"], capsys)
    assert_one_line_error(code, err, words)
    assert "--inputs" in err
    assert not out.exists() and model_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "x.npz"]


@pytest.mark.parametrize("case", ["missing", "shape"])
def test_verify_inputs_that_do_not_fit(model_path, tmp_path, capsys, case):
    feeds, words = BAD_INPUTS[case]
    np.savez(tmp_path / "x.npz", **feeds)
    code, _, err = run_cli(["verify", model_path, model_path, "--inputs", tmp_path / "x.npz"], capsys)
    assert_one_line_error(code, err, words)


def test_verify_models_with_different_inputs(model_path, tmp_path, capsys):
    other = save_model(relu_model("ids"), tmp_path / "other.onnx")
    code, _, err = run_cli(["verify", model_path, other], capsys)
    assert_one_line_error(code, err, "does not take the inputs of")
    assert "'ids' is missing" in err


def test_golden_record_into_a_folder(model_path, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 3, 8, 8), np.float32))
    (tmp_path / "g").mkdir()
    code, _, err = run_cli(["golden", "record", model_path, "--inputs", tmp_path / "x.npz", "-o", tmp_path / "g"],
                           capsys)
    assert_one_line_error(code, err, "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g", "in.onnx", "x.npz"]  # no stray temp file


@pytest.mark.parametrize("case", ["missing", "dtype"])
def test_golden_record_inputs_that_do_not_fit(model_path, tmp_path, capsys, case):
    feeds, words = BAD_INPUTS[case]
    np.savez(tmp_path / "x.npz", **feeds)
    out = tmp_path / "g.npz"
    code, _, err = run_cli(["golden", "record", model_path, "--inputs", tmp_path / "x.npz", "-o", out], capsys)
    assert_one_line_error(code, err, words)
    assert not out.exists()


@pytest.mark.parametrize("engine", ["onnxruntime", "reference"])
def test_golden_check_with_the_golden_of_another_model(model_path, tmp_path, capsys, engine):
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 3, 8, 8), np.float32))
    golden = tmp_path / "g.npz"
    assert run_cli(["golden", "record", model_path, "--inputs", tmp_path / "x.npz", "-o", golden], capsys)[0] == 0
    other = save_model(relu_model("ids"), tmp_path / "other.onnx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run_cli(["golden", "check", other, golden, "--engine", engine], capsys)
    assert_one_line_error(code, err, "was recorded from in.onnx, whose inputs do not fit other.onnx")
    assert not [w for w in caught if issubclass(w.category, UserWarning)]  # the sha mismatch is logged once
