"""The report's charts drawn by matplotlib (the `[eval]` extra) as inline SVG: the figure API only
(no pyplot, so no global state and no GUI backend), text kept as text (`svg.fonttype: none`, ~3x
smaller files), a fixed hash salt and no date so the same run gives the same file.

Artists carry `gid`s that become element ids in the SVG (`reward-per-step-span-rubric-v2`,
`...-marker-swap-4`, `...-line-mean-reward`), which is what the tests and a reader's browser
tools find them by.

Limits are set here, never left to autoscaling, from the finite values only: a metric can be NaN,
inf, missing or constant for a whole run, and matplotlib's singular-limit handling and tick
arithmetic then depend on its version (a span of 1e308 - -1e308 overflows to inf). A constant
series gets +-10% of its value (+-1 at 0), one step gets +-1 step, no data gets [0, 1] and a note.
(The "arange: cannot compute length" the report once hit was not this: mpo_fast._C left MMX state
behind and the next x87 fmod returned NaN; see CMakeLists.txt and tests/test_native_fpu_state.py.)
"""
from __future__ import annotations

import io
import math
import re

from .chart_spec import PALETTE, SPAN_COLOURS, Chart

_RC = {"svg.fonttype": "none", "svg.hashsalt": "mpo-fast", "font.size": 8, "axes.titlesize": 9,
       "axes.spines.top": False, "axes.spines.right": False}
_PROLOG = re.compile(r"^.*?(?=<svg\b)", re.S)
_SIZE = re.compile(r'\s(width|height)="[^"]*"')


# |values| above this count as missing: limits of +-1e308 overflow the tick arithmetic to inf.
LARGEST = 1e300


def usable(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and abs(v) <= LARGEST)


def axis_limits(values: list[float], *, pad: float = 0.05, floor_zero: bool = False) -> tuple[float, float]:
    """(low, high) covering `values` (all usable) with `pad` of the span either side; a span of
    (numerically) zero widens to +-10% of the value, or +-1 at 0; no values give (0, 1)."""
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    span = hi - lo
    if span <= 1e-12 * max(abs(lo), abs(hi)) or span == 0:
        half = 0.1 * abs(hi) or 1.0
        low, high = lo - half, hi + half
    else:
        low, high = lo - pad * span, hi + pad * span
    if floor_zero and lo >= 0 > low:
        low = 0.0  # rates, lengths, seconds: never a negative axis
    return low, high


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _to_svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    svg = _PROLOG.sub("", buffer.getvalue(), count=1)  # drop <?xml ...?> and the DOCTYPE: inlined in HTML
    head, rest = svg.split(">", 1)
    return _SIZE.sub("", head) + ' class="chart" role="img">' + rest  # the page's CSS sizes it


def mpl_line_chart(chart: Chart) -> str:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(7.2, 2.7))
        ax = fig.add_subplot()
        key = slug(chart.title.split(" (")[0])  # ids stay unique across the page's charts
        series = [[(x, y if usable(y) else math.nan) for x, y in s.points if usable(x)] for s in chart.series]
        ys = [y for points in series for _, y in points if not math.isnan(y)]
        spans = [sp for sp in chart.spans if usable(sp.start) and usable(sp.end)]
        markers = [mk for mk in chart.markers if usable(mk.x)]
        xs_all = ([x for points in series for x, _ in points] + [sp.start for sp in spans] + [sp.end for sp in spans]
                  + [mk.x for mk in markers])
        for i, span in enumerate(spans):
            ax.axvspan(span.start, span.end, color=SPAN_COLOURS[i % 2], zorder=0, lw=0, gid=f"{key}-span-{slug(span.label)}")
            ax.text(span.start, 0.98, " " + span.label, transform=ax.get_xaxis_transform(), va="top", fontsize=7,
                    color="#555")
        for marker in markers:
            kind = "signal" if marker.colour != "#555" else "swap"
            ax.axvline(marker.x, color=marker.colour, ls="--", lw=1, zorder=1, gid=f"{key}-marker-{kind}-{marker.x:g}")
        for i, (s, points) in enumerate(zip(chart.series, series)):
            xs = [x for x, _ in points]
            vals = [y for _, y in points]  # nan: a gap in the line
            ax.plot(xs, vals, ls="--" if s.dashed else "-", marker="o" if len(xs) < 3 else None, ms=3, lw=1.6,
                    color=s.colour or PALETTE[i % len(PALETTE)], label=s.name, gid=f"{key}-line-{slug(s.name)}")
        if not ys:
            ax.text(0.5, 0.5, "no data logged", transform=ax.transAxes, ha="center", color="#888")
        ax.set_xlim(*axis_limits(xs_all, pad=0.02))
        ax.set_ylim(*axis_limits(ys, floor_zero=True))
        ax.set_title(chart.title, loc="left")
        ax.set_xlabel(chart.x_label)
        if chart.y_label:
            ax.set_ylabel(chart.y_label)
        ax.grid(axis="y", color="#eee")
        if len(chart.series) > 1 and ys:
            ax.legend(fontsize=7, frameon=False, loc="best")
        # Fixed margins: they fit these labels (7-9 pt) and give every chart the same plot area.
        fig.subplots_adjust(left=0.09, right=0.985, top=0.88, bottom=0.16)
        return _to_svg(fig)


def mpl_bars(title: str, labels, values) -> str:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({**_RC, "font.size": 7}):
        fig = Figure(figsize=(2.6, 1.1))
        ax = fig.add_subplot()
        values = [float(v) if usable(v) else 0.0 for v in values]
        ax.bar(range(len(values)), values, color=PALETTE[0], gid=f"bars-{slug(title)}")
        ax.set_ylim(0, max(values, default=0.0) or 1.0)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks([])
        ax.set_title(title, loc="left", fontsize=7)
        fig.subplots_adjust(left=0.04, right=0.98, top=0.8, bottom=0.22)
        return _to_svg(fig).replace('class="chart"', 'class="bars"', 1)
