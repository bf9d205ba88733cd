"""The chart descriptions (Chart, Series, Span, Marker) and a small built-in SVG writer for them:
the fallback when matplotlib (the `[eval]` extra, mpl_chart.py) is not installed, so that a base
install of mpo_fast still writes a report with plots. charts.py picks the writer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
SPAN_COLOURS = ("#e8eef7", "#f7efe2")
_W, _H = 640, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 36, 34  # top: a title row, then a legend row


@dataclass
class Series:
    name: str
    points: list[tuple[float, float | None]]  # (x, y); y None: a gap (e.g. every judgement failed)
    colour: str | None = None
    dashed: bool = False


@dataclass
class Span:
    start: float
    end: float
    label: str


@dataclass
class Marker:
    x: float
    label: str
    colour: str = "#444"


@dataclass
class Chart:
    title: str
    series: list[Series]
    y_label: str = ""
    x_label: str = "step"
    spans: list[Span] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 5 x 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


def svg_line_chart(chart: Chart) -> str:
    xs = [x for s in chart.series for x, _ in s.points] + [m.x for m in chart.markers]
    xs += [v for sp in chart.spans for v in (sp.start, sp.end)]
    ys = [y for s in chart.series for _, y in s.points if y is not None and math.isfinite(y)]
    title = f'<text x="{_LEFT}" y="15" class="chart-title">{escape(chart.title)}</text>'
    if not xs or not ys:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} 60" class="chart" role="img">{title}'
                f'<text x="{_LEFT}" y="42" class="chart-empty">no data logged</text></svg>')
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.08 or (abs(lo) * 0.1 or 1.0)
    # Non-negative data (rates, lengths, seconds) never gets a negative axis.
    y0, y1 = (lo - pad if lo - pad >= 0 or lo < 0 else 0.0), hi + pad
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def px(x: float) -> float:
        return _LEFT + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return _TOP + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" class="chart" role="img">',
             f"<title>{escape(chart.title)}</title>", title]
    for i, sp in enumerate(chart.spans):
        a, b = px(max(sp.start, x0)), px(min(sp.end, x1))
        parts.append(f'<rect class="span" x="{a:.1f}" y="{_TOP}" width="{max(b - a, 1):.1f}" height="{ph}" '
                     f'fill="{SPAN_COLOURS[i % 2]}"><title>{escape(sp.label)}</title></rect>')
        parts.append(f'<text x="{a + 3:.1f}" y="{_TOP + 11}" class="span-label">{escape(sp.label)}</text>')
    for t in nice_ticks(y0, y1):
        y = py(t)
        parts.append(f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{_LEFT - 4}" y="{y + 3:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    for t in nice_ticks(x0, x1, 8):
        x = px(t)
        parts.append(f'<text x="{x:.1f}" y="{_H - _BOTTOM + 13}" text-anchor="middle" class="tick">{_fmt(t)}</text>')
    parts.append(f'<rect x="{_LEFT}" y="{_TOP}" width="{pw}" height="{ph}" class="frame" fill="none"/>')
    parts.append(f'<text x="{_LEFT + pw / 2:.1f}" y="{_H - 4}" text-anchor="middle" class="axis">{escape(chart.x_label)}</text>')
    if chart.y_label:
        parts.append(f'<text transform="translate(12 {_TOP + ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
                     f'class="axis">{escape(chart.y_label)}</text>')
    for m in chart.markers:
        x = px(m.x)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{_TOP + ph}" stroke="{m.colour}" '
                     f'stroke-dasharray="4 3" class="marker"><title>{escape(m.label)}</title></line>')
        parts.append(f'<path d="M{x - 4:.1f},{_TOP} L{x + 4:.1f},{_TOP} L{x:.1f},{_TOP + 6} Z" fill="{m.colour}">'
                     f"<title>{escape(m.label)}</title></path>")
    for i, s in enumerate(chart.series):
        colour = s.colour or PALETTE[i % len(PALETTE)]
        runs, run = [], []
        for x, y in s.points:  # a gap (None) breaks the line
            if y is None or not math.isfinite(y):
                if run:
                    runs.append(run)
                run = []
            else:
                run.append((px(x), py(y)))
        if run:
            runs.append(run)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        for r in runs:
            if len(r) == 1:
                parts.append(f'<circle cx="{r[0][0]:.1f}" cy="{r[0][1]:.1f}" r="2.5" fill="{colour}"/>')
            else:
                d = " ".join(f"{'M' if j == 0 else 'L'}{x:.1f},{y:.1f}" for j, (x, y) in enumerate(r))
                parts.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.8"{dash} class="line">'
                             f"<title>{escape(s.name)}</title></path>")
    if len(chart.series) > 1:
        lx = _LEFT
        for i, s in enumerate(chart.series):
            colour = s.colour or PALETTE[i % len(PALETTE)]
            parts.append(f'<rect x="{lx}" y="{_TOP - 10}" width="10" height="3" fill="{colour}"/>'
                         f'<text x="{lx + 13}" y="{_TOP - 6}" class="legend">{escape(s.name)}</text>')
            lx += 20 + 6.5 * len(s.name)
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(title: str, labels: Sequence[str], values: Sequence[float], *, width: int = 300, height: int = 90) -> str:
    """A small bar chart (a histogram of per-item scores)."""
    top, bottom = 16, 16
    n = max(len(values), 1)
    peak = max([v for v in values if math.isfinite(v)] or [0.0]) or 1.0
    bw = (width - 8) / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="bars" role="img">',
             f"<title>{escape(title)}</title>", f'<text x="4" y="11" class="tick">{escape(title)}</text>']
    for i, (label, v) in enumerate(zip(labels, values)):
        h = (height - top - bottom) * (v / peak if math.isfinite(v) else 0)
        x = 4 + i * bw
        parts.append(f'<rect x="{x + 1:.1f}" y="{height - bottom - h:.1f}" width="{max(bw - 2, 1):.1f}" height="{h:.1f}" '
                     f'fill="{PALETTE[0]}"><title>{escape(label)}: {v:g}</title></rect>')
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{height - 4}" text-anchor="middle" class="tick">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
