"""What a chart shows, independent of who draws it: series of (step, value) points with gaps,
shaded spans (rubric versions) and vertical markers (rubric swaps, hacking signals). sections.py
builds these; mpl_chart.py draws them with matplotlib."""
from __future__ import annotations

from dataclasses import dataclass, field

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
SPAN_COLOURS = ("#e8eef7", "#f7efe2")


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
