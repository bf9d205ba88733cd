"""Task names to task classes."""

from __future__ import annotations

from typing import Any

from .base import Task
from .essay import EssayTask
from .ethics import EthicsTask
from .math_problems import MathTask
from .summarization import SummarizationTask

TASKS: dict[str, type[Task]] = {
    task.name: task for task in (EssayTask, SummarizationTask, EthicsTask, MathTask)
}


def get_task(name: str, **options: Any) -> Task:
    """A new task instance; `options` go to its constructor (ethics: missing_verdict_penalty=...)."""
    try:
        task_class = TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None
    try:
        return task_class(**options)
    except TypeError as exc:
        raise TypeError(f"task {name!r} does not accept options {sorted(options)}: {exc}") from exc
