"""Input checks made before any work (issue 9, part 5): too-new opsets, NaN/Inf data, bad output paths,
out-of-range numbers and inputs too large to generate. Each ends in one line, exit 2, the input untouched
and nothing (no temp file either) left in the output folder."""

from __future__ import annotations

import argparse

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_cli import assert_one_line_error, conv_bn_model, run_cli

from onnxopt.errors import UserError
from onnxopt.input_checks import MAX_FEEDS_BYTES, MAX_INPUT_BYTES, FeedsTooLarge, check_numeric_options
from onnxopt.model_io import save_model
from onnxopt.verify import make_feeds

NEWEST = onnx.defs.onnx_opset_version()


@pytest.fixture
def model_path(tmp_path):
    return save_model(conv_bn_model(), tmp_path / "in.onnx")


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def relu_model(*shapes: list[int]) -> onnx.ModelProto:
    """One Relu per input ``x0, x1...`` of the given static shapes."""
    nodes = [helper.make_node("Relu", [f"x{i}"], [f"y{i}"]) for i in range(len(shapes))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, s)
                                           for i, s in enumerate(shapes)],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, s)
                               for i, s in enumerate(shapes)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# --- a model newer than the installed onnx -----------------------------------------------------------------

def _too_new(kind: str) -> onnx.ModelProto:
    model = conv_bn_model()
    if kind == "opset":
        model.opset_import[0].version = 99
    else:
        model.ir_version = 99
    return model


COMMANDS = {
    "optimize": lambda m, d: ["optimize", m, "-o", d / "out.onnx", "--quantize", "none"],
    "inspect": lambda m, d: ["inspect", m],
    "verify": lambda m, d: ["verify", m, m],
    "check": lambda m, d: ["check", m, "--target", "generic"],
    "golden-record": lambda m, d: ["golden", "record", m, "--inputs", d / "x.npz", "-o", d / "g.npz"],
    "golden-check": lambda m, d: ["golden", "check", m, d / "good.npz"],
}


@pytest.mark.parametrize("kind,words", [("opset", "opset ai.onnx 99 is newer than the installed onnx"),
                                        ("ir", "IR version 99 is newer than the installed onnx")])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_model_newer_than_onnx(tmp_path, capsys, kind, words, command):
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 3, 8, 8), np.float32))
    good = save_model(conv_bn_model(), tmp_path / "good.onnx")
    assert run_cli(["golden", "record", good, "--inputs", tmp_path / "x.npz", "-o", tmp_path / "good.npz"],
                   capsys)[0] == 0
    path = tmp_path / "new.onnx"
    onnx.save(_too_new(kind), str(path))  # save_model would check it too: write the bytes as they are
    before, listing = path.read_bytes(), names(tmp_path)
    code, _, err = run_cli(COMMANDS[command](path, tmp_path), capsys)
    assert_one_line_error(code, err, words)
    newest = str(NEWEST) if kind == "opset" else str(onnx.IR_VERSION)
    assert f"({'ai.onnx ' if kind == 'opset' else ''}{newest})" in err  # names the newest one supported
    assert path.read_bytes() == before and names(tmp_path) == listing


def test_newest_opset_is_accepted(tmp_path, capsys):
    model = conv_bn_model()
    model.opset_import[0].version = NEWEST
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    code, out, err = run_cli(["inspect", path], capsys)
    assert code == 0, err


# --- NaN / Inf in calibration data and in --inputs ---------------------------------------------------------

@pytest.mark.parametrize("bad,dtype,words", [(np.nan, np.float32, "1 NaN and 0 Inf"),
                                             (-np.inf, np.float32, "0 NaN and 1 Inf"),
                                             (1e300, np.float64, "0 NaN and 1 Inf")])  # overflows float32
def test_calibration_with_nonfinite_values(model_path, tmp_path, capsys, bad, dtype, words):
    calib = np.random.default_rng(0).standard_normal((5, 1, 3, 8, 8)).astype(dtype)
    calib[3, 0, 2, 4, 5] = bad
    np.savez(tmp_path / "c.npz", x=calib)
    before = model_path.read_bytes()
    code, _, err = run_cli(["optimize", model_path, "-o", tmp_path / "out.onnx", "--quantize", "static",
                            "--calib", tmp_path / "c.npz"], capsys)
    assert_one_line_error(code, err, words)
    assert "calibration sample 3" in err and "input 'x'" in err and "[0, 2, 4, 5]" in err
    assert model_path.read_bytes() == before and names(tmp_path) == ["c.npz", "in.onnx"]


def test_calibration_folder_with_nan(model_path, tmp_path, capsys):
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(3):
        x = np.ones((1, 3, 8, 8), np.float32)
        if i == 2:
            x[0, 0, 0, 0] = np.nan
        np.savez(folder / f"{i}.npz", x=x)
    code, _, err = run_cli(["optimize", model_path, "-o", tmp_path / "out.onnx", "--quantize", "static",
                            "--calib", folder], capsys)
    assert_one_line_error(code, err, "calibration sample 2")
    assert "NaN" in err and names(tmp_path) == ["calib", "in.onnx"]


