"""Each section of the HTML report draws what the report has and says "not in this report" otherwise; the forms
of plan / search / recovery the other steps write are all drawn; names are escaped; the page stays small."""

from __future__ import annotations

import logging
import re

import pytest

import onnxopt.html_report as hr
from onnxopt.html_report import Section, register_section, render_html
from onnxopt.svg_plots import ORANGE, _pareto, histogram, scatter

BASE = {"onnxopt": "0.1.0", "target": "generic", "nodes_before": 10, "nodes_after": 8, "bytes_before": 1000,
        "bytes_after": 400, "passes": [{"name": "FoldConstants", "lossless": True, "runs": 1, "changes": 1,
                                        "seconds": 0.5, "stats": {"folded": 2}}], "lint": []}


def section(page: str, sid: str) -> str:
    return page.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]


def test_absent_sections_say_so_and_present_ones_draw():
    page = render_html(BASE)
    for sid in ("plan", "search", "calibration", "pruning", "recovery", "host"):
        assert "not in this report" in section(page, sid), sid
    assert "FoldConstants" in section(page, "passes") and "<svg" in section(page, "passes")
    assert "no violations" in section(page, "lint")
    summary = section(page, "summary")
    assert "40.0 %" in summary and "<svg" in summary  # model bytes after / before, drawn
    assert "not in this report" in section(page, "other")  # every key above is drawn


def test_plan_list_form_with_sensitivity_bars():
    plan = [{"region": "Conv_1", "nodes": ["Conv_1", "Relu_1"], "format": "float", "reason": "too sensitive",
             "sensitivity": 0.8},
            {"region": "Conv_2", "nodes": ["Conv_2"], "format": "int8", "reason": "int8 by default",
             "sensitivity": 0.2}]
    got = section(render_html({**BASE, "plan": plan}), "plan")
    assert "<td>Conv_1</td>" in got and "Conv_1, Relu_1" in got and "too sensitive" in got
    widths = [float(w) for w in re.findall(r'<rect width="([\d.]+)" height="12" fill="' + ORANGE, got)]
    assert widths == [110.0, 27.5]  # bars scaled to the most sensitive region
    assert 'class="badge float"' in got and 'class="badge int8"' in got


def test_plan_dict_form_and_steps_with_the_chosen_step_inferred():
    regions = [{"id": "A", "nodes": ["Conv_a"], "format": "float", "reason": "backed off", "quantized_alone": 0.9,
                "float_alone": 0.1},
               {"id": "B", "nodes": ["Conv_b"], "format": "int8", "reason": "ok", "quantized_alone": 0.1}]
    steps = [{"index": 0, "label": "start", "raised": [], "usage": 1.4, "ok": False, "size_bytes": 100, "latency": 5.0},
             {"index": 1, "label": "raise A", "raised": ["A=float"], "usage": 0.6, "ok": True, "size_bytes": 140,
              "latency": 7.0},
             {"index": 2, "label": "raise A, B", "raised": ["A=float", "B=float"], "usage": 0.1, "ok": True,
              "size_bytes": 200, "latency": 9.0}]
    page = render_html({**BASE, "plan": {"onnxopt_plan": 1, "mode": "static", "regions": regions, "steps": steps,
                                         "latency_unit": "MAC-equivalents", "summary": "plan: 1 of 2 regions int8"}})
    plan = section(page, "plan")
    assert "<td>A</td>" in plan and "Conv_b" in plan and "plan: 1 of 2 regions int8" in plan
    search = section(page, "search")
    assert search.count("<svg") == 2 and "latency (MAC-equivalents)" in search
    assert search.count('class="chosen"') == 2  # step 1 ("A=float" is the final plan's), ringed in both plots
    rows = dict(re.findall(r"<tr><td>(\d)</td>(.*?)</tr>", search))
    assert sorted(rows) == ["0", "1", "2"] and "inferred" in search
    assert [k for k, row in rows.items() if ">chosen (inferred)<" in row] == ["1"]


def test_search_list_form_marks_the_chosen_point_and_the_pareto_front():
    pts = [{"step": i, "error": e, "latency_ms": lat, "bytes": b, "chosen": i == 1}
           for i, (e, lat, b) in enumerate([(0.9, 1.0, 10), (0.3, 2.0, 20), (0.5, 3.0, 30), (0.1, 4.0, 40)])]
    got = section(render_html({**BASE, "search": pts}), "search")
    assert got.count("<svg") == 2 and got.count('class="chosen"') == 2
    assert _pareto([(1.0, 0.9), (2.0, 0.3), (3.0, 0.5), (4.0, 0.1)]) == [(1.0, 0.9), (2.0, 0.3), (4.0, 0.1)]
    svg = scatter([(p["latency_ms"], p["error"], str(p["step"]), p["chosen"]) for p in pts], "ms", "error", "t")
    assert svg.count(f'fill="{ORANGE}"><title>') == 3  # the dominated point (3 ms, 0.5) is not on the front
    assert "3 on the Pareto front" in svg


