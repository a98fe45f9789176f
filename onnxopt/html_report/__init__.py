"""The optimize report as one self-contained HTML page (``--report-html``, ``onnxopt report r.json -o r.html``).

Why HTML next to the JSON: the JSON is for programs and diffs; a person deciding whether to ship a model wants
to see at once what moved (size, latency, fidelity per output), where the precision went and why, which tensors
the calibration clipped, and to find one node by name. The page is one file: plots are inline SVG written in
Python (``onnxopt.svg_plots``), the search box is a few lines of inline script, there is no network access and
no external file, so it can be mailed, archived with the model and opened offline.

Design: one function per section (``SECTIONS``), each reading only its keys and returning HTML, or None when
the report has nothing for it (the page then says "not in this report"). A section that fails on a malformed
report is logged and shown as such; the others still render. Later work adds a section with
``register_section``. Every table's rows are filtered by the search box (node, tensor, layer names).

Keys each section reads (what later work must write to be drawn):

- summary: ``nodes_before/after``, ``bytes_before/after``, ``file_bytes_before/after``, ``seconds``,
  ``target``, ``input``, ``output``; latency from ``speed_check`` (``float_ms``/``int8_ms`` when measured,
  ``float_cost``/``int8_cost`` from a cost model, ``measured: false`` with ``reason``); FLOPs/params from
  ``prune``; fidelity per output from ``verify.outputs`` (``name, shape, cosine, snr_db, max_abs, max_rel,
  top1_agree, ok``) and ``quantization.fidelity`` (``output, samples, cosine, snr_db, max_abs``).
- plan: ``plan``, a list of ``{"region": str, "nodes": [str], "format": str, "reason": str,
  "sensitivity": float | None}`` (sensitivity: the budget used with only this region quantized; larger is more
  sensitive). Also read: ``plan`` as ``{"regions": [...]}`` (``Plan.to_dict``: ``id`` for ``region``,
  ``quantized_alone`` for ``sensitivity``, ``float_alone`` shown beside it).
- search: ``search``, a list of ``{"step": int, "error": float, "latency_ms": float | None, "bytes": int |
  None, "chosen": bool, "label": str}`` (error: budget use or error metric, lower is better). Also read:
  ``plan["steps"]`` (``PlanStep``: ``index``, ``usage``, ``latency``, ``size_bytes``, ``label``), where a
  ``chosen`` key marks the chosen plan and ``plan["latency_unit"]`` names the latency's unit. Without a
  ``chosen`` mark the step whose ``raised`` moves are all the final plan's (the most of them) is taken as chosen
  and the page says it was inferred: please mark it.
- calibration: ``quantization`` (``mode``, ``calibration: {method, seconds, held_back}``, ``note``,
  ``tensors: {name: {kind, dtype, min, max, scale | scale_min/scale_max, zero_point, clipped}}``,
  ``histograms: {name: {lo, hi, counts, low, high, clipped, method, shared}}``; ``onnxopt.clipping``).
- pruning: ``prune`` (``asked, criterion, scope, flops_before/after, flops_removed, params_before/after,
  groups, groups_locked, layers: [{group, channels_before, channels_after}], fidelity, reconstruction``).
- recovery: ``recovery``, a list of ``{"layer": str, "step": str, "error_before": float, "error_after":
  float}``, or ``RecoveryReport.to_dict`` (``{"steps": [{step, seconds, layers, declined, mean_error_before,
  mean_error_after}], "layers": [{layer, step, before, after, inputs}]}``); other plain keys shown as facts.
- passes: ``passes`` (``name, lossless, runs, changes, seconds, stats``), ``converged``.
- declines: ``declined`` (``[{pass, where, reason}]``, per node) or else ``declines`` (``"pass: reason" ->
  count``).
- lint: ``lint`` (list of violation strings).
- host: ``host`` (``arch, cpu, features, onnxruntime, target, note``), ``verify`` (``engine,
  engine_reason, host, budget, ok, this_host_onnxruntime_min_cosine``), ``speed_check`` (``engine, host``).
- other: every top-level key no section draws (``sections.DRAWN``), as collapsible JSON.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from onnxopt.errors import UserError

from . import sections, sections_model
from ._html import CSS, SCRIPT, missing

log = logging.getLogger(__name__)

__all__ = ["SECTIONS", "Section", "load_report", "register_section", "render_html", "write_html"]


@dataclass(frozen=True)
class Section:
    """``render(report)`` returns the section's HTML, or None when the report has nothing for it; ``needs``
    names the keys in the "not in this report" line."""

    id: str
    title: str
    render: Callable[[Mapping[str, Any]], str | None]
    needs: str = ""


SECTIONS: list[Section] = [
    Section("summary", "Summary", sections.summary, "sizes and verification"),
    Section("plan", "Precision plan", sections_model.plan, "no 'plan' (the planner did not run)"),
    Section("search", "Plan search (Pareto)", sections_model.search, "no 'search' (no budget search ran)"),
    Section("calibration", "Calibration", sections_model.calibration, "no 'quantization' (nothing was quantized)"),
    Section("pruning", "Pruning", sections_model.pruning, "no 'prune' (no --prune)"),
    Section("recovery", "Recovery", sections_model.recovery, "no 'recovery' (no recovery step ran)"),
    Section("passes", "Passes", sections.passes, "no 'passes'"),
    Section("declines", "Declines", sections.declines, "no 'declined' or 'declines'"),
    Section("lint", "Lint", sections.lint, "no 'lint'"),
    Section("host", "Host and engine", sections.host, "no 'host' or 'verify'"),
    Section("other", "Other report data", sections.other, "every key is drawn above"),
]


def register_section(section: Section, before: str | None = None) -> None:
    """Add (or replace, by id) a section; ``before``: the id of the section it goes in front of (else last)."""
    SECTIONS[:] = [s for s in SECTIONS if s.id != section.id]
    at = next((i for i, s in enumerate(SECTIONS) if s.id == before), len(SECTIONS))
    SECTIONS.insert(at, section)


def _render(section: Section, report: Mapping[str, Any]) -> str:
    try:
        body = section.render(report)
    except Exception as e:  # a hand-edited or older report: say so in its section, draw the rest
        log.warning("report section %s could not be drawn: %s: %s", section.id, type(e).__name__, e)
        body = f'<p class="missing">could not be drawn from this report ({escape(type(e).__name__)}: ' \
               f'{escape(str(e))})</p>'
    return (f'<section id="{section.id}"><h2>{escape(section.title)}</h2>'
            f'{body if body is not None else missing(section.needs)}</section>')


def render_html(report: Mapping[str, Any], title: str | None = None) -> str:
    """The whole page for ``report`` (the dict ``optimize`` returns, or one read back from its JSON)."""
    report = json.loads(json.dumps(report, default=str))  # what the JSON report says, numpy scalars included
    if title is None:
        where = " → ".join(str(report[k]) for k in ("input", "output") if report.get(k))
        title = f"onnxopt report{': ' + where if where else ''}"
    sub = " · ".join(x for x in (
        f"target {report['target']}" if report.get("target") else "",
        f"onnxopt {report['onnxopt']}" if report.get("onnxopt") else "",
        f"{report['seconds']:.2f} s" if isinstance(report.get("seconds"), (int, float)) else "") if x)
    nav = "".join(f'<a href="#{s.id}">{escape(s.title)}</a>' for s in SECTIONS)
    body = "".join(_render(s, report) for s in SECTIONS)
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{escape(title)}</h1><div class=\"sub\">{escape(sub)}</div></header>"
            f'<div id="bar"><input id="find" type="search" placeholder="find a node, tensor or layer by name" '
            f'aria-label="find by name"><span id="hits"></span><nav>{nav}</nav></div>'
            f"<main>{body}</main><script>{SCRIPT}</script></body></html>\n")


def write_html(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the page atomically (a temporary file renamed over ``path``)."""
    path = Path(path)
    text = render_html(report)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    log.info("wrote the HTML report %s (%d bytes)", path, len(text.encode()))
    return path


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON report written by ``optimize --report``; UserError (one line) when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such report; write one with onnxopt optimize ... --report report.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a JSON report (not UTF-8 text); give the file optimize --report wrote"
                        ) from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not a JSON report ({e}); give the file optimize --report wrote") from None
    if not isinstance(data, dict) or not ({"onnxopt", "nodes_before", "passes"} & set(data)):
        raise UserError(f"{path}: not an onnxopt report (no 'onnxopt', 'nodes_before' or 'passes' key); "
                        "give the file optimize --report wrote")
    return data
