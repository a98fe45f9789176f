"""Sections about the run as a whole: summary, passes, declines, lint, host and engine.

Each function takes the report dict and returns HTML, or None when the report has nothing for it (keys: the
package docstring).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onnxopt.svg_plots import ORANGE, RED, hbars, meter

from ._html import Raw, as_float, badge, kv, missing, num, para, pct, table
from .sections_model import search_points


def _before_after(report: Mapping[str, Any]) -> list[tuple[str, Any, Any, str]]:
    """(what, before, after, unit) for every figure of the run that has both."""
    rows: list[tuple[str, Any, Any, str]] = []
    for what, a, b in (("nodes", "nodes_before", "nodes_after"), ("model bytes", "bytes_before", "bytes_after"),
                       ("file bytes (with external data)", "file_bytes_before", "file_bytes_after")):
        if report.get(a) is not None and report.get(b) is not None:
            rows.append((what, report[a], report[b], ""))
    plan = report.get("plan") if isinstance(report.get("plan"), Mapping) else {}
    checks = [c for c in (report.get("speed_check"), plan.get("speed")) if isinstance(c, Mapping)]
    speed = next((c for c in checks if as_float(c.get("float_ms")) is not None), None) or \
        next((c for c in checks if as_float(c.get("float_cost")) is not None), {})  # measured first, else estimated
    if as_float(speed.get("float_ms")) is not None and as_float(speed.get("int8_ms")) is not None:
        rows.append((f"latency ({speed.get('engine', 'measured')})", speed["float_ms"], speed["int8_ms"], " ms"))
    elif as_float(speed.get("float_cost")) is not None and as_float(speed.get("int8_cost")) is not None:
        unit = f", {plan['latency_unit']}" if plan.get("latency_unit") else ""
        found = search_points(report) if plan.get("steps") else None
        chosen = next((p["latency"] for p in (found[0] if found else []) if p["chosen"] and p["latency"]), None)
        what = "the chosen plan" if chosen is not None else "all int8"  # a plan's speed is judged all-int8
        rows.append((f"latency estimate, {what} ({speed.get('engine', 'cost model')}{unit})", speed["float_cost"],
                     chosen if chosen is not None else speed["int8_cost"], ""))
    prune = report.get("prune") or {}
    for what, a, b in (("FLOPs", "flops_before", "flops_after"), ("parameters", "params_before", "params_after")):
        if prune.get(a) is not None and prune.get(b) is not None:
            rows.append((what, prune[a], prune[b], ""))
    return rows


def _within(output: Mapping[str, Any], verify: Mapping[str, Any]) -> bool:
    """An output's verdict: by the budget terms that name it (``"logits: cosine >= 0.99"``), else by all the
    budget's terms; reports without terms: the cosine budget text (``"cosine >= 0.99"``), else rtol/atol (the
    output's ``ok``)."""
    terms = verify.get("budget_terms")
    if isinstance(terms, list) and terms:
        mine = [t for t in terms if str(t.get("term", "")).startswith(f"{output.get('name')}:")]
        return all(bool(t.get("ok")) for t in (mine or terms))
    text = str(verify.get("budget") or "")
    if text.startswith("cosine >="):
        try:
            return float(output.get("cosine", -2.0)) >= float(text.split(">=", 1)[1])
        except ValueError:
            pass
    return bool(output.get("ok"))


