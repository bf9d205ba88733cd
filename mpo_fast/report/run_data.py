"""Everything the report shows, read from a run directory's files only (so it works for any
finished, interrupted or copied run): config.yaml, metrics.jsonl, samples.jsonl, the rubric
store, summary.json and eval/*.json."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rubrics import RubricStore
from ..trainer.run_log import CONFIG_FILE, METRICS_FILE, SAMPLES_FILE, read_jsonl

log = logging.getLogger("mpo_fast")


@dataclass
class RunData:
    directory: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    versions: list[Any]  # RubricVersion, in version order
    summary: dict[str, Any] | None
    evals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def task(self) -> str:
        return str(self.config.get("task", {}).get("name", "?"))


def _yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        log.warning("%s is unreadable (%s); the report leaves the configuration out", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def load_run(run_dir: str | os.PathLike[str]) -> RunData:
    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a directory; pass a run's output_dir")
    metrics = read_jsonl(d / METRICS_FILE)
    if not metrics and not (d / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} holds neither {METRICS_FILE} nor {CONFIG_FILE}; pass a run's output_dir")
    versions = []
    if (d / "rubrics" / "index.json").is_file():
        versions = RubricStore(d / "rubrics").versions()
    summary = None
    if (d / "summary.json").is_file():
        try:
            summary = json.loads((d / "summary.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            summary = None
    evals = []
    for path in sorted((d / "eval").glob("*.json")) if (d / "eval").is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("eval result %s is unreadable (%s); left out of the report", path, exc)
            continue
        if isinstance(data, dict) and "policies" in data:
            evals.append((path.stem, data))
    return RunData(d, _yaml(d / CONFIG_FILE), metrics, read_jsonl(d / SAMPLES_FILE), versions, summary, evals)
