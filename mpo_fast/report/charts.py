"""Which chart writer the report uses: matplotlib when installed (`pip install 'mpo-fast[eval]'`),
else the small built-in SVG writer, so a base install still gets a report with plots."""
from __future__ import annotations

import importlib.util
import logging

from .svg_chart import Chart, svg_bars, svg_line_chart

log = logging.getLogger("mpo_fast")

# "auto" | "matplotlib" | "svg"; tests set it to check both writers.
BACKEND = "auto"


def _use_matplotlib() -> bool:
    if BACKEND == "auto":
        return importlib.util.find_spec("matplotlib") is not None
    return BACKEND == "matplotlib"


def line_chart(chart: Chart) -> str:
    if _use_matplotlib():
        from .mpl_chart import mpl_line_chart

        try:
            return mpl_line_chart(chart)
        except (ValueError, RuntimeError) as exc:
            # Seen in tests: matplotlib 3.11's tick locator fails ("arange: cannot compute length")
            # on the reward chart when the report is drawn in the process that just trained the
            # run (not when drawn in a fresh process; cause not found). The chart is still drawn.
            log.warning("matplotlib could not draw %r (%s); drawing it with the built-in SVG writer", chart.title, exc)
    return svg_line_chart(chart)


def bars(title: str, labels, values) -> str:
    if _use_matplotlib():
        from .mpl_chart import mpl_bars

        try:
            return mpl_bars(title, labels, values)
        except (ValueError, RuntimeError) as exc:
            log.warning("matplotlib could not draw %r (%s); drawing it with the built-in SVG writer", title, exc)
    return svg_bars(title, labels, values)
