"""--weights in the recipe and the CLI: the opset the format needs, the target's MatMulNBits choice, the errors."""

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from differential import op_types

from onnxopt.cli import main
from onnxopt.errors import UserError
from onnxopt.models.zoo import build, sample_inputs
from onnxopt.passes.plan_weights import PlanWeights
from onnxopt.passes.quantize_weights import QuantizeWeights
from onnxopt.passes.upgrade_opset import UpgradeOpset
from onnxopt.pipeline import OptimizeOptions, optimize_model
from onnxopt.targets import get_target
from onnxopt.targets.recipe_quantize import quantize_steps


@pytest.mark.parametrize("target,fmt,opset,level", [("generic", "int4:block=32", 21, None),
                                                    ("x86-vnni", "ternary", 25, 4), ("arm", "kmeans:16", 21, 4),
                                                    ("x86-avx2", "w8", 13, 4)])
def test_weight_steps(target, fmt, opset, level):
    t = get_target(target)
    steps = quantize_steps(t.scheme, {**t.default_options(), "weights": fmt})
    assert [type(s) for s in steps] == [UpgradeOpset, PlanWeights, QuantizeWeights]
    assert steps[0].opset == max(opset, t.min_opset) and steps[0].required is False
    assert steps[1].matmulnbits == steps[2].matmulnbits == level


def test_int8_keeps_the_int8_recipe_and_static_is_refused():
    scheme = get_target("generic").scheme
    assert [type(s).__name__ for s in quantize_steps(scheme, {"weights": "int8"})] == [
        "PlanPrecision", "QuantizeStatic", "QuantizeDynamic"]
    assert quantize_steps(scheme, {"weights": "int4", "quantize": "none"}) == []
    with pytest.raises(UserError, match="weight-only"):
        quantize_steps(scheme, {"weights": "int4", "quantize": "static"})


def test_pipeline_upgrades_to_25_for_ternary_and_reports():
    m = build("small_cnn")
    feeds = [sample_inputs(m, seed=i) for i in range(4)]
    # a budget every-layer ternary meets (0.83 measured), so the planner keeps all three ternary
    out, report = optimize_model(m, OptimizeOptions.build(target="x86-vnni", verify=False, weights="ternary",
                                                          calibration=feeds, budget=["cosine:0.8"]))
    onnx.checker.check_model(out, full_check=True)
    assert next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) == 25
    ops = Counter(op_types(out))
    assert ops["MatMulNBits"] == 1 and ops["DequantizeLinear"] == 2  # the fc; two Convs keep the decoder
    w = report["weights"]
    assert {r["rounding"] for r in w["layers"]} == {"least-squares alpha"} and w["ratio"] < 0.1


def test_cli_int4_bert_writes_a_fifth_of_the_file(tmp_path):
    src, dst, rep, calib = (tmp_path / n for n in ("bert.onnx", "bert.int4.onnx", "r.json", "c.npz"))
    assert main(["zoo", "bert", "-o", str(src), "--calib-out", str(calib), "--samples", "4"]) == 0
    assert main(["optimize", str(src), "-o", str(dst), "--weights", "int4:block=32", "--calib", str(calib),
                 "--report", str(rep)]) == 0
    r = json.loads(rep.read_text())
    assert r["file_bytes_after"] <= 0.2 * r["file_bytes_before"]
    assert r["verify"]["ok"] and r["verify"]["outputs"][0]["cosine"] > 0.99  # embeddings included
    assert {x["format"] for x in r["weights"]["layers"]} == {"int4:block=32"}
    assert np.isfinite(r["weights"]["ratio"])


def test_cli_bad_weights_is_one_line_exit_2(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    assert main(["zoo", "small_cnn", "-o", str(src)]) == 0
    capsys.readouterr()
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--weights", "int4:block=48"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "block size 48" in err
    assert not (tmp_path / "o.onnx").exists()


def test_an_opset_that_cannot_be_reached_is_declined_not_failed(monkeypatch):
    from onnx import version_converter

    from onnxopt.ir import Model
    from onnxopt.pass_manager import PassContext

    def refuse(proto, target):
        raise RuntimeError("No Adapter To Version $25 for Foo")

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    m = build("small_cnn")
    ctx = PassContext(options={"weights": "ternary"})
    model = Model.from_onnx(m)
    assert not UpgradeOpset(25, required=False).run(model, ctx).changed
    assert any("no adapter for Foo" in d.reason for d in ctx.declines)
    assert not QuantizeWeights().run(model, ctx).changed  # and the format is declined per layer, with the reason
    assert sum("needs opset 25" in d.reason for d in ctx.declines) == 3
    with pytest.raises(UserError, match="cannot upgrade"):
        UpgradeOpset(25).run(model, ctx)
