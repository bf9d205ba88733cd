"""Training prompts: the dataset as TaskExamples and a resumable, seeded order over it."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..tasks import TaskExample


def as_examples(dataset: Sequence[Any]) -> list[TaskExample]:
    """Accept TaskExamples, mappings with a 'prompt' key (TRL-style rows), or plain strings."""
    if dataset is None or len(dataset) == 0:
        raise ValueError("train_dataset is empty; pass at least one example (or leave it None to load the task's data)")
    out = []
    for i, row in enumerate(dataset):
        if isinstance(row, TaskExample):
            out.append(row)
        elif isinstance(row, str):
            out.append(TaskExample(id=str(i), prompt=row))
        elif isinstance(row, Mapping):
            prompt = row.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(
                    f"train_dataset row {i} has no text 'prompt' (keys: {sorted(row)}); every row needs a prompt string"
                )
            known = {"id", "prompt", "reference", "label"}
            out.append(
                TaskExample(
                    id=str(row.get("id", i)),
                    prompt=prompt.strip(),
                    reference=None if row.get("reference") is None else str(row["reference"]),
                    label=None if row.get("label") is None else str(row["label"]),
                    meta={k: v for k, v in row.items() if k not in known},
                )
            )
        else:
            raise TypeError(
                f"train_dataset row {i} is a {type(row).__name__}; use TaskExample, a dict with 'prompt', or a string"
            )
    return out


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
