"""End to end through the CLI: optimize --prune, inspect --prunable."""

from __future__ import annotations

import json

import onnx

from onnxopt.analysis.flops import count_costs
from onnxopt.cli import main
from onnxopt.models.zoo import build


def test_optimize_prune_then_inspect(tmp_path, capsys):
    src, dst, rep = tmp_path / "m.onnx", tmp_path / "p.onnx", tmp_path / "r.json"
    onnx.save(build("small_cnn"), src)
    code = main(["optimize", str(src), "-o", str(dst), "--prune", "0.3", "--quantize", "none", "--allow-mismatch",
                 "--report", str(rep)])
    assert code == 0, capsys.readouterr().err
    out = onnx.load(dst)
    onnx.checker.check_model(out, full_check=True)
    removed = 1 - count_costs(out).flops / count_costs(build("small_cnn")).flops
    assert abs(removed - 0.3) <= 0.05, removed
    report = json.loads(rep.read_text())
    assert any(p["name"] == "PruneChannels" and p["changes"] for p in report["passes"])
    assert main(["inspect", str(src), "--prunable"]) == 0
    text = capsys.readouterr().out
    assert "prunable groups: 2" in text and "reaches graph input 'input'" in text


def test_bad_prune_value_is_a_user_error(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(build("small_cnn"), src)
    assert main(["optimize", str(src), "-o", str(tmp_path / "p.onnx"), "--prune", "1.5", "--quantize", "none"]) == 2
    assert "--prune" in capsys.readouterr().err