INPUT_COMMANDS = {
    "optimize": lambda m, d: ["optimize", m, "-o", d / "out.onnx", "--quantize", "none", "--inputs", d / "x.npz"],
    "verify": lambda m, d: ["verify", m, m, "--inputs", d / "x.npz"],
    "golden-record": lambda m, d: ["golden", "record", m, "--inputs", d / "x.npz", "-o", d / "g.npz"],
}


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("command", sorted(INPUT_COMMANDS))
def test_inputs_with_nonfinite_values(model_path, tmp_path, capsys, command, bad):
    x = np.zeros((1, 3, 8, 8), np.float32)
    x[0, 1, 2, 3] = bad
    np.savez(tmp_path / "x.npz", x=x)
    before = model_path.read_bytes()
    code, _, err = run_cli(INPUT_COMMANDS[command](model_path, tmp_path), capsys)
    assert_one_line_error(code, err, "x.npz: input 'x' holds")
    assert ("1 NaN" if np.isnan(bad) else "1 Inf") in err and "[0, 1, 2, 3]" in err
    assert model_path.read_bytes() == before and names(tmp_path) == ["in.onnx", "x.npz"]


# --- output paths, checked before any work -----------------------------------------------------------------

def _optimize(extra):
    return lambda d: ["optimize", d / "in.onnx", "-o", d / "out.onnx", "--quantize", "none", *extra(d)]


BAD_OUTPUTS = {
    "report-folder-missing": (_optimize(lambda d: ["--report", d / "no" / "r.json"]), "--report", "does not exist"),
    "report-is-a-folder": (_optimize(lambda d: ["--report", d / "sub"]), "--report", "is a folder"),
    "report-is-the-input": (_optimize(lambda d: ["--report", d / "in.onnx"]), "--report", "is also the input model"),
    "report-is-the-model": (_optimize(lambda d: ["--report", d / "out.onnx"]), "--report", "is also the path of -o"),
    "report-is-the-inputs": (_optimize(lambda d: ["--inputs", d / "x.npz", "--report", d / "x.npz"]), "--report",
                             "is also the --inputs file"),
    "output-is-the-input": (lambda d: ["optimize", d / "in.onnx", "-o", d / "in.onnx"], "-o",
                            "is also the input model"),
    "output-folder-missing": (lambda d: ["optimize", d / "in.onnx", "-o", d / "no" / "o.onnx"], "-o",
                              "does not exist"),
    "dump-dir-is-a-file": (_optimize(lambda d: ["--dump-dir", d / "x.npz"]), "--dump-dir", "is a file"),
    "dump-dir-under-a-file": (_optimize(lambda d: ["--dump-dir", d / "x.npz" / "dumps"]), "--dump-dir", "is a file"),
    "golden-folder-missing": (lambda d: ["golden", "record", d / "in.onnx", "--inputs", d / "x.npz", "-o",
                                         d / "no" / "g.npz"], "-o", "does not exist"),
    "golden-is-the-inputs": (lambda d: ["golden", "record", d / "in.onnx", "--inputs", d / "x.npz", "-o",
                                        d / "x.npz"], "-o", "is also the --inputs file"),
    "zoo-folder-missing": (lambda d: ["zoo", "small_cnn", "-o", d / "no" / "m.onnx"], "-o", "does not exist"),
    "zoo-calib-folder-missing": (lambda d: ["zoo", "small_cnn", "-o", d / "m.onnx", "--calib-out",
                                            d / "no" / "c.npz"], "--calib-out", "does not exist"),
    "zoo-calib-is-the-model": (lambda d: ["zoo", "small_cnn", "-o", d / "m.onnx", "--calib-out", d / "m.onnx"],
                               "--calib-out", "is also the path of -o"),
}


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_bad_output_path(model_path, tmp_path, capsys, case):
    argv, flag, words = BAD_OUTPUTS[case]
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 3, 8, 8), np.float32))
    (tmp_path / "sub").mkdir()
    before, listing = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}, names(tmp_path)
    code, _, err = run_cli(argv(tmp_path), capsys)
    assert_one_line_error(code, err, words)
    assert err.split("error: ", 1)[1].startswith(flag + " ")  # names the option at fault
    assert names(tmp_path) == listing and names(tmp_path / "sub") == []  # no model, report, dump or temp file
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


# --- numeric options out of range --------------------------------------------------------------------------

