"""The HTML report of a real optimize run (zoo small_cnn, int8 with entropy calibration), from --report-html and
from `onnxopt report`, checked as text and rendered in headless Chromium (skipped, saying why, without one)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from onnxopt.cli import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _cli(args: list) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("html")
    assert _cli(["zoo", "small_cnn", "-o", d / "m.onnx", "--calib-out", d / "c.npz", "--samples", "24"]) == 0
    code = _cli(["optimize", d / "m.onnx", "-o", d / "q.onnx", "--calib", d / "c.npz", "--quantize", "static",
                 "--calib-method", "entropy", "--target", "x86-vnni", "--report", d / "r.json",
                 "--report-html", d / "r.html"])
    assert code == 0
    return d


def test_report_html_and_report_command_draw_the_same_page(run, capsys):
    assert _cli(["report", run / "r.json", "-o", run / "again.html"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "again.html")
    assert (run / "again.html").read_bytes() == (run / "r.html").read_bytes()  # the same report, the same bytes


def test_page_is_self_contained_and_carries_the_run(run):
    page = (run / "r.html").read_text()
    report = json.loads((run / "r.json").read_text())
    # nothing fetched: the only URL is the SVG namespace, no <link>, no src=
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}
    assert "<link" not in page and " src=" not in page
    q = report["quantization"]
    assert q["histograms"] and len(q["histograms"]) <= 16
    for name, h in q["histograms"].items():
        assert f'data-name="{name}"' in page
        assert 0 < len(h["counts"]) <= 64 and sum(h["counts"]) > 0 and 0 <= h["clipped"] <= 1
    for name in q["tensors"]:
        assert f"<td>{name}</td>" in page
    declined = report["declined"]
    assert declined and all(d["where"] != "model" for d in declined)
    assert declined[0]["where"].replace("'", "&#x27;") in page
    for out in report["verify"]["outputs"]:
        assert f"<td>{out['name']}</td>" in page
    assert report["host"]["cpu"] in page and report["verify"]["engine"] in page
    assert "not in this report" in _section(page, "Pruning")  # this run prunes nothing
    recovery = report.get("recovery")  # the target's default recovery steps ran: their table is drawn
    if recovery:
        assert "not in this report" not in _section(page, "Recovery")
        assert "<table" in _section(page, "Recovery")
    else:
        assert "not in this report" in _section(page, "Recovery")
    plan = _section(page, "Precision plan")
    for region in report["plan"]["regions"]:
        assert f"<td>{region['id']}</td>" in plan and ", ".join(region["nodes"]) in plan
    assert "<svg" in _section(page, "Plan search (Pareto)")  # the planner's steps, drawn


def _section(page: str, title: str) -> str:
    return page.split(f"<h2>{title}</h2>", 1)[1].split("</section>", 1)[0]


def test_report_command_errors_are_one_line(tmp_path, run, capsys):
    for args, words in (
        (["report", tmp_path / "none.json", "-o", tmp_path / "a.html"], "no such report"),
        (["report", run / "r.json", "-o", run / "r.json"], "overwrite the input"),
        (["report", run / "m.onnx", "-o", tmp_path / "b.html"], "not a JSON report"),
        (["report", run / "r.json", "-o", tmp_path / "missing" / "c.html"], "does not exist"),
    ):
        assert _cli(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("onnxopt: error:") and words in err[0], err
    (tmp_path / "list.json").write_text("[1, 2]")
    assert _cli(["report", tmp_path / "list.json", "-o", tmp_path / "d.html"]) == 2
    assert "not an onnxopt report" in capsys.readouterr().err


def test_report_html_path_is_checked_before_any_work(run, tmp_path, capsys):
    out = tmp_path / "never.onnx"
    code = _cli(["optimize", run / "m.onnx", "-o", out, "--report-html", tmp_path / "no" / "r.html"])
    assert code == 2 and not out.exists()
    assert "--report-html" in capsys.readouterr().err
    code = _cli(["optimize", run / "m.onnx", "-o", out, "--report", tmp_path / "x", "--report-html", tmp_path / "x"])
    assert code == 2 and not out.exists() and "its own path" in capsys.readouterr().err


def _browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    exe = _browser()
    if exe is None:
        pytest.skip(f"no Chromium found (looked for {', '.join(BROWSERS)}); apt-get install chromium")
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


def test_chromium_renders_plots_tables_and_the_search_box(run, tmp_path):
    report = json.loads((run / "r.json").read_text())
    url = (run / "r.html").resolve().as_uri()
    dom = _chromium(["--dump-dom", url], tmp_path / "profile").stdout
    assert dom.count("<svg") >= len(report["quantization"]["histograms"]) + 2, dom[:500]  # histograms + charts
    assert dom.count("<rect") > 50 and "chosen range" in dom
    tables = re.findall(r"<table class=\"find\">.*?</table>", dom, flags=re.S)
    assert len(tables) >= 4  # fidelity, tensors, passes, declines
    assert any(f"<td>{n}</td>" in t for t in tables for n in report["quantization"]["tensors"])
    # the search box: a name in the address's fragment filters every table to the rows that name it
    name = next(iter(report["quantization"]["histograms"]))
    dom = _chromium(["--dump-dom", f"{url}#{name}"], tmp_path / "profile").stdout
    rows = re.findall(r"<tr( style=\"[^\"]*\")?><td>(.*?)</td>", dom)
    shown = [cell for style, cell in rows if "none" not in style]
    hidden = [cell for style, cell in rows if "none" in style]
    assert shown and hidden and any(name in c for c in shown) and not any(c == name for c in hidden)
    assert "matching row(s)" in dom


def test_chromium_screenshot(run, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    _chromium([f"--screenshot={shot}", "--window-size=1280,2000", (run / "r.html").resolve().as_uri()],
              tmp_path / "profile")
    assert shot.is_file(), "Chromium wrote no screenshot"
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        colors = im.convert("RGB").resize((320, 500)).getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 50  # drawn, not a blank page
