"""The run report: `mpo-fast report RUN_DIR` writes one self-contained HTML file (html.py)."""
from .html import render_report, write_report
from .run_data import RunData, load_run

__all__ = ["RunData", "load_run", "render_report", "write_report"]
