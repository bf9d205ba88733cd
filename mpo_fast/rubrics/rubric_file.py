"""Reading and writing a rubric as a user-editable YAML or JSON file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic_file import write_text_atomic
from .model import Rubric

_YAML_SUFFIXES = (".yaml", ".yml")
_JSON_SUFFIXES = (".json",)


def _import_yaml():
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml is a core dependency
        raise ImportError("reading YAML rubric files needs PyYAML: pip install pyyaml (or use a .json file)") from exc
    return yaml


def load_rubric(path: str | os.PathLike[str], *, task: str | None = None) -> Rubric:
    """Load a rubric file (.yaml/.yml/.json) with keys task, context, items.

    `task` fills in a file that omits it and must match a file that names one, so a summary
    rubric cannot be used for an essay run by mistake.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in _YAML_SUFFIXES + _JSON_SUFFIXES:
        raise ValueError(f"rubric file {file} has suffix {suffix!r}; use .yaml, .yml or .json")
    if not file.is_file():
        raise FileNotFoundError(
            f"rubric file {file} does not exist; check the path, or leave the rubric unset to use the "
            "task's built-in initial rubric"
        )
    text = file.read_text(encoding="utf-8")
    where = f"rubric file {file}"
    if suffix in _YAML_SUFFIXES:
        yaml = _import_yaml()
        try:
            # safe_load builds plain dicts/lists/scalars only: a rubric file never runs code.
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{where} is not valid YAML: {exc}") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is not valid JSON: {exc}") from exc
    if data is None:
        raise ValueError(f"{where} is empty; add task, context and an 'items:' list")
    if not isinstance(data, dict):
        raise ValueError(f"{where} must hold a mapping with keys task, context, items; got {type(data).__name__}")
    named = data.get("task")
    if task is not None and named is not None and named != task:
        raise ValueError(f"{where} is for task {named!r} but the run's task is {task!r}; use a rubric for {task!r}")
    return Rubric.from_dict(data, where=where, task=task)


def save_rubric_file(rubric: Rubric, path: str | os.PathLike[str]) -> None:
    """Write `rubric` so load_rubric reads back an equal rubric (same content hash)."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix in _YAML_SUFFIXES:
        text = _import_yaml().safe_dump(rubric.to_dict(), sort_keys=False, allow_unicode=True, width=100)
    elif suffix in _JSON_SUFFIXES:
        text = json.dumps(rubric.to_dict(), indent=2, ensure_ascii=False) + "\n"
    else:
        raise ValueError(f"rubric file {file} has suffix {suffix!r}; use .yaml, .yml or .json")
    write_text_atomic(file, text)
