"""One training or evaluation example, task-independent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class TaskExample:
    """`prompt` is the task input (essay prompt, document, anecdote, problem), not the chat text:
    Task.build_messages wraps it in the task's template. `reference` is a reference summary or
    answer, `label` a class label (ethics: RIGHT/WRONG); `meta` holds any other source columns.
    `messages`: a conversational row's prompt (TRL's format, a list of {"role", "content"}), which
    the policy sees as it is instead of the task's template; `prompt` is then its text for the judge."""

    id: str
    prompt: str
    reference: str | None = None
    label: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    messages: tuple[Mapping[str, str], ...] | None = field(default=None, hash=False, compare=False)
