"""The overlapped schedule: rollout, judging, training and meta-refinement at the same time.

    producer thread --(judge slots: judge_queue_size)--> judge pool (asyncio, judge_concurrency)
        ^                                                     | groups -> steps (BatchAssembler)
        | staleness gate: step j starts at version >= j - s   v
    trainer (calling thread) <--(train queue)---------- complete, scored batches (+ advantages)
        | every evolve_every updates: snapshot of recent samples
        v
    meta-judge (background) --> staged rubric --> swapped in at the next step boundary

Streaming: the producer hands every chunk of `prompts_per_chunk` prompts to the judges as soon as
it is generated, so judging overlaps generation even at max_staleness=0, where the producer may
not run ahead of the trainer (exact on-policy). With max_staleness=k the producer generates up to
k steps ahead, overlapping generation with training too.

Shutdown: the first exception anywhere is recorded on a FailureBoard whose stop flag every wait
polls (50 ms); the trainer then joins each stage for at most shutdown_timeout_s, abandons any that
do not stop (daemon threads: a wedged C call cannot hold the process), and raises PipelineError
naming the failed stage. Checkpoints are written only by the trainer between updates, so the last
one is always a complete step.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import Any

from torch.profiler import record_function

from .base import PipelineBase
from .batch_assembly import BatchAssembler
from .bounded_queue import POLL_S, BoundedQueue
from .clock import StageClock
from .common import check_batch, evolve_due, returns_awaitable
from .cuda_overlap import StreamSet
from .errors import PipelineError, ShutdownRequested, StageStalled
from .protocol import PipelineStages, ScoredBatch, ScoredSample
from .report import PipelineReport
from .settings import PipelineSettings

log = logging.getLogger("mpo_fast")


class OverlappedPipeline(PipelineBase):
    mode, other = "overlapped", "SerialPipeline"

    def __init__(self, stages: PipelineStages, settings: PipelineSettings, *, rubric: Any, rubric_version: int = 0,
                 start_step: int = 0, device: str | None = None):
        super().__init__(stages, settings, rubric=rubric, rubric_version=rubric_version, start_step=start_step, device=device)
        self.streams = StreamSet(device)
        self.train_queue: BoundedQueue[ScoredBatch] = BoundedQueue("train", settings.train_queue_size, self.board)
        self._slots = threading.Semaphore(settings.judge_queue_size)
        self._assembler = BatchAssembler(stages.group_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._judge_sem: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task] = set()
        self._meta: concurrent.futures.Future | None = None
        self._meta_started_at_step: int | None = None
        self._meta_deferred = False  # due, but no trained sample of the current rubric yet
        self._end = start_step
        self._t0 = 0.0

    # ------------------------------------------------------------------ run
    def run(self, num_steps: int) -> PipelineReport:
        """Train steps start_step .. start_step + num_steps - 1; raises PipelineError if a stage fails."""
        if num_steps < 1:
            raise ValueError(f"num_steps {num_steps} must be >= 1")
        end = self._end = self.start_step + num_steps
        report = PipelineReport("overlapped", self.settings.max_staleness, 0.0)
        preflight = getattr(self.stages, "preflight", None)
        if preflight is not None:
            preflight()  # bad configuration fails here, before any thread starts
        self._t0 = time.monotonic()
        loop_ready = threading.Event()
        judge_thread = threading.Thread(target=self._loop_main, args=(loop_ready,), name="mpo-judge-loop", daemon=True)
        producer = threading.Thread(target=self._guard, args=("rollout", self._produce, self.start_step, end),
                                    name="mpo-rollout", daemon=True)
        judge_thread.start()
        if not loop_ready.wait(self.settings.shutdown_timeout_s):
            raise PipelineError("judge", "the judge event loop did not start")
        resume_meta = getattr(self.stages, "resume_meta_step", None)
        pending = resume_meta() if resume_meta is not None else None
        if pending is not None:  # the checkpoint's refinement that had not been installed: run it again
            self._launch_meta(pending)
        producer.start()
        try:
            self._train(self.start_step, end, report)
        except ShutdownRequested:
            pass
        except BaseException as e:  # noqa: BLE001 - recorded, then re-raised as PipelineError below
            self.board.fail("trainer", e)
        finally:
            abandoned = self._shutdown([producer, judge_thread])
            self._finish_report(report, time.monotonic() - self._t0)
        err = self.board.as_pipeline_error()
        if err is not None:
            if abandoned:
                log.error("mpo_fast pipeline: stages %s did not stop within %.1f s and were abandoned", abandoned,
                          self.settings.shutdown_timeout_s)
            raise err
        return report

    def _guard(self, stage: str, fn, *args) -> None:
        try:
            fn(*args)
        except ShutdownRequested:
            pass
        except BaseException as e:  # noqa: BLE001 - any failure stops every stage
            self.board.fail(stage, e)

    # ------------------------------------------------------------------ producer (thread)
    def _produce(self, start: int, end: int) -> None:
        s, clock, group = self.settings, self.clocks["rollout"], self.stages.group_size
        loaded = start  # the rollout side starts with the weights of version start_step
        for step in range(start, end):
            latest = self.gate.wait_to_start(step, clock=clock)
            if latest != loaded:
                with clock.busy(), record_function("mpo.rollout.sync_weights"):
                    got = self.stages.sync_rollout_weights(latest)
                # A stage may report that it loaded an even newer published version.
                loaded = got if isinstance(got, int) and got >= latest else latest
            rubric_version, rubric = self._rubric_for_step(step)
            prompts = list(self.stages.step_prompts(step))
            if not prompts:
                raise ValueError(f"step_prompts({step}) returned no prompts")
            self._to_loop(self._assembler.open_step, step, len(prompts), rubric_version, rubric)
            for lo in range(0, len(prompts), s.prompts_per_chunk):
                chunk = prompts[lo:lo + s.prompts_per_chunk]
                with self.streams.use("rollout"), clock.busy(items=len(chunk) * group), record_function("mpo.rollout.generate"):
                    rollouts = self.stages.generate(chunk, step=step, policy_version=loaded)
                if len(rollouts) != len(chunk) * group:
                    raise ValueError(f"generate returned {len(rollouts)} rollouts for {len(chunk)} prompts x group_size {group}")
                for r in rollouts:
                    if r.policy_version != loaded:
                        raise ValueError(f"rollout stamped policy_version {r.policy_version}, generated with {loaded}: "
                                         "the backend must stamp the version it was given")
                    sample = ScoredSample(step, lo + r.prompt_index, chunk[r.prompt_index], r, rubric_version, rubric)
                    self._acquire_slot(clock)
                    self._to_loop(self._spawn_judge, sample)

    def _acquire_slot(self, clock: StageClock) -> None:
        t = time.monotonic()
        try:
            while not self._slots.acquire(timeout=POLL_S):
                self.board.check()
        finally:
            clock.add("blocked", time.monotonic() - t)

    def _to_loop(self, fn, *args) -> None:
        self.board.check()
        try:
            self._loop.call_soon_threadsafe(self._guarded_callback, fn, args)
        except RuntimeError:  # loop closed: shutdown is under way
            raise ShutdownRequested() from None

    def _guarded_callback(self, fn, args) -> None:
        # asyncio only logs an exception raised by a callback; the pipeline must stop on it.
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001
            self.board.fail("judge", e)

    # ------------------------------------------------------------------ judge pool (event loop thread)
    def _loop_main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._judge_sem = asyncio.Semaphore(self.settings.judge_concurrency)
        ready.set()
        try:
            loop.run_forever()
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=self.settings.shutdown_timeout_s))
            loop.run_until_complete(loop.shutdown_asyncgens())
            closer = getattr(self.stages, "aclose_judge", None)
            if closer is not None:
                loop.run_until_complete(asyncio.wait_for(closer(), self.settings.shutdown_timeout_s))
            loop.run_until_complete(loop.shutdown_default_executor())
        except BaseException as e:  # noqa: BLE001
            self.board.fail("judge", e)
        finally:
            loop.close()

    def _spawn_judge(self, sample: ScoredSample) -> None:
        task = self._loop.create_task(self._judge_one(sample))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _judge_one(self, sample: ScoredSample) -> None:
        try:
            async with self._judge_sem:
                await self._judge_sample(sample)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001
            self.board.fail("judge", e)
            return
        finally:
            self._slots.release()
        try:
            self._on_judged(sample)
        except BaseException as e:  # noqa: BLE001
            self.board.fail("judge", e)

    def _on_judged(self, sample: ScoredSample) -> None:
        self.recent.add(sample)
        batch = self._assembler.add(sample)
        if batch is None:
            return
        check_batch(batch, group_size=self.stages.group_size, max_failed_fraction=self.settings.max_failed_fraction)
        with self.streams.use("side"), record_function("mpo.judge.advantages"):
            batch.rewards = self.streams.to_device(batch.rewards)
            batch.valid = self.streams.to_device(batch.valid)
            batch.advantages = self.stages.advantages(batch)
            batch.ready = self.streams.record("side")
        # The put may wait on a full train queue; run it off the loop so judging continues meanwhile.
        fut = self._loop.run_in_executor(None, self.train_queue.put, batch)
        fut.add_done_callback(self._put_done)

    def _put_done(self, fut: asyncio.Future) -> None:
        exc = fut.exception() if not fut.cancelled() else None
        if exc is not None and not isinstance(exc, ShutdownRequested):
            self.board.fail("judge", exc)

    # ------------------------------------------------------------------ trainer (calling thread)
    def _train(self, start: int, end: int, report: PipelineReport) -> None:
        s, clock = self.settings, self.clocks["trainer"]
        waiting: dict[int, ScoredBatch] = {}
        for step in range(start, end):
            while step not in waiting:  # batches of different steps can finish out of order
                b = self.train_queue.get(clock=clock, stall_timeout_s=s.stall_timeout_s, waiting_for=self._stall_culprit)
                waiting[b.step] = b
            batch = waiting.pop(step)
            staleness = self.gate.check(step, batch.behaviour_version)
            self.streams.wait(batch.ready, batch.rewards, batch.valid, batch.advantages)
            with clock.busy(items=len(batch.samples)), record_function("mpo.trainer.update"):
                metrics = dict(self.stages.update(batch))
            with clock.busy(), record_function("mpo.trainer.publish_weights"):
                self.stages.publish_weights(step + 1)
            self._step_boundary(step)
            report.record_batch(batch, staleness, metrics, time.monotonic() - self._t0)
            with clock.busy():
                version, rubric = self.rubrics.current()
                self.stages.checkpoint(step + 1, version, rubric)
        self._discard_meta(report)

    def _step_boundary(self, step: int) -> None:
        """Between update `step` and the next: maybe install a new rubric, then release the producer."""
        s = self.settings
        if self._meta is not None and s.rubric_swap == "next_step" and self._meta_started_at_step == step - 1:
            self._wait_meta()
        swap = self._agree_rubric(step, self.rubrics.swap_at_boundary(step))
        if swap is not None:
            log.info("mpo_fast pipeline: rubric v%d installed after step %d", swap.version, step)
        deferred = self._meta_deferred and step + 1 < self._end
        if evolve_due(self.stages, s.evolve_every, step + 1, self._end) or deferred:
            self._launch_meta(step)  # takes its snapshot now and runs in the background
        self.gate.publish(step + 1)  # after the swap, so a producer at staleness 0 sees the new rubric

    def _stall_culprit(self) -> str:
        """Which stage a stalled trainer is waiting on: judges with calls in flight, else the producer."""
        return "judge" if self._tasks else "rollout"

    # ------------------------------------------------------------------ meta-judge (background)
    def _launch_meta(self, step: int) -> None:
        if not getattr(self.stages, "runs_meta", True):
            return  # a data-parallel rank other than 0: it installs rank 0's rubric (_agree_rubric)
        if self._meta is not None and not self._meta.done():
            log.warning("mpo_fast pipeline: meta-judge from step %s still running at step %d; skipping this one",
                        self._meta_started_at_step, step)
            return
        version, rubric = self.rubrics.current()
        samples = self.recent.snapshot(version, self.settings.mpo_samples, step)
        if not samples:
            # Just after a swap, with steps in flight, no trained step was scored by the current
            # rubric yet: the refinement waits for the first boundary that has some (not dropped).
            self._meta_deferred = True
            return
        self._meta_deferred = False
        self._meta_started_at_step = step
        launched = getattr(self.stages, "meta_launched", None)
        if launched is not None:
            launched(step)
        if returns_awaitable(self.stages.evolve):
            self._meta = asyncio.run_coroutine_threadsafe(self._evolve_async(rubric, samples, step), self._loop)
        else:
            fut: concurrent.futures.Future = concurrent.futures.Future()
            threading.Thread(target=self._evolve_sync, args=(fut, rubric, samples, step), name="mpo-meta", daemon=True).start()
            self._meta = fut
        self._meta_runs += 1

    async def _evolve_async(self, rubric, samples, step):
        with self.clocks["meta"].busy(items=1):
            try:
                new = await self.stages.evolve(rubric, samples, step)
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: BLE001
                self.board.fail("meta-judge", e)
                raise
        if new is not None:
            self.rubrics.stage(new)
        return new

    def _evolve_sync(self, fut: concurrent.futures.Future, rubric, samples, step) -> None:
        if not fut.set_running_or_notify_cancel():
            return  # discarded before it started
        try:
            with self.clocks["meta"].busy(items=1):
                new = self.stages.evolve(rubric, samples, step)
            if new is not None:
                self.rubrics.stage(new)
            fut.set_result(new)
        except BaseException as e:  # noqa: BLE001
            self.board.fail("meta-judge", e)
            fut.set_exception(e)

    def _wait_meta(self) -> None:
        t = time.monotonic()
        try:
            while True:
                self.board.check()
                try:
                    self._meta.result(timeout=POLL_S)
                    return
                except concurrent.futures.TimeoutError:
                    if time.monotonic() - t > self.settings.stall_timeout_s:
                        raise StageStalled("meta-judge", f"no rubric after {self.settings.stall_timeout_s:.0f} s") from None
        finally:
            self.clocks["trainer"].add("blocked", time.monotonic() - t)

    def _discard_meta(self, report: PipelineReport) -> None:
        if self._meta is not None and not self._meta.done():
            report.meta_discarded = 1
            self._meta.cancel()

    # ------------------------------------------------------------------ shutdown
    def _shutdown(self, threads: list[threading.Thread]) -> list[str]:
        self.board.stop.set()
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._loop.stop)
            except RuntimeError:
                pass
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        abandoned = []
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                abandoned.append(t.name)
        return abandoned
