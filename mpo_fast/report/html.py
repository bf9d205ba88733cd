"""`mpo-fast report RUN_DIR`: one self-contained HTML file (inline CSS and SVG, no script, no
network) that shows a run: evaluation results, training curves, the rubric timeline, reward-
hacking signals and a sample browser."""
from __future__ import annotations

import os
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from ..rubrics.atomic_file import write_text_atomic
from .run_data import RunData, load_run
from .sections import eval_section, overview_section, rubric_section, sample_browser, signals_section, training_section

REPORT_FILE = "report.html"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#243447;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
nav{padding:6px 24px;background:#e9edf2;position:sticky;top:0}nav a{margin-right:16px;color:#243447}
main{padding:8px 24px 40px;max-width:1100px}h2{border-bottom:2px solid #ccd;padding-bottom:3px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #dde;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f6}.ci{color:#666;font-size:12px}.meta{color:#666;font-weight:normal;font-size:12px}
.note{color:#666;font-style:italic}.warn{background:#fff3cd;border:1px solid #e0c36c;padding:6px 10px}
.chart-box{background:#fff;border:1px solid #dde;margin:10px 0;max-width:760px}svg.chart{width:100%;height:auto;display:block}
svg.bars{width:300px;height:90px}.chart-missing{padding:6px 10px}
pre{white-space:pre-wrap;word-break:break-word;background:#f4f4f4;padding:6px;margin:4px 0;max-height:360px;overflow:auto}
.rubric-version{background:#fff;border:1px solid #dde;padding:4px 14px;margin:12px 0}.desc{color:#444;font-size:13px}
details.step{background:#fff;border:1px solid #dde;margin:4px 0;padding:2px 8px}.sample{border-top:1px dashed #ccc;padding:4px 0}
.sample h5{margin:6px 0 2px}.added{color:#1a7f37}.removed{color:#c0392b}.reworded{color:#9a6700}table.scores td{font-size:12px;padding:1px 6px}
"""


def render_report(data: RunData) -> str:
    sections = [
        ("overview", "Overview", overview_section(data)),
        ("eval", "Evaluation", eval_section(data)),
        ("training", "Training", training_section(data)),
        ("rubrics", "Rubric timeline", rubric_section(data)),
        ("signals", "Reward-hacking signals", signals_section(data)),
        ("samples", "Sample browser (best, median, worst per step)", sample_browser(data)),
    ]
    nav = "".join(f'<a href="#{key}">{escape(title.split(" (")[0])}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{escape(title)}</h2>{html}</section>' for key, title, html in sections)
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>MPO run {escape(data.directory.name)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
            f"<header><h1>MPO run: {escape(data.directory.name)}</h1><div class=meta>{escape(data.task)} | written "
            f"{made} by mpo-fast report</div></header><nav>{nav}</nav><main>{body}</main></body></html>\n")


def write_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    data = load_run(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render_report(data))
    return path
