"""End to end through the CLI: optimize --recover ... --per-tensor-weights, and its report."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.cli import main
from onnxopt.models.zoo import build, sample_inputs


def _model_and_calib(tmp_path):
    src, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    model = build("small_cnn")
    onnx.save(model, src)
    samples = [sample_inputs(model, seed=100 + i) for i in range(12)]
    np.savez(calib, **{k: np.stack([s[k] for s in samples]) for k in samples[0]})
    return model, src, calib


def test_optimize_with_recovery_and_per_tensor_weights(tmp_path, capsys):
    model, src, calib = _model_and_calib(tmp_path)
    dst, rep = tmp_path / "q.onnx", tmp_path / "r.json"
    code = main(["optimize", str(src), "-o", str(dst), "--calib", str(calib), "--quantize", "static",
                 "--int8-min-conv-macs", "0", "--recover", "cle,bias,fit", "--per-tensor-weights",
                 "--budget", "cosine:0.9", "--report", str(rep)])
    assert code == 0, capsys.readouterr().err
    out = onnx.load(dst)
    onnx.checker.check_model(out, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    weight_scales = [inits[n.input[1]] for n in out.graph.node if n.op_type == "DequantizeLinear"
                     and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    assert weight_scales and all(s.size == 1 for s in weight_scales)  # per tensor
    producers = {o: n for n in out.graph.node for o in n.output}
    for layer in (n for n in out.graph.node if n.op_type in ("Conv", "Gemm")):
        x_dq, w_dq, b_dq = (producers[i] for i in layer.input[:3])  # bias scale = input scale x weight scale
        assert inits[b_dq.input[1]].shape == () and np.isclose(inits[b_dq.input[1]],
                                                               inits[x_dq.input[1]] * inits[w_dq.input[1]])
    report = json.loads(rep.read_text())
    steps = {s["step"]: s for s in report["recovery"]["steps"]}
    assert {"cle", "fit", "bias"} <= set(steps)
    assert steps["fit"]["layers"] >= 3 and steps["bias"]["layers"] >= 3
    layers = report["recovery"]["layers"]
    assert {e["step"] for e in layers} == {"cle", "fit", "bias"}
    assert all(e["after"] <= e["before"] for e in layers if e["step"] == "fit")
    passes = [p["name"] for p in report["passes"]]
    assert passes.index("EqualizeCrossLayer") < passes.index("QuantizeStatic") < passes.index("CorrectBias")


def test_recover_none_runs_no_step(tmp_path, capsys):
    _, src, calib = _model_and_calib(tmp_path)
    rep = tmp_path / "r.json"
    assert main(["optimize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", str(calib), "--quantize", "static",
                 "--int8-min-conv-macs", "0", "--recover", "none", "--budget", "cosine:0.9",
                 "--report", str(rep)]) == 0, capsys.readouterr().err
    report = json.loads(rep.read_text())
    assert "recovery" not in report
    assert not {"CorrectBias", "FitQuantizedWeights", "EqualizeCrossLayer"} & {p["name"] for p in report["passes"]}


def test_bad_recover_list_is_a_user_error(tmp_path, capsys):
    _, src, calib = _model_and_calib(tmp_path)
    code = main(["optimize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", str(calib), "--recover", "bias,cl"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--recover bias,cl" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q.onnx").exists()