@pytest.mark.parametrize("form", ["list", "recovery_report"])
def test_recovery_both_forms(form):
    if form == "list":
        rec = [{"layer": "Conv_7", "step": "fit", "error_before": 0.02, "error_after": 0.005}]
    else:
        rec = {"steps": [{"step": "fit", "seconds": 1.5, "layers": 1, "declined": 0, "mean_error_before": 0.02,
                          "mean_error_after": 0.005}],
               "layers": [{"layer": "Conv_7", "step": "fit", "before": 0.02, "after": 0.005, "inputs": "quantized"}]}
    got = section(render_html({**BASE, "recovery": rec}), "recovery")
    assert "<td>Conv_7</td>" in got and "25.0 %" in got and "<svg" in got
    assert ("<td>quantized</td>" in got) == (form == "recovery_report")


def test_calibration_histograms_and_tensor_table():
    q = {"mode": "static", "calibration": {"method": "entropy", "seconds": 1.0, "held_back": 4},
         "tensors": {"relu_out": {"kind": "activation", "dtype": "uint8", "min": 0.0, "max": 4.0, "scale": 0.0157,
                                  "zero_point": 0, "clipped": 0.0123},
                     "w": {"kind": "weight", "dtype": "int8", "scale_min": 0.01, "scale_max": 0.02, "channels": 8}},
         "histograms": {"relu_out": {"lo": 0.0, "hi": 8.0, "counts": [5, 4, 3, 2, 1, 1, 0, 1], "low": 0.0, "high": 4.0,
                                     "clipped": 0.0123, "method": "entropy", "shared": False}}}
    got = section(render_html({**BASE, "quantization": q}), "calibration")
    assert 'data-name="relu_out"' in got and "1.23 % clipped" in got and "1.230 %" in got
    assert "0.01 – 0.02 (8 channels)" in got and "<td>w</td>" in got
    no_hist = section(render_html({**BASE, "quantization": {**q, "histograms": {}}}), "calibration")
    assert "histograms: not in this report" in no_hist


def test_histogram_marks_the_range_and_shades_what_it_clips():
    svg = histogram(0.0, 8.0, [5, 4, 3, 2, 1, 1, 0, 1], 0.0, 4.0, "t")
    assert svg.count('stroke="#c0392b" stroke-width="1.5"') == 2  # two range lines
    assert svg.count('fill-opacity="0.08"') == 1  # only the upper side is clipped
    assert svg.count('fill="#3b6ea8"/>') == 7  # one bar per nonzero bin


def test_names_are_escaped():
    evil = '<img src=x onerror="alert(1)">'
    page = render_html({**BASE, "declined": [{"pass": "P", "where": f"Conv '{evil}'", "reason": "<b>no</b>"}]})
    assert evil not in page and "<b>no</b>" not in page and "&lt;img src=x" in page


def test_a_broken_section_is_reported_and_the_rest_still_draws(caplog):
    with caplog.at_level(logging.WARNING, logger="onnxopt.html_report"):
        page = render_html({**BASE, "prune": {"layers": [1, 2]}})
    assert "could not be drawn" in section(page, "pruning")
    assert "FoldConstants" in section(page, "passes")
    assert any("pruning" in r.getMessage() for r in caplog.records)


def test_unknown_keys_are_listed_raw():
    got = section(render_html({**BASE, "weights": {"format": "int4", "layers": 3}}), "other")
    assert "<summary>weights</summary>" in got and "int4" in got


def test_register_section_plugs_in_before_another(monkeypatch):
    monkeypatch.setattr(hr, "SECTIONS", list(hr.SECTIONS))
    register_section(Section("energy", "Energy", lambda r: "<p>42 mJ</p>" if "energy" in r else None, "no 'energy'"),
                     before="lint")
    page = render_html({**BASE, "energy": 1})
    assert page.index('<section id="energy">') < page.index('<section id="lint">') and "42 mJ" in page
    assert "not in this report: no &#x27;energy&#x27;" in render_html(BASE)


def test_a_thousand_node_report_stays_small():
    n = 1000
    report = {**BASE, "nodes_before": n, "nodes_after": n,
              "declined": [{"pass": "QuantizeStatic", "where": f"Conv 'conv_{i}'", "reason": "kept float: long tail"}
                           for i in range(2000)],
              "plan": [{"region": f"conv_{i}", "nodes": [f"conv_{i}", f"relu_{i}"], "format": "int8",
                        "reason": "int8 by default", "sensitivity": i / n} for i in range(n)],
              "quantization": {"mode": "static", "tensors": {
                  f"t_{i}": {"kind": "activation", "dtype": "uint8", "min": 0.0, "max": 1.0, "scale": 0.004,
                             "zero_point": 0, "clipped": 0.001} for i in range(2 * n)},
                  "histograms": {f"t_{i}": {"lo": 0.0, "hi": 1.0, "counts": list(range(64)), "low": 0.0,
                                            "high": 0.9, "clipped": 0.01, "method": "entropy"} for i in range(16)}}}
    page = render_html(report)
    assert len(page.encode()) < 3 << 20
    assert "conv_999" in page and "t_1999" in page
