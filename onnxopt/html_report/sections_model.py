"""Sections about what happened to the model's parts: precision plan, plan search, calibration, pruning, recovery.

Each function takes the report dict and returns HTML, or None when the report has nothing for it. The plan,
search and recovery sections read the keys of the package docstring; ``plan_rows``, ``search_points`` and
``recovery_rows`` turn the accepted forms into one, so the drawing code sees one shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from onnxopt.svg_plots import GREEN, ORANGE, histogram, meter, paired_bars, scatter

from ._html import Raw, as_float, badge, kv, num, para, pct, table

TOP_RECOVERY_PLOT = 30  # layers drawn in the recovery chart (the table lists them all)


# ---------------------------------------------------------------------------------------------------- plan
def plan_rows(report: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """Regions as ``{region, nodes, format, reason, sensitivity, float_alone}``, from either form of ``plan``."""
    p = report.get("plan")
    items = p.get("regions") if isinstance(p, Mapping) else p
    if not isinstance(items, list):
        return None
    rows = []
    for r in items:
        sens = r.get("sensitivity", r.get("quantized_alone"))
        if isinstance(sens, Mapping):  # {"quantized_alone": ..., "float_alone": ...}
            sens, fl = sens.get("quantized_alone"), sens.get("float_alone")
        else:
            fl = r.get("float_alone")
        rows.append({"region": r.get("region", r.get("id")), "nodes": r.get("nodes") or [],
                     "format": str(r.get("format", "")), "reason": r.get("reason", ""),
                     "sensitivity": as_float(sens), "float_alone": as_float(fl)})
    return rows


def plan(report: Mapping[str, Any]) -> str | None:
    rows = plan_rows(report)
    if rows is None:
        return None
    if not rows:
        return para("the plan has no regions (nothing quantizable)")
    p = report.get("plan")
    facts = kv([(k, p.get(k)) for k in ("summary", "mode", "budget", "source", "note") if p.get(k)]) \
        if isinstance(p, Mapping) else ""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["format"]] = counts.get(r["format"], 0) + 1
    tally = " ".join(f"{badge(f, f)} {n}" for f, n in sorted(counts.items(), key=lambda kv_: -kv_[1]))
    top = max([r["sensitivity"] for r in rows if r["sensitivity"] is not None] + [0.0])
    body = [[r["region"], ", ".join(map(str, r["nodes"])), badge(r["format"], r["format"]),
             Raw(meter(r["sensitivity"] / top if top > 0 and r["sensitivity"] is not None else None,
                       color=ORANGE, text=f"budget use with only this region quantized: {num(r['sensitivity'])}")
                 + f" {escape(num(r['sensitivity']))}" if r["sensitivity"] is not None else ""),
             r["float_alone"], r["reason"]] for r in rows]
    return (facts + f"<p>{tally}</p>"
            + '<div class="scroll">' + table(["region", "nodes", "format", "sensitivity (quantized alone)",
                                               "float alone", "why"], body, numeric=(4,)) + "</div>")


# -------------------------------------------------------------------------------------------------- search
def search_points(report: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str, bool] | None:
    """Steps as ``{step, error, latency, bytes, chosen, label}``, the latency unit and whether error is the
    share of the budget used (a plan's steps: 1 is the budget), from ``search`` or ``plan["steps"]``."""
    p = report.get("plan") if isinstance(report.get("plan"), Mapping) else {}
    items, unit = report.get("search"), "ms"
    if isinstance(items, Mapping):
        unit = items.get("latency_unit") or unit
        items = items.get("steps", items.get("points"))
    if not isinstance(items, list) or not items:
        items, unit = p.get("steps"), p.get("latency_unit") or "cost units"
    if not isinstance(items, list) or not items:
        return None
    usage = all("error" not in s and "usage" in s for s in items)  # a plan's steps: error as budget use
    out = []
    for i, s in enumerate(items):
        out.append({"step": s.get("step", s.get("index", i)), "label": s.get("label", ""),
                    "error": as_float(s.get("error", s.get("usage"))),
                    "latency": as_float(s.get("latency_ms", s.get("latency"))),
                    "bytes": _int_or_float(s.get("bytes", s.get("size_bytes"))), "chosen": bool(s.get("chosen")),
                    "ok": s.get("ok"), "raised": s.get("raised")})
    if not any(s["chosen"] for s in out):
        _infer_chosen(out, plan_rows(report))
    return out, unit, usage


def _infer_chosen(steps: list[dict[str, Any]], regions: list[dict[str, Any]] | None) -> None:
    """Without a ``chosen`` mark, the chosen step of a plan search is the one whose moves (``raised``,
    ``region=format``) all hold in the final plan and are the most; marked ``chosen: "inferred"``."""
    final = {str(r["region"]): r["format"] for r in regions or []}
    best = None
    for s in steps:
        moves = s.get("raised")
        if not isinstance(moves, list) or not final:
            continue
        pairs = [str(m).rsplit("=", 1) for m in moves]
        if all(len(p) == 2 and final.get(p[0]) == p[1] for p in pairs) and (best is None or
                                                                          len(moves) >= len(best["raised"])):
            best = s
    if best is not None:
        best["chosen"] = "inferred"


def _int_or_float(v: Any) -> int | float | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else as_float(v)


def search(report: Mapping[str, Any]) -> str | None:
    found = search_points(report)
    if found is None:
        return None
    pts, unit, usage = found
    ylabel = "budget used" if usage else "error"
    plots = []
    for key, xlabel in (("latency", f"latency ({unit})"), ("bytes", "size (bytes)")):
        xy = [(p[key], p["error"], f"step {p['step']} {p['label']}".strip(), p["chosen"]) for p in pts
              if p[key] is not None and p["error"] is not None]
        if xy:
            svg = scatter(xy, xlabel, ylabel, f"{ylabel} against {xlabel}", hline=1.0 if usage else None,
                          hline_label="budget")
            plots.append(f'<div class="card">{svg}</div>')
    if not plots:
        plots.append(para("the steps carry no latency or size to plot against", "missing"))
    if not any(p["chosen"] for p in pts):
        plots.append(para("the chosen point is not marked in this report", "note"))
    elif any(p["chosen"] == "inferred" for p in pts):
        plots.append(para("chosen (inferred): the step whose moves are the final plan's; the report does not mark "
                          "it", "note"))
    rows = [[p["step"], p["label"], p["error"], p["latency"], p["bytes"],
             badge("chosen (inferred)" if p["chosen"] == "inferred" else "chosen", "ok") if p["chosen"]
             else ("" if p["ok"] is None else num(p["ok"]))] for p in pts]
    return (f'<div class="plots">{"".join(plots)}</div>'
            + table(["step", "label", ylabel, f"latency ({unit})", "bytes", "chosen / meets budget"], rows,
                    numeric=(2, 3, 4)))


# --------------------------------------------------------------------------------------------- calibration
def _scale(t: Mapping[str, Any]) -> Any:
    if "scale" in t:
        return t["scale"]
    if "scale_min" in t:
        return f"{num(t['scale_min'])} – {num(t['scale_max'])} ({num(t.get('channels'))} channels)"
    return None


def calibration(report: Mapping[str, Any]) -> str | None:
    q = report.get("quantization")
    if not isinstance(q, Mapping):
        return None
    cal = q.get("calibration") or {}
    out = kv([("mode", q.get("mode")), ("method", cal.get("method")), ("calibration seconds", cal.get("seconds")),
              ("held-back samples", cal.get("held_back")), ("note", q.get("note"))])
    hists = q.get("histograms") or {}
    if hists:
        cards = []
        for name, h in hists.items():
            title = f"{name} · {pct(h.get('clipped'), 2)} clipped"
            svg = histogram(float(h["lo"]), float(h["hi"]), h["counts"], float(h["low"]), float(h["high"]), title)
            shared = para("quantized with a narrower range shared with another tensor (e.g. the Relu/Clip fused "
                          "after it); drawn with its own calibrated range", "note") if h.get("shared") else ""
            cards.append(f'<div class="card hist" data-name="{escape(name)}">{svg}{shared}</div>')
        out += (f"<h3>The {len(hists)} most clipped tensors</h3>"
                + para("Calibration histogram (log counts) of each tensor with its chosen range (red); values in "
                       "the shaded parts are clipped.", "note") + f'<div class="plots">{"".join(cards)}</div>')
    else:
        out += para("histograms: not in this report", "missing")
    tensors = q.get("tensors") or {}
    if tensors:
        rows = [[name, t.get("kind"), t.get("dtype"), t.get("min"), t.get("max"), _scale(t), t.get("zero_point"),
                 pct(t["clipped"], 3) if "clipped" in t else None] for name, t in tensors.items()]
        out += (f"<h3>Quantized tensors ({len(tensors):,})</h3>" + '<div class="scroll">'
                + table(["tensor", "kind", "dtype", "min", "max", "scale", "zero point", "clipped"], rows,
                        numeric=(3, 4, 6, 7)) + "</div>")
    return out


# ------------------------------------------------------------------------------------------------- pruning
def pruning(report: Mapping[str, Any]) -> str | None:
    p = report.get("prune")
    if not isinstance(p, Mapping):
        return None
    out = kv([("asked (FLOPs removed)", pct(p.get("asked"))), ("removed", pct(p.get("flops_removed"))),
              ("criterion", p.get("criterion")), ("scope", p.get("scope")), ("round to", p.get("round_to")),
              ("FLOPs", f"{num(p.get('flops_before'))} → {num(p.get('flops_after'))}"),
              ("parameters", f"{num(p.get('params_before'))} → {num(p.get('params_after'))}"),
              ("groups pruned / locked", f"{num(p.get('groups'))} / {num(p.get('groups_locked'))}")])
    rec = p.get("reconstruction")
    if isinstance(rec, Mapping):
        out += "<h3>Reconstruction</h3>" + kv([("mode", rec.get("mode")), ("layers re-fitted", rec.get("layers")),
                                                ("fidelity", rec.get("fidelity"))])
    layers = p.get("layers") or []
    if layers:
        rows = []
        for layer in layers:
            before, after = layer.get("channels_before"), layer.get("channels_after")
            kept = after / before if isinstance(before, int) and before and isinstance(after, int) else None
            rows.append([layer.get("group"), before, after,
                         Raw(meter(kept, color=GREEN, text=f"{pct(kept)} of channels kept") + f" {pct(kept)}")])
        out += "<h3>Channels kept per layer</h3>" + '<div class="scroll">' + table(
            ["layer (dependency group)", "channels before", "after", "kept"], rows, numeric=(1, 2)) + "</div>"
    return out


# ------------------------------------------------------------------------------------------------ recovery
def recovery_rows(report: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    r = report.get("recovery")
    facts: dict[str, Any] = {}
    if isinstance(r, Mapping):
        facts = {k: v for k, v in r.items() if k != "layers" and not isinstance(v, (list, dict))}
        r = r.get("layers")
    if not isinstance(r, list):
        return None
    rows = [{"layer": x.get("layer"), "step": x.get("step"), "inputs": x.get("inputs"),
             "before": as_float(x.get("error_before", x.get("before"))),
             "after": as_float(x.get("error_after", x.get("after")))} for x in r]
    return rows, facts


def recovery(report: Mapping[str, Any]) -> str | None:
    found = recovery_rows(report)
    if found is None:
        return None
    rows, facts = found
    out = kv(facts) if facts else ""
    steps = (report.get("recovery") or {}).get("steps") if isinstance(report.get("recovery"), Mapping) else None
    if isinstance(steps, list) and steps:
        out += "<h3>Steps</h3>" + table(
            ["step", "seconds", "layers", "declined", "mean error before", "mean error after"],
            [[s.get("step"), s.get("seconds"), s.get("layers"), s.get("declined"), s.get("mean_error_before"),
              s.get("mean_error_after")] for s in steps], numeric=(1, 2, 3, 4, 5), cls="plain")
    if not rows:
        return out + para("no layer was recovered")
    worst = sorted((r for r in rows if r["before"] is not None), key=lambda r: -r["before"])[:TOP_RECOVERY_PLOT]
    if worst:
        labels = [f"{r['layer']} ({r['step']})" if r["step"] else str(r["layer"]) for r in worst]
        out += paired_bars(labels, [r["before"] for r in worst], [r["after"] for r in worst],
                           f"per-layer error before and after recovery ({len(worst)} largest)")
    body = [[r["layer"], r["step"], r["inputs"], r["before"], r["after"],
             pct(r["after"] / r["before"]) if r["before"] and r["after"] is not None else None] for r in rows]
    return out + '<div class="scroll">' + table(
        ["layer", "step", "measured on", "error before", "error after", "after / before"], body,
        numeric=(3, 4, 5)) + "</div>"
