"""Judges that follow the judge protocol with a known, instant reward (loop-mechanics tests)."""
from __future__ import annotations

import asyncio
from typing import Callable

from mpo_fast.judges.types import Judgement, JudgeRequest
from mpo_fast.parsing.spec import ScoreStatus
from mpo_fast.rubrics import Rubric, RubricItem
from mpo_fast.tasks import EssayTask, TaskExample

VOWELS = set("aeiouAEIOU")


def vowel_fraction(text: str) -> float:
    return sum(c in VOWELS for c in text) / max(len(text), 1)


class SyntheticJudge:
    """reward = reward_fn(response), one score per rubric item (all equal), no model.

    fail_when(call_index, request_index, request) -> True marks that judgement failed (masked).
    crash_on_call: raise RuntimeError on that call (1-based), to simulate a dying process.
    """

    def __init__(
        self,
        reward_fn: Callable[[str], float] = vowel_fraction,
        *,
        fail_when: Callable[[int, int, JudgeRequest], bool] | None = None,
        crash_on_call: int | None = None,
    ) -> None:
        self.reward_fn = reward_fn
        self.fail_when = fail_when
        self.crash_on_call = crash_on_call
        self.calls = 0
        self.requests: list[list[JudgeRequest]] = []

    async def judge(self, requests: list[JudgeRequest]) -> list[Judgement]:
        self.calls += 1
        self.requests.append(list(requests))
        if self.crash_on_call is not None and self.calls == self.crash_on_call:
            raise RuntimeError(f"injected crash on judge call {self.calls}")
        await asyncio.sleep(0)
        out = []
        for i, req in enumerate(requests):
            k = len(req.rubric.items)
            if self.fail_when is not None and self.fail_when(self.calls, i, req):
                out.append(
                    Judgement(
                        item_scores=(None,) * k, item_status=(ScoreStatus.MISSING,) * k, reward=None, ok=False,
                        mode="synthetic", calls=1, latency_s=0.0, error="injected: no score",
                        rubric_hash=req.rubric.content_hash,
                    )
                )
                continue
            r = float(self.reward_fn(req.response))
            scores = tuple(r * item.max_points for item in req.rubric.items)
            out.append(
                Judgement(
                    item_scores=scores, item_status=(ScoreStatus.OK,) * k, reward=r, ok=True, mode="synthetic",
                    calls=1, latency_s=0.0, rationale=f"vowel share {r:.3f}", rubric_hash=req.rubric.content_hash,
                )
            )
        return out


class AppendingMetaJudge:
    """Each evolve adds one item naming the step: a new rubric version every time."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []  # (rubric hash, number of samples, step)

    def evolve(self, rubric: Rubric, samples, step: int) -> Rubric:
        self.calls.append((rubric.content_hash, len(samples), step))
        item = RubricItem(f"Refinement at step {step}", f"Criterion added after analysing {len(samples)} samples.", 2)
        return Rubric(task=rubric.task, context=rubric.context, items=(*rubric.items, item))


class ShortEssayTask(EssayTask):
    """The essay task with a one-word system prompt: with a character-level tokenizer the real
    one is ~300 tokens, 15x the cost of the prompts these tests need."""

    system_prompt = "Write."

    def format_prompt(self, example: TaskExample) -> str:
        return example.prompt
