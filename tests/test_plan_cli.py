"""`onnxopt optimize` with a precision plan, end to end: the default budget backs off the one sensitive layer and
says so in one line; --save-plan / --plan round trip; a hand-edited plan that misses the budget is refused (exit 1,
nothing written); --budget and --metric errors are one line (exit 2); a --metric module from the current folder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper as nh

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "passes"))
from test_plan_precision import SENSITIVE, samples, sensitive_mlp  # noqa: E402


def run_cli(*args, cwd):
    """``--int8-min-conv-macs 0``: int8 always pays, so the cost model does not keep this tiny MLP all-float (its
    16-wide MatMuls save less than their Q/DQ costs: ``test_plan_precision`` covers that choice)."""
    return subprocess.run([sys.executable, "-m", "onnxopt.cli", "optimize", "m.onnx", *args, "--int8-min-conv-macs",
                           "0"], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("plancli")
    onnx.save(sensitive_mlp(), d / "m.onnx")
    feeds = samples(12, 3)  # 12 samples: 2 held back for the budget
    np.savez(d / "c.npz", x=np.stack([f["x"] for f in feeds]))
    return d


def weight_dqs(path) -> set[str]:
    m = onnx.load(path)
    return {n.input[0].removesuffix("_quantized") for n in m.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0].startswith("w")}


def test_default_budget_backs_off_the_sensitive_layer_and_saves_the_plan(files):
    # the default executor: a local process pool runs the sensitivity analysis
    r = run_cli("-o", "q.onnx", "--calib", "c.npz", "--quantize", "static", "--save-plan", "p.json", "--report",
                "r.json", cwd=files)
    assert r.returncode == 0, r.stderr
    summary = [ln for ln in r.stdout.splitlines() if ln.startswith("plan:")]
    assert len(summary) == 1 and f"mm{SENSITIVE} (float: backed off to keep the budget" in summary[0]
    assert weight_dqs(files / "q.onnx") == {f"w{i}" for i in range(4) if i != SENSITIVE}
    plan = json.loads((files / "p.json").read_text())
    assert {r["id"]: r["format"] for r in plan["regions"]}[f"mm{SENSITIVE}"] == "float"
    report = json.loads((files / "r.json").read_text())
    assert report["verify"]["ok"] and report["plan"]["source"] == "search" and report["plan"]["steps"]


def test_edited_plan_applied_exactly_or_refused(files):
    plan = json.loads((files / "p.json").read_text())
    for item in plan["regions"]:
        item["format"] = "float" if item["id"] in ("mm0", f"mm{SENSITIVE}") else "int8"
    (files / "edited.json").write_text(json.dumps(plan))
    r = run_cli("-o", "e.onnx", "--calib", "c.npz", "--quantize", "static", "--plan", "edited.json", cwd=files)
    assert r.returncode == 0, r.stderr
    assert weight_dqs(files / "e.onnx") == {"w1", "w3"}
    for item in plan["regions"]:
        item["format"] = "int8"  # the sensitive layer forced to int8: the budget is missed
    (files / "bad.json").write_text(json.dumps(plan))
    r = run_cli("-o", "b.onnx", "--calib", "c.npz", "--quantize", "static", "--plan", "bad.json", cwd=files)
    assert r.returncode == 1 and not (files / "b.onnx").exists()
    assert "nothing was written" in r.stderr.splitlines()[-1]


def test_budget_and_metric_errors_and_a_user_metric(files):
    r = run_cli("-o", "x.onnx", "--budget", "cos:0.9", cwd=files)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "METRIC:LIMIT" in r.stderr
    r = run_cli("-o", "x.onnx", "--metric", "nomodule_here:f", "--max-drop", "1", cwd=files)
    assert r.returncode == 2 and "cannot load it" in r.stderr
    (files / "mymetric.py").write_text("def score(session):\n    return 0.0\n")  # never drops: int8 everywhere
    r = run_cli("-o", "u.onnx", "--calib", "c.npz", "--quantize", "static", "--metric", "mymetric:score",
                "--max-drop", "0", "--plan-executor", "inline", cwd=files)
    assert r.returncode == 0, r.stderr
    assert weight_dqs(files / "u.onnx") == {f"w{i}" for i in range(4)}
    w = {t.name: nh.to_array(t) for t in onnx.load(files / "u.onnx").graph.initializer}
    assert w["w2_quantized"].dtype == np.int8
