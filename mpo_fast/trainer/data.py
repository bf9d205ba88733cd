"""Training prompts: the dataset as TaskExamples and a resumable, seeded order over it."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..tasks import TaskExample


def as_examples(dataset: Sequence[Any], *, start: int = 0) -> list[TaskExample]:
    """Accept TaskExamples, mappings with a 'prompt' key (TRL-style rows), or plain strings. A row's
    prompt may be text or, as in TRL's conversational format, a list of {"role", "content"} messages
    (rendered with the tokenizer's chat template as they are, without the task's system prompt).
    `start`: the index of the first row (rows without an id are numbered from it)."""
    if dataset is None or len(dataset) == 0:
        raise ValueError("train_dataset is empty; pass at least one example (or leave it None to load the task's data)")
    return [as_example(row, start + i) for i, row in enumerate(dataset)]


def as_example(row: Any, index: int) -> TaskExample:
    if isinstance(row, TaskExample):
        return row
    if isinstance(row, str):
        return TaskExample(id=str(index), prompt=row)
    if isinstance(row, Mapping):
        prompt = row.get("prompt")
        messages = None
        if isinstance(prompt, (list, tuple)):
            messages = check_messages(prompt, f"dataset row {index}")
            prompt = conversation_text(messages)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(
                f"dataset row {index} has no 'prompt' (keys: {sorted(row)}); every row needs a prompt string or a list "
                'of {"role": ..., "content": ...} messages'
            )
        known = {"id", "prompt", "reference", "label"}
        return TaskExample(
            id=str(row.get("id", index)),
            prompt=prompt.strip(),
            reference=None if row.get("reference") is None else str(row["reference"]),
            label=None if row.get("label") is None else str(row["label"]),
            meta={k: v for k, v in row.items() if k not in known},
            messages=None if messages is None else tuple(messages),
        )
    raise TypeError(f"dataset row {index} is a {type(row).__name__}; use TaskExample, a dict with 'prompt', or a string")


def check_messages(messages: Sequence[Any], where: str) -> list[dict[str, str]]:
    if not messages:
        raise ValueError(f"{where}: the prompt is an empty list of messages; give at least one user message")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(
                f"{where}: prompt message {k} is {m!r}; a conversational prompt is a list of "
                '{"role": "system" | "user" | "assistant", "content": "text"} dicts'
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def conversation_text(messages: Sequence[Mapping[str, str]]) -> str:
    """What the judge is shown as the prompt of a conversational row: the user's message when the
    conversation is one user turn (after any system message), else the turns as 'role: content'."""
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in turns)


def prompt_messages(example: TaskExample, task) -> list[dict[str, str]]:
    """The chat messages the policy sees: a conversational row's own messages, else the task's template."""
    return [dict(m) for m in example.messages] if example.messages is not None else task.build_messages(example)


def prompt_text(example: TaskExample, messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt as the judge and samples.jsonl show it (the task's user turn, or the conversation)."""
    return example.prompt if example.messages is not None else messages[-1]["content"]


@dataclass
class PromptSampler:
    """Shuffled epochs over `size` examples; the order of epoch e depends only on (seed, e), so
    (epoch, position) is the whole state a checkpoint needs."""

    size: int
    seed: int
    epoch: int = 0
    position: int = 0

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        random.Random(f"mpo-fast-data-{self.seed}-{epoch}").shuffle(order)
        return order

    def next(self, count: int) -> list[int]:
        picked: list[int] = []
        while len(picked) < count:
            order = self._order(self.epoch)
            take = min(count - len(picked), self.size - self.position)
            picked.extend(order[self.position : self.position + take])
            self.position += take
            if self.position >= self.size:
                self.epoch += 1
                self.position = 0
        return picked

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "size": self.size, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state["size"] != self.size or state["seed"] != self.seed:
            raise ValueError(
                f"the checkpoint's data order is over {state['size']} examples with seed {state['seed']}, but this run "
                f"has {self.size} with seed {self.seed}; resume with the same dataset and seed"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
