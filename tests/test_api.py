"""``onnxopt.optimize``: the same bytes as ``onnxopt optimize`` for the same data and settings, whichever way the
data come (a CalibrationDataReader, feed dicts, a mapping, a ModelProto input); typed options equal to the CLI's;
errors before any work; a refused run still writes its report."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from onnxruntime.quantization import CalibrationDataReader

import onnxopt
from onnxopt import cli, pipeline
from onnxopt.errors import UserError, VerificationError
from onnxopt.options import OptimizeOptions, QuantizationOptions, options_from_args
from onnxopt.plan import Plan
from onnxopt.verify import run_model

SAMPLES = 10  # 10 or more: two are held back for fidelity, so the holdout path is compared too
# static and no small-convolution rule: int8 whatever the host, and no timing decides anything
SETTINGS = {"target": "x86-avx2", "quantize": "static", "int8_min_conv_macs": 0}
CLI_SETTINGS = ["--target", "x86-avx2", "--quantize", "static", "--int8-min-conv-macs", "0"]


class NpzReader(CalibrationDataReader):
    """An onnxruntime calibration reader over an .npz of stacked samples; counts how often it is read."""

    def __init__(self, path):
        with np.load(path) as z:
            self.feeds = [{k: z[k][i] for k in z.files} for i in range(z[z.files[0]].shape[0])]
        self.calls = 0

    def get_next(self):
        self.calls += 1
        return self.feeds[self.calls - 1] if self.calls <= len(self.feeds) else None


def _feeds(path):
    with np.load(path) as z:
        return [{k: z[k][i] for k in z.files} for i in range(z[z.files[0]].shape[0])]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """small_cnn from the zoo with its calibration samples, and what the CLI makes of them."""
    d = tmp_path_factory.mktemp("api")
    model, calib, out, report = d / "m.onnx", d / "c.npz", d / "cli.onnx", d / "cli.json"
    assert cli.main(["zoo", "small_cnn", "-o", str(model), "--calib-out", str(calib), "--samples", str(SAMPLES)]) == 0
    code = cli.main(["optimize", str(model), "-o", str(out), "--calib", str(calib), "--report", str(report),
                     *CLI_SETTINGS])
    assert code == 0
    return {"dir": d, "model": model, "calib": calib, "bytes": out.read_bytes(),
            "report": json.loads(report.read_text())}


def test_reader_gives_the_cli_bytes_report_and_plan(zoo, tmp_path):
    reader = NpzReader(zoo["calib"])
    result = onnxopt.optimize(zoo["model"], calibration=reader, **SETTINGS)
    saved = result.save(tmp_path / "api.onnx")
    assert saved.read_bytes() == zoo["bytes"]
    assert reader.calls == SAMPLES + 1  # read once, to its end
    onnx.checker.check_model(result.model, full_check=True)
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["QuantizeLinear"] and ops["DequantizeLinear"], ops  # the bytes compared are an int8 model
    cli_report = zoo["report"]
    for key in ("target", "nodes_before", "nodes_after", "ops_after", "bytes_after", "lossy"):
        assert result.report[key] == cli_report[key], key
    assert result.report["quantization"]["calibration"]["held_back"] == 2
    assert result.report["quantization"]["calibration"]["held_back"] == cli_report["quantization"]["calibration"][
        "held_back"]
    assert result.report["verify"]["ok"] is True and result.report["verify"]["budget"] == cli_report["verify"][
        "budget"]
    assert isinstance(result.plan, Plan)
    assert result.plan.summary() == cli_report["plan"]["summary"]
    assert result.plan == Plan.from_dict(cli_report["plan"])
    # differential: the saved model runs and stays close to the float model on a sample it was not calibrated on
    feed = {k: v + np.float32(0.05) for k, v in _feeds(zoo["calib"])[0].items()}
    ref = run_model(onnx.load(str(zoo["model"])), feed, "onnxruntime")
    got = run_model(onnx.load(str(saved)), feed, "onnxruntime")
    for name, r in ref.items():
        cos = float(r.ravel() @ got[name].ravel() / (np.linalg.norm(r) * np.linalg.norm(got[name])))
        assert cos > 0.98, (name, cos)


@pytest.mark.parametrize("kind", ["generator", "list", "mapping"])
def test_feed_dicts_give_the_same_bytes(zoo, kind):
    feeds = _feeds(zoo["calib"])
    data = {"generator": lambda: (f for f in feeds), "list": lambda: feeds,
            "mapping": lambda: dict(np.load(zoo["calib"]))}[kind]()
    result = onnxopt.optimize(str(zoo["model"]), calibration=data, **SETTINGS)
    assert result.model.SerializeToString() == zoo["bytes"]


def test_model_proto_is_not_modified_and_output_is_written_as_the_cli_writes(zoo, tmp_path):
    proto = onnx.load(str(zoo["model"]))
    before = proto.SerializeToString(deterministic=True)
    out = tmp_path / "o.onnx"
    result = onnxopt.optimize(proto, calibration=str(zoo["calib"]), output=out, **SETTINGS)
    assert proto.SerializeToString(deterministic=True) == before
    assert out.read_bytes() == zoo["bytes"]
    assert result.report["written"] is True and result.report["file_bytes_after"] == len(zoo["bytes"])
    assert result.report["output"] == str(out) and "input" not in result.report


def test_unknown_keyword_names_it_and_the_accepted_ones(zoo):
    with pytest.raises(TypeError, match=r"unknown option 'quantise' \(did you mean 'quantize'\?\); accepted: .*"
                                        r"min_cosine.*weights"):
        onnxopt.optimize(zoo["model"], quantise="static")


@pytest.mark.parametrize("bad,flag", [
    ({"weights": "int5"}, "--weights int5"), ({"recover": "fast"}, "--recover fast"), ({"prune": 1.5}, "--prune 1.5"),
    ({"budget": "cos:0.9"}, "--budget cos:0.9"), ({"quantize": "int8"}, "--quantize"),
    ({"calib_method": "kl"}, "--calib-method"), ({"min_cosine": "high"}, "--min-cosine"),
    ({"calib_samples": 0}, "--calib-samples 0"), ({"target": ""}, "--target"),
])
def test_bad_value_is_one_line_before_any_work(monkeypatch, tmp_path, bad, flag):
    def no_work(*a, **k):
        raise AssertionError("optimize_model ran")

    monkeypatch.setattr(pipeline, "optimize_model", no_work)
    with pytest.raises(UserError) as e:  # the model does not exist: the options are checked first
        onnxopt.optimize(tmp_path / "missing.onnx", **bad)
    assert str(e.value).startswith(flag) and "\n" not in str(e.value)


def test_cli_arguments_build_the_options_the_api_builds(tmp_path):
    argv = ["optimize", "m.onnx", "-o", "o.onnx", "--target", "arm", "--opset", "17", "--calib", "c.npz",
            "--calib-samples", "8", "--calib-method", "percentile", "--quantize", "static", "--exclude-nodes", "a",
            "b", "--exclude-ops", "Softmax", "--weights", "int4:block=32", "--recover", "bias,fit",
            "--per-tensor-weights", "--precision-formats", "int8,a16w8,float", "--plan-executor", "thread",
            "--save-plan", "p.json", "--prune", "0.3", "--prune-criterion", "l2", "--prune-exclude", "c",
            "--prune-scope", "global", "--prune-round-to", "8", "--prune-min-keep", "0.5", "--prune-reconstruct",
            "bias", "--sparsity", "0.2", "--int8-min-conv-macs", "0", "--budget", "top1:0.99", "--budget",
            "cosine:0.98", "--min-cosine", "0.98", "--rtol", "1e-2", "--atol", "1e-3", "--allow-mismatch",
            "--no-verify", "--fp16", "--keep-initializer-inputs", "--inputs", "v.npz", "--debug"]
    from_cli = options_from_args(cli.build_parser().parse_args(argv))
    from_api = OptimizeOptions.build(
        target="arm", min_opset=17, calibration="c.npz", calib_samples=8, calib_method="percentile",
        quantization=QuantizationOptions(mode="static", exclude_nodes=["a", "b"], exclude_ops=["Softmax"],
                                         weights="int4:block=32"),
        recover=["bias", "fit"], per_tensor_weights=True, precision_formats="int8,a16w8,float",
        plan_executor="thread", save_plan="p.json", prune=0.3, prune_criterion="l2", prune_exclude=["c"],
        prune_scope="global", prune_round_to=8, prune_min_keep=0.5, prune_reconstruct="bias", sparsity=0.2,
        int8_min_conv_macs=0, budget=["top1:0.99", "cosine:0.98"], min_cosine=0.98, rtol=1e-2, atol=1e-3,
        allow_mismatch=True, verify=False, fp16=True, keep_initializer_inputs=True, inputs="v.npz", debug=True)
    assert from_cli == from_api
    assert from_cli.pass_options() == from_api.pass_options()
    assert from_cli.pass_options()["recover"] == "bias,fit" and from_cli.pass_options()["prune"] == 0.3
    # no flags: the API's defaults, but for the worker pool the console entry point may spawn
    bare = options_from_args(cli.build_parser().parse_args(["optimize", "m.onnx", "-o", "o.onnx"]))
    assert bare == OptimizeOptions.build(plan_executor="process")
    assert bare.pass_options() == {"keep_initializer_inputs": False, "calib_method": "minmax", "quantize": "auto",
                                   "plan_executor": "process", "prune_criterion": "l1"}


def test_refused_run_writes_its_report(zoo, tmp_path, capsys):
    """Under an impossible budget, with the plan forced to int8, nothing is written but the reports: they say why
    and that nothing was written; the library raises with the same report."""
    plan = onnxopt.optimize(zoo["model"], calibration=str(zoo["calib"]), **SETTINGS).plan
    assert any(c.format == "int8" for c in plan.choices.values())
    plan_file = tmp_path / "p.json"
    plan.save(plan_file)
    out, report, html = tmp_path / "q.onnx", tmp_path / "r.json", tmp_path / "r.html"
    code = cli.main(["optimize", str(zoo["model"]), "-o", str(out), "--calib", str(zoo["calib"]), "--plan",
                     str(plan_file), "--min-cosine", "1.0", "--report", str(report), "--report-html", str(html),
                     *CLI_SETTINGS])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and not out.exists()
    assert "nothing was written" in err and f"the report is in {report} and {html}" in err
    refused = json.loads(report.read_text())
    assert refused["written"] is False and refused["verify"]["ok"] is False
    assert refused["refused"].startswith("the optimized model's outputs moved beyond the budget (")
    assert refused["output"] == str(out) and "plan" in refused
    assert "<html" in html.read_text().lower()
    with pytest.raises(VerificationError) as e:
        onnxopt.optimize(zoo["model"], calibration=str(zoo["calib"]), plan=plan, min_cosine=1.0, output=out,
                         **SETTINGS)
    assert e.value.report["written"] is False and not out.exists()
    assert e.value.report["verify"] == refused["verify"]


@pytest.mark.parametrize("target", ["x86-avx2", "arm"])
def test_a_reader_straight_into_the_pipeline(zoo, target):
    """Without the API's spooling a reader is read once and nothing is held back; the targets must not call bool() on
    it (onnxruntime's CalibrationDataReader.__len__ raises NotImplementedError)."""
    reader = NpzReader(zoo["calib"])
    opts = OptimizeOptions.build(target=target, calibration=reader, quantize="static", int8_min_conv_macs=0,
                                 verify=False)
    out, report = pipeline.optimize_model(onnx.load(str(zoo["model"])), opts)
    onnx.checker.check_model(out, full_check=True)
    assert report["quantization"]["calibration"]["held_back"] == 0 and reader.calls == SAMPLES + 1
    assert "QuantizeLinear" in {n.op_type for n in out.graph.node}
