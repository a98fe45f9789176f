"""HTML building blocks of the report: escaping, number formats, tables, the page's CSS and search script.

Everything a section writes goes through ``cell`` (values are escaped unless they are ``Raw``, HTML this code
built), so a node or tensor name from any model cannot break the page.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

MAX_ROWS = 5000  # per table: a 1,000-node model's tables stay well under it; a larger one says what it left out


class Raw(str):
    """HTML built here (an SVG, a badge): inserted as is."""


def num(v: Any) -> str:
    """A number as a person reads it: ints with separators, floats to 6 significant digits."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if 1e5 <= abs(v) < 1e15:
            return f"{v:,.0f}"
        return f"{v:.6g}" if v == 0 or 1e-4 <= abs(v) else f"{v:.3e}"
    return str(v)


def cell(v: Any) -> str:
    if isinstance(v, Raw):
        return v
    if v is None or v == "":
        return '<span class="na">—</span>'
    if isinstance(v, (list, tuple)):
        return escape(", ".join(num(x) for x in v))
    if isinstance(v, dict):
        return escape(", ".join(f"{k}: {num(x)}" for k, x in v.items()))
    return escape(num(v))


def pct(v: Any, digits: int = 1) -> str:
    return f"{100 * float(v):.{digits}f} %" if isinstance(v, (int, float)) and math.isfinite(float(v)) else "—"


def as_float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Sequence[int] = (),
          limit: int = MAX_ROWS, cls: str = "find") -> str:
    """A table whose body rows the search box filters (``cls="find"``); at most ``limit`` rows, the rest counted."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body, extra = [], 0
    for i, row in enumerate(rows):
        if i >= limit:
            extra += 1
            continue
        tds = "".join(f'<td class="n">{cell(v)}</td>' if j in numeric else f"<td>{cell(v)}</td>"
                      for j, v in enumerate(row))
        body.append(f"<tr>{tds}</tr>")
    more = f'<p class="note">{extra:,} more rows not shown.</p>' if extra else ""
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{more}'


def kv(pairs: Iterable[tuple[str, Any]] | Mapping[str, Any]) -> str:
    """A two-column table of facts (not filtered by the search box)."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{cell(v)}</td></tr>" for k, v in items if v is not None)
    return f'<table class="kv">{rows}</table>'


def para(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{escape(text)}</p>' if cls else f"<p>{escape(text)}</p>"


def badge(text: str, kind: str = "") -> Raw:
    return Raw(f'<span class="badge {escape(kind)}">{escape(text)}</span>')


def missing(what: str) -> str:
    return f'<p class="missing">not in this report{": " + escape(what) if what else ""}</p>'


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2733;background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:14px 24px}header h1{font-size:20px;margin:0 0 4px}
header .sub{opacity:.85;font-size:13px}
#bar{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #d9dee5;padding:8px 24px;
display:flex;gap:16px;align-items:center;flex-wrap:wrap}
#find{font-size:14px;padding:5px 8px;width:320px;border:1px solid #aab3bf;border-radius:4px}
#hits{color:#5a6470;font-size:13px}nav a{margin-right:10px;color:#1f3a5f;font-size:13px}
main{padding:8px 24px 40px;max-width:1400px}
section{background:#fff;border:1px solid #d9dee5;border-radius:6px;margin:14px 0;padding:6px 16px 14px}
h2{font-size:17px;margin:10px 0}h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border-bottom:1px solid #e6e9ee;padding:3px 8px;text-align:left;vertical-align:top}
thead th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{background:none;font-weight:600;color:#3d4855}
.missing{color:#8a939e;font-style:italic}.note{color:#5a6470;font-size:12px}.na{color:#aab3bf}
.badge{display:inline-block;padding:0 6px;border-radius:8px;background:#e6e9ee;font-size:12px}
.badge.ok,.badge.int8{background:#d8eedf}.badge.bad,.badge.float{background:#f6dada}
.badge.a16w8,.badge.int16{background:#fdebd0}
.plots{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #e6e9ee;border-radius:4px;padding:4px}
.card.hist{width:300px}.card .note{margin:2px 4px}
svg.plot{background:#fff}svg.meter{vertical-align:middle}
.scroll{max-height:560px;overflow:auto}.scroll thead th{position:sticky;top:0}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}pre{font-size:12px;overflow:auto;max-height:400px}
"""

SCRIPT = """
(function(){
  var box=document.getElementById('find'),hits=document.getElementById('hits');
  function run(){
    var t=box.value.trim().toLowerCase(),n=0;
    document.querySelectorAll('table.find tbody tr, .card[data-name]').forEach(function(r){
      var s=(r.getAttribute('data-name')||r.textContent).toLowerCase(),hit=!t||s.indexOf(t)>=0;
      r.style.display=hit?'':'none';if(hit&&t)n++;});
    hits.textContent=t?n+' matching row(s)':'';
  }
  box.addEventListener('input',run);
  if(location.hash.length>1&&!document.getElementById(location.hash.slice(1))){
    box.value=decodeURIComponent(location.hash.slice(1));run();}
})();
"""