def _fidelity(report: Mapping[str, Any]) -> str:
    parts = []
    verify = report.get("verify") or {}
    if verify.get("outputs"):
        parts.append(f"<h3>Per output, optimized against the input model (verification, {num(verify.get('engine'))}"
                     f"; budget {num(verify.get('budget', ''))})</h3>")
        parts.append(table(["output", "shape", "cosine", "SNR dB", "max abs", "max rel", "top-1 agree",
                            "within budget"],
                           [[o.get("name"), o.get("shape"), o.get("cosine"), o.get("snr_db"), o.get("max_abs"),
                             o.get("max_rel"), o.get("top1_agree"),
                             badge("yes", "ok") if _within(o, verify) else badge("no", "bad")]
                            for o in verify["outputs"]], numeric=(2, 3, 4, 5, 6)))
        terms = verify.get("budget_terms")
        if isinstance(terms, list) and terms:
            parts.append("<h3>Budget</h3>" + table(
                ["term", "measured", "share of the budget used", "met"],
                [[t.get("term"), t.get("value"),
                  Raw(meter(t.get("usage"), color=ORANGE if t.get("ok") else RED, text=pct(t.get("usage")))
                      + f" {pct(t.get('usage'))}"), badge("yes", "ok") if t.get("ok") else badge("no", "bad")]
                 for t in terms], numeric=(1,), cls="plain"))
    elif verify.get("skipped"):
        parts.append(para(f"not verified: {verify['skipped']}", "missing"))
    quant = report.get("quantization") or {}
    if quant.get("fidelity"):
        parts.append("<h3>Per output on held-back calibration samples (quantization)</h3>")
        parts.append(table(["output", "samples", "cosine", "SNR dB", "max abs"],
                           [[f.get("output"), f.get("samples"), f.get("cosine"), f.get("snr_db"), f.get("max_abs")]
                            for f in quant["fidelity"]], numeric=(1, 2, 3, 4)))
    elif quant.get("fidelity_error"):
        parts.append(para(f"quantization fidelity not measured: {quant['fidelity_error']}", "missing"))
    prune_fid = (report.get("prune") or {}).get("fidelity")
    if prune_fid:
        parts.append("<h3>After pruning, before quantization</h3>" + kv(prune_fid))
    return "".join(parts) or missing("no 'verify' or fidelity figures")


def summary(report: Mapping[str, Any]) -> str | None:
    rows = _before_after(report)
    verify = report.get("verify") or {}
    if not rows and not verify:
        return None
    ok = verify.get("ok")
    verdict = (badge("outputs within budget", "ok") if ok else badge("OUTPUTS MOVED", "bad") if ok is False
               else badge("not verified") if verify else None)
    facts = kv([("input", report.get("input")), ("output", report.get("output")), ("target", report.get("target")),
                ("requested target", report.get("target_requested")), ("verdict", verdict),
                ("quantization", (report.get("quantization") or {}).get("mode")),
                ("lossy steps ran", report.get("lossy")), ("seconds", report.get("seconds")),
                ("build", report.get("build_command"))])
    change = [[what, Raw(num(a) + unit), Raw(num(b) + unit),
               pct(float(b) / float(a)) if as_float(a) and as_float(b) is not None else None]
              for what, a, b, unit in rows]
    plot = hbars([(what, 100.0 * float(b) / float(a)) for what, a, b, _ in rows if as_float(a) and as_float(b)
                  is not None], "after as a percentage of before", unit=" %", ref=100.0)
    speed = report.get("speed_check") or {}
    note = para(f"latency not measured: {speed['reason']}", "note") if speed.get("measured") is False else ""
    return (facts + "<h3>Before and after</h3>"
            + table(["", "before", "after", "after / before"], change, numeric=(1, 2, 3), cls="plain")
            + plot + note + _fidelity(report) + _ops(report))


def _ops(report: Mapping[str, Any]) -> str:
    a, b = report.get("ops_before"), report.get("ops_after")
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return ""
    names = sorted(set(a) | set(b), key=lambda k: (-(b.get(k, 0) or 0), k))
    return (f"<details><summary>Operators ({len(names)} types)</summary>"
            + table(["op", "before", "after"], [[k, a.get(k, 0), b.get(k, 0)] for k in names], numeric=(1, 2))
            + "</details>")


