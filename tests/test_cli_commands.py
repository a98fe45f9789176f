"""What the README promises of the command line and no other test checks: exit 1 with nothing written when the
outputs move past the budget, exit 3 naming the pass on an internal error, and the check, targets, fetch and zoo
commands."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_cli import conv_bn_model, run_cli

from onnxopt.model_io import save_model
from onnxopt.models import fetch as fetch_mod

TARGETS = ("arm", "generic", "tensorrt", "x86-avx2", "x86-vnni")


@pytest.fixture
def model_and_calib(tmp_path):
    model = save_model(conv_bn_model(), tmp_path / "in.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 1, 3, 8, 8)).astype(np.float32))
    return model, tmp_path / "c.npz"


def quantize_args(model, calib, out, *extra):
    # static and no small-convolution rule: int8 whatever the host, and no timing decides anything
    return ["optimize", model, "-o", out, "--calib", calib, "--quantize", "static", "--int8-min-conv-macs", "0",
            *extra]


def test_outputs_past_the_budget_exit_1_and_nothing_is_written(model_and_calib, tmp_path, capsys):
    """Refused (exit 1, nothing written) only when nothing can save the budget: a plan given with --plan that misses
    it. The default plan instead backs regions off to float until the budget holds, and says so in one line."""
    model, calib = model_and_calib
    out, report, plan = tmp_path / "q.onnx", tmp_path / "r.json", tmp_path / "p.json"
    # within the budget: an int8 model, and its plan
    code, _, err = run_cli(quantize_args(model, calib, out, "--report", report, "--save-plan", plan), capsys)
    assert code == 0, err
    assert "QuantizeLinear" in [n.op_type for n in onnx.load(str(out)).graph.node]
    cos = json.loads(report.read_text())["verify"]["outputs"][0]["cosine"]
    assert 0.99 <= cos < 1.0
    out.unlink()
    report.unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = run_cli(quantize_args(model, calib, out, "--plan", plan, "--min-cosine", "1.0", "--report",
                                              report), capsys)
    assert code == 1, err
    assert "moved beyond the budget (" in err and "cosine >= 1" in err and "nothing was written" in err
    assert f"the report is in {report}" in err
    # no model, no temporary file; the report, which says why and that nothing was written
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, report.name])
    refused = json.loads(report.read_text())
    assert refused["written"] is False and refused["verify"]["ok"] is False and "nothing was written" in refused[
        "refused"]
    report.unlink()
    # the default plan under the same budget: every region back to float, written, said in one line
    code, stdout, err = run_cli(quantize_args(model, calib, out, "--min-cosine", "1.0"), capsys)
    assert code == 0, err
    assert "QuantizeLinear" not in [n.op_type for n in onnx.load(str(out)).graph.node]
    assert [ln for ln in stdout.splitlines() if ln.startswith("plan: 0 of")]
    out.unlink()
    code, stdout, err = run_cli(quantize_args(model, calib, out, "--plan", plan, "--min-cosine", "1.0",
                                              "--allow-mismatch"), capsys)
    assert code == 0 and "OUTPUTS MOVED (allowed)" in stdout and out.exists(), err


def test_internal_error_exits_3_naming_the_pass(monkeypatch, model_and_calib, tmp_path, capsys):
    from onnxopt.passes.fold_batchnorm import FoldBatchNorm

    def broken(self, model, ctx):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(FoldBatchNorm, "run", broken)
    model, _ = model_and_calib
    out = tmp_path / "o.onnx"
    code, _, err = run_cli(["optimize", model, "-o", out, "--quantize", "none"], capsys)
    assert code == 3
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnxopt: internal error:"), err
    assert "FoldBatchNorm" in lines[0] and "simulated bug" in lines[0]
    assert not out.exists()


def test_check_lints_against_the_named_target(model_and_calib, tmp_path, capsys):
    model, calib = model_and_calib
    q = tmp_path / "q.onnx"
    assert run_cli(quantize_args(model, calib, q), capsys)[0] == 0  # generic QDQ: u8 activations, zero point != 0
    code, out, _ = run_cli(["check", q, "--target", "generic"], capsys)
    assert code == 0 and out.strip().endswith("0 violation(s) of target generic")
    code, out, _ = run_cli(["check", q, "--target", "tensorrt"], capsys)
    lines = out.strip().splitlines()
    assert code == 1 and lines[-1].endswith(f"{len(lines) - 1} violation(s) of target tensorrt") and len(lines) > 1
    assert any(ln.startswith("trt-zero-point:") for ln in lines[:-1])
    code, _, err = run_cli(["check", q, "--target", "fpga"], capsys)
    assert code == 2 and "unknown target 'fpga'" in err


def test_targets_lists_every_target_with_its_description(capsys):
    code, out, _ = run_cli(["targets"], capsys)
    assert code == 0
    rows = {ln.split(None, 1)[0]: ln.split(None, 1)[1] for ln in out.strip().splitlines()}
    assert set(TARGETS) <= set(rows)
    assert all(rows[t].strip() for t in TARGETS)
    assert "(alias x86)" in rows["x86-vnni"]


def test_fetch_prints_the_cached_path_without_the_network(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ONNXOPT_CACHE", str(tmp_path))
    pin = fetch_mod.Pin("fake-wheel==1.0", "pkg/model.onnx", "")
    path = fetch_mod._cache_path(pin.wheel, pin.member)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"model bytes")
    monkeypatch.setitem(fetch_mod.PINS, "fake", dataclasses.replace(pin, sha256=fetch_mod._sha256(path)))

    def no_network(*args, **kwargs):
        raise AssertionError("pip was called for a cached file")

    monkeypatch.setattr(subprocess, "run", no_network)
    code, out, err = run_cli(["fetch", "fake"], capsys)
    assert code == 0 and out.strip() == str(path), err


def test_fetch_errors_are_one_line_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ONNXOPT_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(["fetch", "nope"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "unknown model 'nope'" in err
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: no net"))
    code, _, err = run_cli(["fetch", "ppocr_cls"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no net" in err
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


@pytest.mark.realmodel
def test_fetch_real_model(capsys):
    code, out, err = run_cli(["fetch", "silero_vad"], capsys)
    assert code == 0, err
    assert fetch_mod._sha256(fetch_mod.Path(out.strip())) == fetch_mod.PINS["silero_vad"].sha256


def test_zoo_writes_a_valid_model_and_calibration_samples(tmp_path, capsys):
    model, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    code, out, err = run_cli(["zoo", "small_cnn", "-o", model, "--calib-out", calib, "--samples", "3"], capsys)
    assert code == 0, err
    assert out.split() == [str(model), str(calib)]
    proto = onnx.load(str(model))
    onnx.checker.check_model(proto, full_check=True)
    data = dict(np.load(calib))
    assert set(data) == {i.name for i in proto.graph.input}
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for k, v in data.items():
        assert v.shape[0] == 3 and not np.array_equal(v[0], v[1])  # three different samples, sample axis first
        (logits,) = sess.run(None, {k: v[0]})
        assert np.isfinite(logits).all()
    code, _, err = run_cli(["zoo", "nope", "-o", tmp_path / "n.onnx"], capsys)
    assert code == 2 and "unknown zoo model 'nope'" in err and "small_cnn" in err
    assert not (tmp_path / "n.onnx").exists()
