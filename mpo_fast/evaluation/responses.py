"""Generate each policy's answers on the evaluation prompts, once: stored as JSON lines beside the
result (`NAME.responses.jsonl`) and keyed by (policy id, example id, sampling settings), so an
interrupted evaluation resumes without generating again and both policies are sampled alike."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..rollout.base import SamplingParams
from ..tasks.base import Task
from ..tasks.example import TaskExample


@dataclass(frozen=True)
class Response:
    policy: str
    example_id: str
    text: str
    tokens: int
    finished: bool


def sampling_key(sampling: SamplingParams) -> str:
    return json.dumps(asdict(sampling), sort_keys=True)


class ResponseStore:
    def __init__(self, path: str | os.PathLike[str] | None):
        self.path = Path(path) if path is not None else None
        self._rows: dict[tuple[str, str, str], Response] = {}
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self._rows[(row["policy"], row["example_id"], row["sampling"])] = Response(
                        row["policy"], row["example_id"], row["text"], int(row["tokens"]), bool(row["finished"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by an interruption

    def get(self, policy: str, example_id: str, key: str) -> Response | None:
        return self._rows.get((policy, example_id, key))

    def add(self, responses: Sequence[Response], key: str) -> None:
        for r in responses:
            self._rows[(r.policy, r.example_id, key)] = r
        if self.path is None or not responses:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            for r in responses:
                handle.write(json.dumps({**asdict(r), "sampling": key}, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def generate_responses(
    policy: str,
    load: Callable[[], tuple[object, object]],
    task: Task,
    examples: Sequence[TaskExample],
    sampling: SamplingParams,
    store: ResponseStore,
    *,
    max_prompt_tokens: int,
    batch_size: int = 8,
) -> list[Response]:
    """One response per example (in order); loads the model only if some are not stored yet.

    Every chunk is generated with the same `sampling.seed`, so two policies see the same random
    stream on the same prompts; chunks are stored as they finish (resumable).
    """
    from ..rollout.hf import HFRollout
    from ..trainer.stages import render_prompts

    key = sampling_key(sampling)
    missing = [e for e in examples if store.get(policy, e.id, key) is None]
    if missing:
        model, tokenizer = load()
        backend = HFRollout(model, tokenizer, batch_size=batch_size, record_logprobs=False)
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            prompts = render_prompts(chunk, task, tokenizer, max_prompt_tokens=max_prompt_tokens)
            rollouts = backend.generate([p.ids for p in prompts], n=1, sampling=sampling, policy_version=0)
            store.add([Response(policy, e.id, r.text, len(r.completion_ids), r.finished)
                       for e, r in zip(chunk, rollouts)], key)
        del model, backend
    return [store.get(policy, e.id, key) for e in examples]  # type: ignore[misc]
