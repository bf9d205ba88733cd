"""The report's charts: drawn by matplotlib (`pip install 'mpo-fast[eval]'`, mpl_chart.py). Without
matplotlib the report is still written, with a note in place of each chart saying how to get them."""
from __future__ import annotations

import importlib.util
from html import escape

from .chart_spec import Chart

INSTALL_HINT = "pip install 'mpo-fast[eval]'"


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _missing(title: str) -> str:
    return (f'<p class="note chart-missing">Chart &ldquo;{escape(title)}&rdquo; not drawn: matplotlib is not '
            f"installed ({escape(INSTALL_HINT)}).</p>")


def line_chart(chart: Chart) -> str:
    if not matplotlib_available():
        return _missing(chart.title)
    from .mpl_chart import mpl_line_chart

    return mpl_line_chart(chart)


def bars(title: str, labels, values) -> str:
    if not matplotlib_available():
        return _missing(title)
    from .mpl_chart import mpl_bars

    return mpl_bars(title, labels, values)