def passes(report: Mapping[str, Any]) -> str | None:
    items = report.get("passes")
    if not items:
        return None
    head = "" if report.get("converged", True) else para("a fixed-point group stopped at its iteration cap", "note")
    slow = sorted(((p["name"], float(p.get("seconds", 0.0))) for p in items), key=lambda t: -t[1])[:12]
    plot = hbars(slow, "slowest passes (seconds)", unit=" s") if slow and slow[0][1] > 0 else ""
    rows = [[p.get("name"), "lossless" if p.get("lossless", True) else badge("lossy", "bad"), p.get("runs"),
             p.get("changes"), p.get("seconds"), p.get("stats") or None] for p in items]
    return head + table(["pass", "kind", "runs", "changes", "seconds", "stats"], rows, numeric=(2, 3, 4)) + plot


def declines(report: Mapping[str, Any]) -> str | None:
    per_node = report.get("declined")
    counts = report.get("declines")
    if per_node:
        out = para("Where a pass left a node alone, and why (search for a node's name).")
        out += f'<div class="scroll">{table(["pass", "where", "reason"], [[d.get("pass"), d.get("where"), d.get("reason")] for d in per_node])}</div>'  # noqa: E501
        if report.get("declined_truncated"):
            out += para(f"{num(report['declined_truncated'])} more declines are in the log, not the report.", "note")
        return out
    if counts:
        return table(["pass: reason", "times"], sorted(counts.items(), key=lambda kv_: -kv_[1]), numeric=(1,))
    if counts is not None or per_node is not None:
        return para("no pass declined anything")
    return None


def lint(report: Mapping[str, Any]) -> str | None:
    found = report.get("lint")
    if found is None:
        return None
    if not found:
        return para(f"no violations of target {report.get('target', '')}'s rules")
    return table(["violation"], [[v] for v in found])


# every top-level key some section draws; the others are listed raw by ``other``
DRAWN = {"onnxopt", "target", "target_requested", "host", "seconds", "nodes_before", "nodes_after", "ops_before",
         "ops_after", "bytes_before", "bytes_after", "converged", "passes", "lossy", "declines", "declined",
         "declined_truncated", "lint", "quantization", "prune", "plan", "search", "recovery", "speed_check", "verify",
         "input", "output", "file_bytes_before", "file_bytes_after", "build_command"}
MAX_RAW = 20000  # characters of JSON shown per undrawn key


def other(report: Mapping[str, Any]) -> str | None:
    """Keys no section draws yet (a newer onnxopt's, or a pass's own), as JSON: nothing in the report is hidden."""
    import json
    from html import escape

    keys = [k for k, v in report.items() if k not in DRAWN and v not in (None, [], {}, "")]
    if not keys:
        return None
    out = []
    for k in keys:
        text = json.dumps(report[k], indent=1, default=str)
        cut = f"\n… {len(text) - MAX_RAW:,} more characters in the JSON report" if len(text) > MAX_RAW else ""
        out.append(f"<details><summary>{escape(k)}</summary><pre>{escape(text[:MAX_RAW] + cut)}</pre></details>")
    return "".join(out)


def host(report: Mapping[str, Any]) -> str | None:
    h, verify, speed = report.get("host"), report.get("verify") or {}, report.get("speed_check") or {}
    if not h and not verify:
        return None
    out = ""
    if isinstance(h, Mapping):
        feats = h.get("features")
        shown = ", ".join(k for k, v in feats.items() if v) if isinstance(feats, Mapping) else feats
        out += "<h3>Host</h3>" + kv([("cpu", h.get("cpu")), ("arch", h.get("arch")), ("int8 features", shown or "none"),
                                     ("onnxruntime", h.get("onnxruntime")),
                                     ("stands for target", h.get("target")), ("note", h.get("note") or None)])
    elif h:
        out += "<h3>Host</h3>" + para(str(h))
    if verify:
        out += "<h3>Verification engine</h3>" + kv([
            ("engine", verify.get("engine")), ("why", verify.get("engine_reason")), ("on host", verify.get("host")),
            ("budget", verify.get("budget")),
            ("this host's onnxruntime, min cosine", verify.get("this_host_onnxruntime_min_cosine"))])
    if speed:
        out += "<h3>Speed check</h3>" + kv([(k, v) for k, v in speed.items()])
    return out or None
