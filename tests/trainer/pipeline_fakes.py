"""Stage doubles for the pipeline schedule tests: timed sleeps instead of models, exact bookkeeping.

Generation text encodes (step, prompt, sample, policy version), so a test can see which policy
produced what; the judge's reward is a pure function of the response text, so two schedules that
generate the same text must report the same rewards.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import mpo_fast
from mpo_fast.judges.types import Judgement
from mpo_fast.parsing.spec import ScoreStatus
from mpo_fast.rollout import Rollout
from mpo_fast.rubrics import Rubric, RubricItem
from mpo_fast.trainer.pipeline import PromptItem


def base_rubric() -> Rubric:
    return Rubric(task="essay", context="", items=(RubricItem("Clarity", "Clear prose.", 5),))


def text_reward(text: str) -> float:
    """Deterministic in [0, 1], spread within a group (different sample index -> different text)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:6], 16) / 0xFFFFFF


class FakeStages:
    def __init__(self, *, group_size=2, prompts_per_step=2, gen_s=0.0, judge_s=0.0, train_s=0.0, meta_s=0.0,
                 ckpt_dir: Path | None = None, fail_update_at: int | None = None, fail_generate_at: int | None = None,
                 hang_judge_from_step: int | None = None, block_loop_judge: threading.Event | None = None, evolve_async: bool = False,
                 text_depends_on_version: bool = True):
        self.group_size = group_size
        self.prompts_per_step = prompts_per_step
        self.gen_s, self.judge_s, self.train_s, self.meta_s = gen_s, judge_s, train_s, meta_s
        self.ckpt_dir = ckpt_dir
        self.fail_update_at = fail_update_at
        self.fail_generate_at = fail_generate_at
        self.hang_judge_from_step = hang_judge_from_step
        self.block_loop_judge = block_loop_judge  # set: the judge blocks its event loop until the event is set
        self.text_depends_on_version = text_depends_on_version
        self.version = 0  # trainer-side policy version
        self.rollout_version = 0  # what the rollout side holds
        self.published: list[int] = []
        self.synced: list[int] = []
        self.updates: list[dict] = []
        self.generated: list[tuple[int, int]] = []  # (step, version used)
        self.evolve_calls: list[tuple[int, int]] = []  # (step, samples)
        self.lock = threading.Lock()
        self.concurrent_judges = 0
        self.max_concurrent_judges = 0
        if evolve_async:
            self.evolve = self._evolve_async  # type: ignore[method-assign]

    # producer side
    def step_prompts(self, step):
        return [PromptItem(index=step * 100 + i, prompt_ids=[1, 2, 3], prompt_text=f"prompt {step}/{i}")
                for i in range(self.prompts_per_step)]

    def sync_rollout_weights(self, version):
        self.rollout_version = version
        self.synced.append(version)

    def generate(self, prompts, *, step, policy_version):
        if self.fail_generate_at is not None and step == self.fail_generate_at:
            raise RuntimeError(f"injected generation failure at step {step}")
        assert policy_version == self.rollout_version, "generate called with a version the rollout side does not hold"
        time.sleep(self.gen_s)
        self.generated.append((step, policy_version))
        out = []
        for p, item in enumerate(prompts):
            for k in range(self.group_size):
                tag = f"v{policy_version}" if self.text_depends_on_version else ""
                text = f"answer to {item.prompt_text} #{k} {tag}"
                out.append(Rollout(p, k, list(item.prompt_ids), [5, 6], text, [-0.5, -0.7], True, policy_version))
        return out

    # judge side
    def judge_request(self, sample):
        return (sample.step, sample.rollout.text, sample.rubric)

    async def judge(self, requests):
        with self.lock:
            self.concurrent_judges += 1
            self.max_concurrent_judges = max(self.max_concurrent_judges, self.concurrent_judges)
        try:
            step = requests[0][0]
            if self.hang_judge_from_step is not None and step >= self.hang_judge_from_step:
                await asyncio.Event().wait()  # never answers
            if self.block_loop_judge is not None:
                # Blocks the event loop itself (a sync call inside a coroutine): cancellation cannot
                # reach it, only the trainer's stall watchdog can notice.
                self.block_loop_judge.wait(30)
            await asyncio.sleep(self.judge_s() if callable(self.judge_s) else self.judge_s)
            out = []
            for _, text, rubric in requests:
                r = text_reward(text)
                out.append(Judgement((r * 5,) * len(rubric.items), (ScoreStatus.OK,) * len(rubric.items), r, True,
                                     "fake", 1, 0.0, rubric_hash=rubric.content_hash))
            return out
        finally:
            with self.lock:
                self.concurrent_judges -= 1

    def advantages(self, batch):
        return mpo_fast.group_advantages(batch.rewards, batch.group_size, valid=batch.valid).advantages

    # trainer side
    def update(self, batch):
        if self.fail_update_at is not None and batch.step == self.fail_update_at:
            raise RuntimeError(f"injected update failure at step {batch.step}")
        time.sleep(self.train_s)
        groups = {}
        for s in batch.samples:
            groups.setdefault(s.slot, set()).add(s.rubric_version)
        self.updates.append({
            "step": batch.step, "trainer_version": self.version, "behaviour": batch.behaviour_version,
            "group_rubric_versions": groups, "batch_rubric_version": batch.rubric_version,
            "order": [(s.slot, s.sample_index) for s in batch.samples],
            "advantages": batch.advantages.tolist(),
        })
        self.version += 1
        return {"loss": 0.0}

    def publish_weights(self, version):
        assert version == self.version
        self.published.append(version)

    def evolve(self, rubric, samples, step):
        time.sleep(self.meta_s)
        self.evolve_calls.append((step, len(samples)))
        item = RubricItem(f"Refined at {step}", "added", 2)
        return Rubric(task=rubric.task, context=rubric.context, items=(*rubric.items, item))

    async def _evolve_async(self, rubric, samples, step):
        await asyncio.sleep(self.meta_s)
        self.evolve_calls.append((step, len(samples)))
        item = RubricItem(f"Refined at {step}", "added", 2)
        return Rubric(task=rubric.task, context=rubric.context, items=(*rubric.items, item))

    def checkpoint(self, step, rubric_version, rubric):
        if self.ckpt_dir is None:
            return
        # Atomic like the trainer's checkpoints: write aside, then rename into place.
        tmp = self.ckpt_dir / f".ckpt-{step}.tmp"
        tmp.write_text(json.dumps({"step": step, "rubric_version": rubric_version, "policy_version": self.version}))
        os.replace(tmp, self.ckpt_dir / "latest.json")
