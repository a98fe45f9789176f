"""Small inline SVG plots for the HTML report, written by hand so the page needs nothing but a browser.

Why not matplotlib or a JS chart library: the report must be one self-contained file that opens offline (no
CDN, no network) and stays small for a 1,000-node model; a few hundred bytes of SVG per plot does that, and
keeps onnxopt free of a plotting dependency. Every function returns one ``<svg>`` element as a string, with
a ``<title>`` (what a screen reader and a hover show) and text escaped; numbers are rounded so the same
report gives the same bytes.

- ``hbars``: horizontal bars, one per label (pass times, after-as-percent-of-before);
- ``paired_bars``: two bars per label (recovery error before and after, per layer);
- ``histogram``: a tensor's calibration histogram with the chosen range marked and what it clips shaded;
- ``scatter``: points with the Pareto front drawn and one point highlighted (the search's chosen plan);
- ``meter``: a tiny bar for a table cell (a region's sensitivity, the share of channels a layer keeps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

__all__ = ["hbars", "histogram", "meter", "nice_ticks", "paired_bars", "scatter"]

BLUE, ORANGE, GREY, RED, GREEN = "#3b6ea8", "#e08a2c", "#9aa3ad", "#c0392b", "#2e8b57"
LOG_SPAN = 30.0  # scatter: y spanning more than this factor is drawn on a log scale
_FONT = 'font-family="sans-serif" font-size="11"'


def _f(v: float) -> str:
    """A coordinate, rounded: short and deterministic."""
    return f"{v:.1f}".rstrip("0").rstrip(".") if math.isfinite(v) else "0"


def _label(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    a = abs(v)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e4, "k")):
        if a >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.2g}" if a < 1e-3 else f"{v:.4g}"


def _svg(width: int, height: int, title: str, body: list[str], cls: str = "plot") -> str:
    return (f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img"><title>{escape(title)}</title>{"".join(body)}</svg>')


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else [0.0]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, v = [], start
    while v <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(v, 12))
        v += step
    return ticks


def hbars(items: Sequence[tuple[str, float]], title: str, unit: str = "", width: int = 560,
          ref: float | None = None, color: str = BLUE) -> str:
    """One horizontal bar per (label, value); ``ref`` draws a dashed line (e.g. 100 % of before)."""
    items = [(str(k), float(v)) for k, v in items if v is not None and math.isfinite(float(v))]
    left, row, top = 190, 18, 8
    height = top + row * max(len(items), 1) + 22
    vmax = max([v for _, v in items] + [ref or 0.0, 1e-30])
    scale = (width - left - 70) / vmax
    body = []
    for i, (k, v) in enumerate(items):
        y = top + i * row
        short = k if len(k) <= 30 else k[:28] + "…"
        body.append(f'<text x="{left - 6}" y="{_f(y + 12)}" text-anchor="end" {_FONT}>{escape(short)}</text>'
                    f'<rect x="{left}" y="{_f(y + 3)}" width="{_f(max(v, 0) * scale)}" height="{row - 6}" '
                    f'fill="{color}"><title>{escape(k)}: {escape(_label(v))}{escape(unit)}</title></rect>'
                    f'<text x="{_f(left + max(v, 0) * scale + 4)}" y="{_f(y + 12)}" {_FONT}>'
                    f'{escape(_label(v))}{escape(unit)}</text>')
    if ref is not None:
        x = left + ref * scale
        body.append(f'<line x1="{_f(x)}" y1="{top}" x2="{_f(x)}" y2="{_f(height - 18)}" stroke="{GREY}" '
                    f'stroke-dasharray="4 3"/><text x="{_f(x)}" y="{_f(height - 6)}" text-anchor="middle" '
                    f'{_FONT}>{escape(_label(ref))}{escape(unit)}</text>')
    return _svg(width, height, title, body)


def paired_bars(labels: Sequence[str], first: Sequence[float], second: Sequence[float], title: str,
                names: tuple[str, str] = ("before", "after"), width: int = 560) -> str:
    """Two bars per label (``first`` grey, ``second`` blue), with a legend."""
    left, row, top = 190, 24, 22
    height = top + row * max(len(labels), 1) + 8
    vals = [float(v) for v in [*first, *second] if v is not None and math.isfinite(float(v))]
    scale = (width - left - 70) / max(vals + [1e-30])
    body = [f'<rect x="{left}" y="4" width="10" height="10" fill="{GREY}"/>'
            f'<text x="{left + 14}" y="13" {_FONT}>{escape(names[0])}</text>'
            f'<rect x="{left + 80}" y="4" width="10" height="10" fill="{BLUE}"/>'
            f'<text x="{left + 94}" y="13" {_FONT}>{escape(names[1])}</text>']
    for i, (k, a, b) in enumerate(zip(labels, first, second, strict=True)):
        y = top + i * row
        short = k if len(k) <= 30 else k[:28] + "…"
        body.append(f'<text x="{left - 6}" y="{_f(y + 14)}" text-anchor="end" {_FONT}>{escape(short)}</text>')
        for j, (v, color) in enumerate(((a, GREY), (b, BLUE))):
            if v is None or not math.isfinite(float(v)):
                continue
            w = max(float(v), 0.0) * scale
            body.append(f'<rect x="{left}" y="{_f(y + 2 + j * 10)}" width="{_f(w)}" height="9" fill="{color}">'
                        f'<title>{escape(k)} {escape(names[j])}: {escape(_label(float(v)))}</title></rect>'
                        f'<text x="{_f(left + w + 4)}" y="{_f(y + 10 + j * 10)}" {_FONT}>'
                        f'{escape(_label(float(v)))}</text>')
    return _svg(width, height, title, body)


def histogram(lo: float, hi: float, counts: Sequence[int], low: float, high: float, title: str,
              width: int = 300, height: int = 130) -> str:
    """Bars of ``counts`` over [lo, hi] (log-scaled heights, so tails show), the chosen range [low, high] as two
    red lines, the parts outside it shaded."""
    pad_l, pad_r, pad_t, pad_b = 8, 8, 18, 30
    n = max(len(counts), 1)
    xlo, xhi = min(lo, low), max(hi, high)
    if xhi <= xlo:
        xhi = xlo + 1.0
    sx = (width - pad_l - pad_r) / (xhi - xlo)
    ph = height - pad_t - pad_b
    cmax = math.log1p(max(list(counts) + [1]))

    def x(v: float) -> float:
        return pad_l + (v - xlo) * sx

    shown = title if len(title) <= 44 else title[:42] + "…"
    body = [f'<text x="{pad_l}" y="12" {_FONT} font-weight="bold">{escape(shown)}</text>']
    for side_lo, side_hi in ((xlo, low), (high, xhi)):
        if side_hi > side_lo:
            body.append(f'<rect x="{_f(x(side_lo))}" y="{pad_t}" width="{_f((side_hi - side_lo) * sx)}" '
                        f'height="{ph}" fill="{RED}" fill-opacity="0.08"/>')
    w = (hi - lo) / n
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        h = ph * math.log1p(c) / cmax
        body.append(f'<rect x="{_f(x(lo + i * w))}" y="{_f(pad_t + ph - h)}" width="{_f(max(w * sx - 0.3, 0.5))}" '
                    f'height="{_f(h)}" fill="{BLUE}"/>')
    for v in (low, high):
        body.append(f'<line x1="{_f(x(v))}" y1="{pad_t - 2}" x2="{_f(x(v))}" y2="{pad_t + ph}" stroke="{RED}" '
                    f'stroke-width="1.5"/>')
    base = pad_t + ph
    body.append(f'<line x1="{pad_l}" y1="{base}" x2="{width - pad_r}" y2="{base}" stroke="{GREY}"/>')
    body.append(f'<text x="{pad_l}" y="{base + 13}" {_FONT}>{escape(_label(xlo))}</text>'
                f'<text x="{width - pad_r}" y="{base + 13}" text-anchor="end" {_FONT}>{escape(_label(xhi))}</text>'
                f'<text x="{width / 2}" y="{base + 26}" text-anchor="middle" {_FONT} fill="{RED}">range '
                f'[{escape(_label(low))}, {escape(_label(high))}]</text>')
    return _svg(width, height, f"{title}: histogram over [{_label(lo)}, {_label(hi)}], chosen range "
                f"[{_label(low)}, {_label(high)}]", body, cls="plot hist")


def _pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both x and y (lower is better on both), by x."""
    front, best = [], math.inf
    for px, py in sorted(points):
        if py < best:
            front.append((px, py))
            best = py
    return front


