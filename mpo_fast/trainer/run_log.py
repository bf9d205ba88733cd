"""What a run leaves behind and shows: metrics.jsonl and samples.jsonl (always), TensorBoard and
W&B (when installed and asked for), and a rich progress display.

Each JSONL line carries its `step`. On resume, lines of steps after the checkpoint are dropped
(they belong to the part of the run being redone), so the files read as one uninterrupted run.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from ..rubrics.atomic_file import write_text_atomic
from .config import MPOConfig

log = logging.getLogger("mpo_fast")

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
CONFIG_FILE = "config.yaml"


def _finite(value: Any) -> Any:
    # JSON has no NaN/inf: write null so every line stays parseable by strict readers.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    file = Path(path)
    if not file.is_file():
        return []
    rows = []
    for line in file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write
    return rows


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep only lines with step <= last_step (atomically)."""
    if not path.is_file():
        return
    kept = [json.dumps(r) for r in read_jsonl(path) if int(r.get("step", 0)) <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _wanted(report_to: list[str], name: str) -> bool:
    if "none" in report_to:
        return False
    installed = importlib.util.find_spec(name) is not None
    if name in report_to and not installed:
        raise ImportError(f"log.report_to names {name!r} but it is not installed: pip install {name} (or remove it)")
    return installed and (name in report_to or "auto" in report_to)


class RunLog:
    def __init__(self, config: MPOConfig, *, resume_step: int | None = None) -> None:
        self.dir = Path(config.output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / METRICS_FILE
        self.samples_path = self.dir / SAMPLES_FILE
        if resume_step is None:
            for path in (self.metrics_path, self.samples_path):
                if path.exists():
                    path.unlink()
        else:
            truncate_jsonl(self.metrics_path, resume_step)
            truncate_jsonl(self.samples_path, resume_step)
        write_text_atomic(self.dir / CONFIG_FILE, config.to_yaml())
        self._tb = None
        self._wandb = None
        report_to = config.log.report_to
        if _wanted(report_to, "tensorboard"):
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
        if _wanted(report_to, "wandb"):
            import wandb

            self._wandb = wandb.init(
                project=config.log.wandb_project, dir=str(self.dir), config=config.to_dict(),
                resume="allow" if resume_step is not None else None, name=self.dir.name,
            )

    def _append(self, path: Path, rows: Iterable[dict[str, Any]]) -> None:
        with path.open("a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(_finite(row), ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def metrics(self, row: dict[str, Any]) -> None:
        self._append(self.metrics_path, [row])
        step = int(row["step"])
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def samples(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._append(self.samples_path, rows)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


class Progress:
    """A rich progress bar with one summary line per step; plain lines when not on a terminal."""

    def __init__(self, total: int, *, enabled: bool, start: int = 0) -> None:
        self.enabled = enabled
        self._progress = None
        self._task = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        if self.console.is_terminal:
            self._progress = RichProgress(
                TextColumn("[bold]MPO[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.description}"), console=self.console, transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=total, completed=start)

    def step(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        reward = row.get("reward_mean")
        parts = [
            f"step {row['step']}",
            f"rubric v{row['rubric_version']}",
            f"reward {reward:.3f}" if isinstance(reward, float) and math.isfinite(reward) else "reward -",
            f"loss {row.get('loss', float('nan')):.4f}",
            f"kl {row.get('kl', 0.0):.4f}",
            f"len {row.get('response_length_mean', 0):.0f}",
            f"fail {row.get('judge_failed', 0)}",
            f"{row.get('step_seconds', 0.0):.1f}s",
        ]
        if row.get("rubric_evolved"):
            parts.append(f"-> rubric v{row['rubric_evolved']}")
        line = " | ".join(parts)
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=line)
            self._progress.console.print(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
