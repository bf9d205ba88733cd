"""The reference schedule: each stage waits for the last.

Per step: generate every sample (in the same prompt chunks as the overlapped producer, so both
schedules draw identical samples), judge them (one after another with judge_concurrency=1, as the
reference does; or up to judge_concurrency at once), compute advantages, update,
and every `evolve_every` updates stop for the meta-judge and install its rubric at once. It calls
the very same stage methods as the overlapped schedule; only the order and the waiting differ.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from torch.profiler import record_function

from .base import PipelineBase
from .batch_assembly import build_batch
from .common import check_batch, evolve_due, returns_awaitable
from .errors import PipelineError, ShutdownRequested
from .protocol import PipelineStages, ScoredSample
from .report import PipelineReport
from .settings import PipelineSettings


class SerialPipeline(PipelineBase):
    mode, other = "serial", "OverlappedPipeline"

    def __init__(self, stages: PipelineStages, settings: PipelineSettings, *, rubric: Any, rubric_version: int = 0,
                 start_step: int = 0, device: str | None = None):
        super().__init__(stages, settings, rubric=rubric, rubric_version=rubric_version, start_step=start_step, device=device)
        self._loaded = start_step  # the policy version the rollout side holds

    def run(self, num_steps: int) -> PipelineReport:
        if num_steps < 1:
            raise ValueError(f"num_steps {num_steps} must be >= 1")
        report = PipelineReport("serial", 0, 0.0)
        preflight = getattr(self.stages, "preflight", None)
        if preflight is not None:
            preflight()
        t0 = time.monotonic()
        loop = asyncio.new_event_loop()
        stage = "rollout"
        try:
            resume_meta = getattr(self.stages, "resume_meta_step", None)
            pending = resume_meta() if resume_meta is not None else None
            if pending is not None:  # a checkpoint written by the overlapped schedule mid-refinement
                stage = "meta-judge"
                self._agree_rubric(pending, self._evolve(loop, pending))
            for step in range(self.start_step, self.start_step + num_steps):
                stage = "rollout"
                samples = self._generate(step)
                stage = "judge"
                loop.run_until_complete(self._judge_all(samples))
                version, rubric = self.rubrics.current()
                batch = build_batch(step, self.stages.group_size, version, rubric, samples)
                check_batch(batch, group_size=self.stages.group_size, max_failed_fraction=self.settings.max_failed_fraction)
                stage = "trainer"
                staleness = self.gate.check(step, batch.behaviour_version)
                with self.clocks["trainer"].busy(items=len(samples)):
                    with record_function("mpo.judge.advantages"):
                        batch.advantages = self.stages.advantages(batch)
                    with record_function("mpo.trainer.update"):
                        metrics = dict(self.stages.update(batch))
                    with record_function("mpo.trainer.publish_weights"):
                        self.stages.publish_weights(step + 1)
                self.gate.publish(step + 1)
                report.record_batch(batch, staleness, metrics, time.monotonic() - t0)
                stage = "meta-judge"
                swap = None
                if evolve_due(self.stages, self.settings.evolve_every, step + 1, self.start_step + num_steps):
                    swap = self._evolve(loop, step)
                self._agree_rubric(step, swap)
                stage = "trainer"
                with self.clocks["trainer"].busy():
                    version, rubric = self.rubrics.current()
                    self.stages.checkpoint(step + 1, version, rubric)
        except PipelineError:
            raise
        except ShutdownRequested:  # a callback stopped the run after a checkpoint, as the overlapped schedule
            pass
        except BaseException as e:  # noqa: BLE001 - reported as the failing stage, like the overlapped schedule
            self.board.fail(stage, e)
            raise self.board.as_pipeline_error() from e
        finally:
            closer = getattr(self.stages, "aclose_judge", None)
            if closer is not None:
                loop.run_until_complete(closer())
            loop.close()
            self._finish_report(report, time.monotonic() - t0)
        return report

    def _generate(self, step: int) -> list[ScoredSample]:
        clock, group = self.clocks["rollout"], self.stages.group_size
        version = self.gate.version
        if version != self._loaded:
            with clock.busy(), record_function("mpo.rollout.sync_weights"):
                self.stages.sync_rollout_weights(version)
            self._loaded = version
        rubric_version, rubric = self.rubrics.current()
        prompts = list(self.stages.step_prompts(step))
        chunk_size = self.settings.prompts_per_chunk
        samples = []
        for lo in range(0, len(prompts), chunk_size):
            chunk = prompts[lo:lo + chunk_size]
            with clock.busy(items=len(chunk) * group), record_function("mpo.rollout.generate"):
                rollouts = self.stages.generate(chunk, step=step, policy_version=version)
            if len(rollouts) != len(chunk) * group:
                raise ValueError(f"generate returned {len(rollouts)} rollouts for {len(chunk)} prompts x group_size {group}")
            samples += [ScoredSample(step, lo + r.prompt_index, chunk[r.prompt_index], r, rubric_version, rubric) for r in rollouts]
        samples.sort(key=lambda s: (s.slot, s.sample_index))
        return samples

    async def _judge_all(self, samples: list[ScoredSample]) -> None:
        """Judge the step's samples after generation ended; judge_concurrency=1 is the reference's one
        call after another, larger values batch the calls (still after generation, before training)."""
        if self.settings.judge_concurrency == 1:
            for sample in samples:
                await self._judge_one(sample)
            return
        sem = asyncio.Semaphore(self.settings.judge_concurrency)

        async def one(sample):
            async with sem:
                await self._judge_one(sample)

        await asyncio.gather(*(one(s) for s in samples))

    async def _judge_one(self, sample: ScoredSample) -> None:
        await self._judge_sample(sample)
        self.recent.add(sample)

    def _evolve(self, loop: asyncio.AbstractEventLoop, step: int):
        if not getattr(self.stages, "runs_meta", True):
            return None  # a data-parallel rank other than 0: it installs rank 0's rubric (_agree_rubric)
        version, rubric = self.rubrics.current()
        samples = self.recent.snapshot(version, self.settings.mpo_samples, step)
        if not samples:
            return None
        self._meta_runs += 1
        launched = getattr(self.stages, "meta_launched", None)
        if launched is not None:
            launched(step)
        with self.clocks["meta"].busy(items=1):
            if returns_awaitable(self.stages.evolve):
                new = loop.run_until_complete(self.stages.evolve(rubric, samples, step))
            else:
                new = self.stages.evolve(rubric, samples, step)
        if new is None:
            return None
        self.rubrics.stage(new)
        return self.rubrics.swap_at_boundary(step)
