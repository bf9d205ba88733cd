"""matplotlib draws every chart, whatever a run logged: constant, single-point, NaN / inf / huge,
missing and empty series. Limits come from the finite values (mpl_chart.axis_limits), so the tick
locator always gets a finite, non-degenerate range."""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("matplotlib")

from mpo_fast.report.chart_spec import Chart, Marker, Series, Span  # noqa: E402
from mpo_fast.report.mpl_chart import axis_limits, mpl_bars, mpl_line_chart  # noqa: E402

NS = "{http://www.w3.org/2000/svg}"
VERTEX = re.compile(r"[ML]\s*(-?[\d.]+)[ ,](-?[\d.]+)")


def _draw(*series: Series, **kw) -> ET.Element:
    svg = mpl_line_chart(Chart("Metric", list(series), "unit", **kw))
    assert svg.startswith("<svg") and 'class="chart"' in svg
    return ET.fromstring(svg)


def _vertices(root: ET.Element, name: str) -> list[tuple[float, float]]:
    group = next(e for e in root.iter() if e.get("id") == f"metric-line-{name}")
    d = next(group.iter(f"{NS}path")).get("d")
    return [(float(x), float(y)) for x, y in VERTEX.findall(d)]


def _texts(root: ET.Element) -> list[str]:
    return [t.text.strip() for t in root.iter(f"{NS}text") if t.text and t.text.strip()]


def _y_ticks(root: ET.Element) -> list[str]:
    axis = next(e for e in root.iter() if e.get("id") == "matplotlib.axis_2")
    return [t.text.strip() for t in axis.iter(f"{NS}text") if t.text and t.text.strip() and t.text.strip() != "unit"]


@pytest.mark.parametrize("value", [0.0, 3.0, -2.5, 1e-9, 123456.0])
def test_constant_series(value):
    root = _draw(Series("m", [(s, value) for s in range(1, 6)]))
    vertices = _vertices(root, "m")
    assert len(vertices) == 5 and len({y for _, y in vertices}) == 1  # one flat line
    assert len(_y_ticks(root)) >= 3  # limits +-10% (+-1 at 0): a real axis around the value


def test_single_point():
    root = _draw(Series("m", [(7, 0.25)]))
    (v,) = _vertices(root, "m")
    assert all(math.isfinite(c) for c in v) and len(_y_ticks(root)) >= 2


def test_nan_inf_huge_and_missing_values_are_gaps():
    points = [(1, 1.0), (2, math.nan), (3, 2.0), (4, None), (5, math.inf), (6, -1e308), (7, 3.0), (math.nan, 4.0)]
    root = _draw(Series("m", points), Series("all-bad", [(1, math.nan), (2, math.inf)]),
                 spans=[Span(0.5, 3.5, "v1"), Span(math.nan, 9, "broken")], markers=[Marker(math.inf, "x")])
    vertices = _vertices(root, "m")
    assert len(vertices) == 3  # steps 1, 3, 7: everything else is a gap
    assert all(math.isfinite(c) for v in vertices for c in v)
    ys = [y for _, y in vertices]
    assert ys[0] > ys[1] > ys[2]  # SVG y grows downwards: 1 < 2 < 3 kept their order on a sane axis
    assert len(_y_ticks(root)) >= 2


def test_empty_and_all_missing_series():
    for series in ([], [Series("m", [])], [Series("m", [(1, None), (2, math.nan)])]):
        root = _draw(*series)
        assert "no data logged" in _texts(root)


@pytest.mark.parametrize("values, expected", [
    ([], (0.0, 1.0)),
    ([5.0], (4.5, 5.5)),
    ([0.0, 0.0], (-1.0, 1.0)),
    ([1e9, 1e9 + 1e-7], (1e9 - 1e8, 1e9 + 1e8 + 1e-7)),  # a span of rounding noise is a constant
    ([0.0, 10.0], (-0.5, 10.5)),
])
def test_axis_limits(values, expected):
    assert axis_limits(values) == pytest.approx(expected)
    lo, hi = axis_limits(values)
    assert math.isfinite(lo) and math.isfinite(hi) and hi > lo


def test_axis_limits_floor_zero_keeps_nonnegative_metrics_off_negative_axes():
    assert axis_limits([0.0, 10.0], floor_zero=True) == (0.0, 10.5)
    assert axis_limits([-1.0, 1.0], floor_zero=True) == (-1.1, 1.1)


def test_bars_with_missing_values():
    root = ET.fromstring(mpl_bars("scores of item 1", ["0", "1", "2"], [0.0, math.nan, 0.0]))
    assert root.get("class") == "bars" and any(e.get("id") == "bars-scores-of-item-1" for e in root.iter())