def scatter(points: Sequence[tuple[float, float, str, bool]], xlabel: str, ylabel: str, title: str,
            width: int = 420, height: int = 280, hline: float | None = None, hline_label: str = "") -> str:
    """(x, y, label, chosen) points, lower-left best; the Pareto front as a step line, chosen points ringed.

    y is drawn on a log scale when it spans more than ``LOG_SPAN`` (a search's error runs from many times the
    budget down to nearly nothing), floored at ``1e-4`` of its largest value; ``hline`` draws a dashed level
    (the budget)."""
    pts = [(float(a), float(b), str(lab), bool(c)) for a, b, lab, c in points
           if a is not None and b is not None and math.isfinite(float(a)) and math.isfinite(float(b))]
    pad_l, pad_r, pad_t, pad_b = 56, 14, 22, 40
    xs, ys = [p[0] for p in pts] or [0.0, 1.0], [p[1] for p in pts] or [0.0, 1.0]
    if hline is not None:
        ys = [*ys, hline]
    positive = [y for y in ys if y > 0]
    log = bool(positive) and min(ys) >= 0 and max(ys) / min(positive) > LOG_SPAN  # zeros sit on the floor
    floor = max(min(positive), max(ys) * 1e-4) if log else 0.0

    def ty(v: float) -> float:  # y as drawn
        return math.log10(max(v, floor)) if log else v

    xlo, xhi, ylo, yhi = min(xs), max(xs), min(map(ty, ys)), max(map(ty, ys))
    xm, ym = (xhi - xlo) * 0.06 or abs(xhi) * 0.1 or 1.0, (yhi - ylo) * 0.06 or abs(yhi) * 0.1 or 1.0
    xlo, xhi, ylo, yhi = xlo - xm, xhi + xm, ylo - ym, yhi + ym
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b

    def px(v: float) -> float:
        return pad_l + (v - xlo) / (xhi - xlo) * pw

    def py(v: float) -> float:
        return pad_t + ph - (ty(v) - ylo) / (yhi - ylo) * ph

    body = [f'<text x="{pad_l}" y="14" {_FONT} font-weight="bold">{escape(title)}</text>',
            f'<rect x="{pad_l}" y="{pad_t}" width="{pw}" height="{ph}" fill="none" stroke="{GREY}"/>']
    for t in nice_ticks(xlo, xhi):
        body.append(f'<text x="{_f(px(t))}" y="{pad_t + ph + 13}" text-anchor="middle" {_FONT}>'
                    f'{escape(_label(t))}</text>')
    yticks = [10.0 ** k for k in range(math.ceil(ylo), math.floor(yhi) + 1)] if log else nice_ticks(ylo, yhi)
    for t in yticks:
        body.append(f'<text x="{pad_l - 4}" y="{_f(py(t) + 4)}" text-anchor="end" {_FONT}>{escape(_label(t))}'
                    f'</text><line x1="{pad_l}" y1="{_f(py(t))}" x2="{pad_l + pw}" y2="{_f(py(t))}" '
                    f'stroke="{GREY}" stroke-opacity="0.25"/>')
    body.append(f'<text x="{pad_l + pw / 2}" y="{height - 8}" text-anchor="middle" {_FONT}>{escape(xlabel)}</text>'
                f'<text x="12" y="{pad_t + ph / 2}" text-anchor="middle" {_FONT} '
                f'transform="rotate(-90 12 {_f(pad_t + ph / 2)})">{escape(ylabel + (" (log)" if log else ""))}</text>')
    if hline is not None:
        body.append(f'<line x1="{pad_l}" y1="{_f(py(hline))}" x2="{pad_l + pw}" y2="{_f(py(hline))}" stroke="{RED}" '
                    f'stroke-dasharray="5 3"/><text x="{pad_l + pw - 4}" y="{_f(py(hline) - 4)}" text-anchor="end" '
                    f'{_FONT} fill="{RED}">{escape(hline_label)}</text>')
    front = _pareto([(a, b) for a, b, _, _ in pts])
    if len(front) > 1:
        path = [f"M{_f(px(front[0][0]))},{_f(py(front[0][1]))}"]
        for (_, y0), (x1, y1) in zip(front, front[1:], strict=False):
            path.append(f"L{_f(px(x1))},{_f(py(y0))}L{_f(px(x1))},{_f(py(y1))}")
        body.append(f'<path d="{"".join(path)}" fill="none" stroke="{ORANGE}" stroke-width="1.5"/>')
    on_front = set(front)
    for a, b, lab, chosen in pts:
        color = ORANGE if (a, b) in on_front else BLUE
        body.append(f'<circle cx="{_f(px(a))}" cy="{_f(py(b))}" r="3.5" fill="{color}"><title>{escape(lab)}: '
                    f'{escape(xlabel)} {escape(_label(a))}, {escape(ylabel)} {escape(_label(b))}</title></circle>')
        if chosen:
            body.append(f'<circle class="chosen" cx="{_f(px(a))}" cy="{_f(py(b))}" r="8" fill="none" '
                        f'stroke="{RED}" stroke-width="2"/><text x="{_f(px(a) + 10)}" y="{_f(py(b) - 8)}" '
                        f'{_FONT} fill="{RED}">chosen</text>')
    return _svg(width, height, f"{title}: {len(pts)} points, {len(front)} on the Pareto front", body)


def meter(fraction: float | None, width: int = 110, height: int = 12, color: str = BLUE, text: str = "") -> str:
    """A bar filled to ``fraction`` (clamped to [0, 1]) for a table cell; ``text`` is its hover title."""
    if fraction is None or not math.isfinite(float(fraction)):
        return ""
    f = min(max(float(fraction), 0.0), 1.0)
    return (f'<svg class="meter" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><title>{escape(text or _label(f))}</title>'
            f'<rect width="{width}" height="{height}" fill="#e6e9ee"/>'
            f'<rect width="{_f(f * width)}" height="{height}" fill="{color}"/></svg>')
