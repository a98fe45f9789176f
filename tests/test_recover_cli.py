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


def _rel_error(ref_model, model, feeds) -> float:
    from onnxopt.verify import run_model

    name = ref_model.graph.output[0].name
    ref = np.concatenate([run_model(ref_model, f)[name] for f in feeds])
    got = np.concatenate([run_model(model, f, optimize=False)[name] for f in feeds])
    return float(np.sum((got - ref) ** 2) / np.sum(ref ** 2))


def test_weight_only_int4_is_fitted_by_default_and_packed(tmp_path, capsys):
    """``--weights int4`` with calibration data: fit and bias run by default (and as ``--recover fit,bias``), before
    the Gemm is packed into MatMulNBits (x86-avx2); ``--recover none`` runs neither and is further from FP32."""
    model, src, calib = _model_and_calib(tmp_path)
    held = [sample_inputs(model, seed=500 + i) for i in range(8)]
    outs = {}
    for label, extra in (("default", []), ("asked", ["--recover", "fit,bias"]), ("none", ["--recover", "none"])):
        dst, rep = tmp_path / f"{label}.onnx", tmp_path / f"{label}.json"
        code = main(["optimize", str(src), "-o", str(dst), "--target", "x86-avx2", "--weights", "int4",
                     "--calib", str(calib), "--report", str(rep), *extra])
        assert code == 0, capsys.readouterr().err
        out = onnx.load(dst)
        onnx.checker.check_model(out, full_check=True)
        assert [n.op_type for n in out.graph.node].count("MatMulNBits") == 1  # the classifier, packed after the fit
        report = json.loads(rep.read_text())
        passes = [p["name"] for p in report["passes"]]
        outs[label] = (out, report, passes)
    for label in ("default", "asked"):
        _, report, passes = outs[label]
        steps = {s["step"]: s for s in report["recovery"]["steps"]}
        assert steps["fit"]["layers"] == 3 and steps["fit"]["detail"]["applied"] is True  # 2 Convs and the Gemm
        assert steps["bias"]["layers"] >= 1
        assert all(e["after"] <= e["before"] for e in report["recovery"]["layers"] if e["step"] == "fit")
        assert (passes.index("KeepFloatReference") < passes.index("QuantizeWeights") <
                passes.index("FitQuantizedWeights") < passes.index("CorrectBias") < passes.index("PackMatMulNBits"))
    _, report, passes = outs["none"]
    assert "recovery" not in report and "FitQuantizedWeights" not in passes and "PackMatMulNBits" not in passes
    assert _rel_error(model, outs["default"][0], held) < _rel_error(model, outs["none"][0], held)


def test_weight_only_without_data_gets_no_recovery(tmp_path, capsys):
    _, src, _ = _model_and_calib(tmp_path)
    rep = tmp_path / "r.json"
    assert main(["optimize", str(src), "-o", str(tmp_path / "q.onnx"), "--weights", "int4", "--budget", "cosine:0.9",
                 "--report", str(rep)]) == 0, \
        capsys.readouterr().err
    passes = {p["name"] for p in json.loads(rep.read_text())["passes"]}
    assert "QuantizeWeights" in passes and not {"KeepFloatReference", "FitQuantizedWeights", "CorrectBias"} & passes


def test_smooth_before_dynamic_int8(tmp_path, capsys):
    """--recover smooth on the zoo BERT: smoothing Muls before the MatMulIntegers, the step and its per-activation
    errors in the report, and the model still within the budget of the float one."""
    model = build("bert")
    src, calib, dst, rep = (tmp_path / f for f in ("m.onnx", "c.npz", "q.onnx", "r.json"))
    onnx.save(model, src)
    samples = [sample_inputs(model, seed=100 + i) for i in range(8)]
    np.savez(calib, **{k: np.stack([s[k] for s in samples]) for k in samples[0]})
    code = main(["optimize", str(src), "-o", str(dst), "--calib", str(calib), "--quantize", "dynamic",
                 "--recover", "smooth", "--budget", "cosine:0.99", "--report", str(rep)])
    assert code == 0, capsys.readouterr().err
    out = onnx.load(dst)
    onnx.checker.check_model(out, full_check=True)
    report = json.loads(rep.read_text())
    steps = {s["step"]: s for s in report["recovery"]["steps"]}
    assert steps["smooth"]["layers"] >= 1
    smoothed = [e for e in report["recovery"]["layers"] if e["step"] == "smooth" and "alpha" in e["note"]]
    assert len(smoothed) == steps["smooth"]["layers"] and all(e["after"] < e["before"] for e in smoothed)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("MatMulInteger") >= 6 and sum(n.name.endswith("_smooth") for n in out.graph.node) >= 1
    passes = [p["name"] for p in report["passes"]]
    assert passes.index("SmoothActivations") < passes.index("QuantizeDynamic")