OPT = ["optimize", "{m}", "-o", "{d}/out.onnx", "--quantize", "none"]
BAD_NUMBERS = [
    (OPT, "--sparsity", "-0.2"), (OPT, "--sparsity", "1"), (OPT, "--prune", "1.5"), (OPT, "--prune", "-0.1"),
    (OPT, "--rtol", "-1"), (OPT, "--atol", "nan"), (OPT, "--atol", "inf"), (OPT, "--min-cosine", "1.5"),
    (OPT, "--min-cosine", "-2"), (OPT, "--calib-samples", "0"), (OPT, "--opset", "0"),
    (OPT, "--opset", str(NEWEST + 1)), (OPT, "--prune-round-to", "0"), (OPT, "--prune-min-keep", "0"),
    (OPT, "--prune-min-keep", "1.5"), (OPT, "--int8-min-conv-macs", "-1"),
    (["verify", "{m}", "{m}"], "--rtol", "-0.5"), (["verify", "{m}", "{m}"], "--atol", "-1"),
    (["verify", "{m}", "{m}"], "--seed", "-1"),
    (["golden", "check", "{m}", "{d}/g.npz"], "--rtol", "-1"),
    (["golden", "check", "{m}", "{d}/g.npz"], "--atol", "nan"),
    (["zoo", "small_cnn", "-o", "{d}/z.onnx", "--calib-out", "{d}/c.npz"], "--samples", "0"),
]


@pytest.mark.parametrize("base,flag,value", BAD_NUMBERS, ids=[f"{b[0]}{f}={v}" for b, f, v in BAD_NUMBERS])
def test_numeric_option_out_of_range(model_path, tmp_path, capsys, base, flag, value):
    argv = [a.format(m=model_path, d=tmp_path) for a in base] + [flag, value]
    before = model_path.read_bytes()
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, f"{flag} {value}: must be in")
    assert model_path.read_bytes() == before and names(tmp_path) == ["in.onnx"]


@pytest.mark.parametrize("spec,words", [("y=-1,0", "rtol -1"), ("y=0,-1", "atol -1"), ("y=steps:-2", "steps -2"),
                                        ("y=steps:2@0", "scale 0 must be a finite number > 0"),
                                        ("y=nan,0", "rtol nan")])
def test_tolerance_out_of_range(model_path, tmp_path, capsys, spec, words):
    code, _, err = run_cli(["verify", model_path, model_path, "--tol", spec], capsys)
    assert_one_line_error(code, err, words)
    assert "--tol y" in err


def test_boundary_values_are_accepted():
    check_numeric_options(argparse.Namespace(
        sparsity=0.0, prune=0.0, rtol=0.0, atol=0.0, min_cosine=-1.0, calib_samples=1, opset=NEWEST,
        prune_round_to=1, prune_min_keep=1.0, int8_min_conv_macs=0.0, seed=0, samples=1))
    with pytest.raises(UserError, match=r"--min-cosine 1\.01: must be in \[-1, 1\]"):
        check_numeric_options(argparse.Namespace(min_cosine=1.01))


# --- inputs too large to generate --------------------------------------------------------------------------

HUGE = [1, 3, 10**7, 10**7]


@pytest.mark.parametrize("command", ["optimize", "verify"])
def test_astronomical_static_input(tmp_path, capsys, command):
    path = save_model(relu_model(HUGE), tmp_path / "huge.onnx")
    before = path.read_bytes()
    argv = (["optimize", path, "-o", tmp_path / "out.onnx", "--quantize", "none"] if command == "optimize"
            else ["verify", path, path])
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, f"input 'x0' of static shape {HUGE} would take 1.07 PiB "
                                     f"({4 * 3 * 10**14:,} bytes)")
    assert "pass --inputs x.npz or make the dim dynamic" in err
    assert path.read_bytes() == before and names(tmp_path) == ["huge.onnx"]


def test_generated_feeds_over_the_total_cap():
    per = MAX_INPUT_BYTES // 4  # float32 elements of one input at the per-input cap
    count = MAX_FEEDS_BYTES // MAX_INPUT_BYTES + 1
    with pytest.raises(FeedsTooLarge, match="together, over the 2 GiB limit"):
        make_feeds(relu_model(*[[per]] * count))
    assert make_feeds(relu_model([2, 3]))["x0"].shape == (2, 3)  # small inputs are still generated


def test_require_finite_streams_read_once_data_and_keeps_sample_indices():
    from onnxopt.calibration.data import open_calibration_data, require_finite

    specs = {"x": (np.dtype(np.float32), (2,))}
    samples = [{"x": np.array([i, i], np.float32)} for i in range(6)]
    samples[4]["x"][1] = np.nan
    data = require_finite(open_calibration_data(iter(samples), specs))  # a read-once source: checked as it streams
    seen = []
    with pytest.raises(UserError, match=r"calibration sample 4 \(list_iterator\): input 'x' \(float32\) holds 1 NaN"):
        for feed in data:
            seen.append(int(feed["x"][0]))
    assert seen == [0, 1, 2, 3]
    rest, held = require_finite(open_calibration_data(samples, specs)).split(2)  # indices survive split()
    assert [int(f["x"][0]) for f in held] == [0, 1]
    with pytest.raises(UserError, match="calibration sample 4 "):
        list(rest)
    assert len(list(open_calibration_data(samples, specs))) == 6  # without it the library keeps NaN samples
