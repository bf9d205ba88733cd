"""The end-of-run summary: reward curve per rubric version, the rubric diff, a sample from the
first and the last step, judge failure rate and wall time. Built from the run directory's files
only, so it can be rendered for any finished (or interrupted) run.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rubrics import RubricStore
from ..rubrics.atomic_file import write_text_atomic
from .run_log import METRICS_FILE, SAMPLES_FILE, read_jsonl

_BLOCKS = " ▁▂▃▄▅▆▇█"


@dataclass
class RunSummary:
    output_dir: str
    steps: int
    wall_seconds: float | None
    reward_curve: list[tuple[int, int, float | None]]  # (step, rubric version, mean reward)
    by_version: dict[int, dict[str, Any]]
    rubric_diff: str
    rubric_versions: int
    judge_failures: int
    judgements: int
    sample_before: dict[str, Any] | None
    sample_after: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)
    # rubric quality-gate notes of every MPO step: {step, gate, item, reason, action}
    gate_notes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def judge_failure_rate(self) -> float:
        return self.judge_failures / self.judgements if self.judgements else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["judge_failure_rate"] = self.judge_failure_rate
        d["by_version"] = {str(k): v for k, v in self.by_version.items()}
        return d


def _best(samples: list[dict[str, Any]], step: int) -> dict[str, Any] | None:
    rows = [s for s in samples if s["step"] == step]
    if not rows:
        return None
    valid = [s for s in rows if s.get("reward") is not None]
    return max(valid, key=lambda s: s["reward"]) if valid else rows[0]


def summarise_run(output_dir: str | os.PathLike[str], *, wall_seconds: float | None = None, **extra) -> RunSummary:
    out = Path(output_dir)
    metrics = read_jsonl(out / METRICS_FILE)
    samples = read_jsonl(out / SAMPLES_FILE)
    curve = [(int(r["step"]), int(r["rubric_version"]), r.get("reward_mean")) for r in metrics]
    by_version: dict[int, dict[str, Any]] = {}
    for step, version, reward in curve:
        entry = by_version.setdefault(version, {"steps": [], "rewards": []})
        entry["steps"].append(step)
        if reward is not None:
            entry["rewards"].append(reward)
    for entry in by_version.values():
        rewards = entry["rewards"]
        entry["mean"] = sum(rewards) / len(rewards) if rewards else None
        entry["first_step"], entry["last_step"] = entry["steps"][0], entry["steps"][-1]
    diff = "(no rubric store)"
    versions = 0
    if (out / "rubrics" / "index.json").is_file():
        store = RubricStore(out / "rubrics")
        all_versions = store.versions()
        versions = len(all_versions)
        if all_versions:
            diff = store.diff(all_versions[0].version, all_versions[-1].version)
    failures = int(metrics[-1].get("judge_failed_total", 0)) if metrics else 0
    judgements = sum(int(r.get("samples", 0)) for r in metrics)
    gate_notes = [{"step": r["step"], **n} for r in metrics for n in r.get("meta_gate_notes") or ()]
    first = curve[0][0] if curve else None
    last = curve[-1][0] if curve else None
    return RunSummary(
        output_dir=str(out),
        steps=last or 0,
        wall_seconds=wall_seconds,
        reward_curve=curve,
        by_version=by_version,
        rubric_diff=diff,
        rubric_versions=versions,
        judge_failures=failures,
        judgements=judgements,
        sample_before=_best(samples, first) if first is not None else None,
        sample_after=_best(samples, last) if last is not None else None,
        extra=dict(extra),
        gate_notes=gate_notes,
    )


def sparkline(values: list[float | None]) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    return "".join(
        " " if v is None or not math.isfinite(v) else _BLOCKS[1 + int((v - lo) / span * (len(_BLOCKS) - 2))]
        for v in values
    )


def _sample_text(sample: dict[str, Any] | None, width: int = 600) -> str:
    if sample is None:
        return "(none)"
    reward = sample.get("reward")
    head = f"step {sample['step']}, rubric v{sample['rubric_version']}, reward " + (
        f"{reward:.3f}" if reward is not None else "failed")
    text = sample["response"].strip()
    return f"{head}\n{text[:width]}{'...' if len(text) > width else ''}"


def render_summary(summary: RunSummary, console=None) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    console = console or Console()
    table = Table(title="Reward per rubric version", show_lines=False)
    for col in ("rubric", "steps", "mean reward", "curve"):
        table.add_column(col)
    for version, entry in sorted(summary.by_version.items()):
        rewards = [r for s, v, r in summary.reward_curve if v == version]
        mean = entry["mean"]
        table.add_row(
            f"v{version}", f"{entry['first_step']}-{entry['last_step']}",
            f"{mean:.3f}" if mean is not None else "-", sparkline(rewards),
        )
    console.print(table)
    console.print(f"all steps: {sparkline([r for _, _, r in summary.reward_curve])}")
    console.print(Panel(summary.rubric_diff, title=f"Rubric diff (first -> latest of {summary.rubric_versions} versions)"))
    if summary.gate_notes:
        lines = [f"step {n['step']}: {n['gate']} {n['action']} " + ("the proposal" if n.get("item") is None else repr(n["item"]))
                 + f": {n['reason']}" for n in summary.gate_notes]
        console.print(Panel("\n".join(lines[-20:]), title=f"Rubric quality gates ({len(lines)} notes; last 20)"))
    console.print(Panel(_sample_text(summary.sample_before), title="Best sample of the first step"))
    console.print(Panel(_sample_text(summary.sample_after), title="Best sample of the last step"))
    rate = summary.judge_failure_rate
    line = (f"judge failures: {summary.judge_failures} of {summary.judgements} judgements ({rate:.1%})"
            f" | rubric versions: {summary.rubric_versions} | steps: {summary.steps}")
    if summary.wall_seconds is not None:
        line += f" | wall time: {summary.wall_seconds:.0f} s"
    for key, value in summary.extra.items():
        line += f" | {key}: {value}"
    # soft_wrap: figures someone will copy stay on one line whatever the terminal width
    console.print(line, soft_wrap=True)
    console.print(f"run directory: {summary.output_dir}", soft_wrap=True)


def write_summary(summary: RunSummary) -> Path:
    path = Path(summary.output_dir) / "summary.json"
    write_text_atomic(path, json.dumps(summary.to_dict(), indent=1, default=str) + "\n")
    return path
