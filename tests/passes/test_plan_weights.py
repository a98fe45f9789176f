"""PlanWeights: ``--weights ternary`` through the planner. On the zoo small_cnn with one deliberately sensitive layer
the budget sends that layer back and keeps the others ternary; a saved plan, edited, is applied exactly; the default
budget no longer refuses ternary; without calibration data ternary goes everywhere, unmeasured, and one warning says
so. Differential (onnxruntime, float against the written model) and onnx.checker full check throughout."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper as nh

from onnxopt.budget import Budget
from onnxopt.ir import Model
from onnxopt.models.zoo import build, sample_inputs
from onnxopt.pass_manager import PassContext
from onnxopt.pass_state import WeightsReport
from onnxopt.passes.plan_weights import PlanWeights, weight_ladder
from onnxopt.passes.quantize_weights import QuantizeWeights
from onnxopt.passes.upgrade_opset import UpgradeOpset
from onnxopt.verify import compare_arrays, ort_session

SENSITIVE = "Conv_1"


def sensitive_cnn() -> onnx.ModelProto:
    """small_cnn where the first block's last channel is dead (its BatchNorm bias sends it below 0 before the Relu)
    and Conv_1 reads that channel with weights of 400: float ignores them, while ternary (threshold 0.7 x mean|W|)
    keeps only them and w8's per-channel scale rounds every other weight of Conv_1 to 0. Only Conv_1 is sensitive:
    in the plain small_cnn it stays ternary under the same budget (``test_plain_small_cnn_stays_ternary``)."""
    m = build("small_cnn")
    for init in m.graph.initializer:
        w = nh.to_array(init).copy()
        if init.name == "bn.bias_0":
            w[-1] = -1e4
        elif init.name == "conv.weight_1":
            w[:, -1] = 400.0
        else:
            continue
        init.CopyFrom(nh.from_array(w, init.name))
    return m


def feeds(proto, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    return [sample_inputs(proto, seed=seed + i) for i in range(n)]


def plan_and_write(proto, budget: str, **options):
    model = Model.from_onnx(proto)
    ctx = PassContext(options={"plan_executor": "inline", "budget": Budget.parse([budget], 0.99),
                               "weights": "ternary", **options}, calibration=feeds(proto, 8, 0))
    ctx.holdout = feeds(proto, 4, 100)
    UpgradeOpset(25).run(model, ctx)
    PlanWeights("ternary").run(model, ctx)
    QuantizeWeights().run(model, ctx)
    out = model.to_onnx()
    onnx.checker.check_model(out, full_check=True)
    return ctx.plan, out, ctx


def cosine(a, b, samples) -> float:
    sa, sb = ort_session(a, optimize=False), ort_session(b, optimize=False)
    ref = np.concatenate([sa.run(None, f)[0] for f in samples])
    got = np.concatenate([sb.run(None, f)[0] for f in samples])
    return compare_arrays("logits", ref, got).cosine


def test_ladder():
    assert [weight_ladder(f) for f in ("ternary", "int4:block=32", "w8", "float")] == ["w8", "w8", "float", None]


def test_the_sensitive_layer_goes_back_the_others_stay_ternary_and_the_budget_holds():
    proto = sensitive_cnn()
    plan, out, ctx = plan_and_write(proto, "cosine:0.8")
    formats = plan.formats()
    assert formats == {"Conv_0": "ternary", SENSITIVE: "float", "fc": "ternary"}
    assert "backed off to keep the budget" in plan.choices[SENSITIVE].reason
    assert plan.choices[SENSITIVE].quantized_alone > 1 > plan.choices["fc"].quantized_alone
    assert plan.summary().startswith("plan: 2 of 3 weighted layers ternary; went back: Conv_1 (float")
    assert any(s.chosen and s.ok for s in plan.steps) and not plan.steps[0].ok  # all-ternary missed it
    # the writer applied exactly the plan: Conv_1 reads its float initializer, the others an int2 decoder
    layers = {r["node"]: r["format"] for r in ctx.state(WeightsReport).layers}
    assert layers == {"Conv_0": "ternary", "fc": "ternary"}
    conv1 = next(n for n in out.graph.node if n.name == SENSITIVE)
    assert conv1.input[1] == "conv.weight_1"
    # differential, measured independently of the planner on the held-back samples
    cos = cosine(proto, out, feeds(proto, 4, 100))
    assert cos >= 0.8
    all_ternary = QuantizeWeights()
    m = Model.from_onnx(proto)
    UpgradeOpset(25).run(m, PassContext())
    all_ternary.run(m, PassContext(options={"weights": "ternary"}))
    assert cosine(proto, m.to_onnx(), feeds(proto, 4, 100)) < 0.8  # ternary everywhere would have missed it


def test_plain_small_cnn_stays_ternary():
    plan, _, _ = plan_and_write(build("small_cnn"), "cosine:0.8")
    assert set(plan.formats().values()) == {"ternary"}


def test_without_calibration_ternary_everywhere_and_one_warning(caplog):
    proto = build("small_cnn")
    model = Model.from_onnx(proto)
    ctx = PassContext(options={"weights": "ternary"})
    UpgradeOpset(25).run(model, ctx)
    with caplog.at_level(logging.WARNING, logger="onnxopt.passes.plan_weights"):
        PlanWeights("ternary").run(model, ctx)
    assert set(ctx.plan.formats().values()) == {"ternary"} and not ctx.plan.steps
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "without calibration data" in warned[0] and "--calib" in warned[0]
    assert "not measured" in ctx.plan.summary()


# ---------------------------------------------------------------------------------------------------- CLI


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "onnxopt.cli", "optimize", "m.onnx", "--weights", "ternary",
                           "--calib", "c.npz", "--plan-executor", "inline", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("planweights")
    proto = sensitive_cnn()
    onnx.save(proto, d / "m.onnx")
    onnx.save(build("small_cnn"), d / "plain.onnx")
    np.savez(d / "c.npz", input=np.stack([f["input"] for f in feeds(proto, 12, 0)]))
    return d


def weight_formats(report_path) -> dict[str, str]:
    return {r["node"]: r["format"] for r in json.loads(report_path.read_text())["weights"]["layers"]}


def test_cli_plan_round_trip_with_an_edited_weight_format(files):
    r = run_cli("-o", "q.onnx", "--budget", "cosine:0.8", "--save-plan", "p.json", "--report", "r.json", cwd=files)
    assert r.returncode == 0, r.stderr
    summary = [ln for ln in r.stdout.splitlines() if ln.startswith("plan:")]
    assert len(summary) == 1 and "2 of 3 weighted layers ternary" in summary[0] and SENSITIVE in summary[0]
    assert weight_formats(files / "r.json") == {"Conv_0": "ternary", "fc": "ternary"}
    plan = json.loads((files / "p.json").read_text())
    assert plan["mode"] == "weights" and plan["weights"] == "ternary"
    for item in plan["regions"]:
        if item["id"] == "fc":
            item["format"] = "int4:block=16"
    (files / "edited.json").write_text(json.dumps(plan))
    r = run_cli("-o", "e.onnx", "--budget", "cosine:0.8", "--plan", "edited.json", "--report", "e.json", cwd=files)
    assert r.returncode == 0, r.stderr
    assert weight_formats(files / "e.json") == {"Conv_0": "ternary", "fc": "int4:block=16"}
    out = onnx.load(files / "e.onnx")
    onnx.checker.check_model(out, full_check=True)
    conv1 = next(n for n in out.graph.node if n.name == SENSITIVE)
    floats = {i.name for i in out.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert conv1.input[1] in floats  # its float weight (BatchNorm folded into it), as planned
    for item in plan["regions"]:
        item["format"] = "int8"  # an activation format: not a weight format
    (files / "bad.json").write_text(json.dumps(plan))
    r = run_cli("-o", "b.onnx", "--plan", "bad.json", cwd=files)
    assert r.returncode == 2 and "not a weight format" in r.stderr and not (files / "b.onnx").exists()


def test_cli_default_budget_no_longer_refuses_ternary(files):
    r = subprocess.run([sys.executable, "-m", "onnxopt.cli", "optimize", "plain.onnx", "-o", "t.onnx", "--weights",
                        "ternary", "--calib", "c.npz", "--plan-executor", "inline", "--report", "t.json"],
                       cwd=files, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads((files / "t.json").read_text())
    assert report["verify"]["ok"]  # the default budget (cosine 0.99) holds
    formats = weight_formats(files / "t.json")
    assert "ternary" in formats.values() and set(formats.values()) != {"ternary"}
    onnx.checker.check_model(onnx.load(files / "t.onnx"), full_check=True)
