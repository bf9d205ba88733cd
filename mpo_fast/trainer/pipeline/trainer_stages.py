"""The MPOTrainer's own stages behind the pipeline protocol, so one update path serves both schedules.

    trainer = MPOTrainer(model, args=cfg, train_dataset=rows, judge=judge, meta_judge=meta, ...)
    report = train_pipelined(trainer, PipelineSettings(mode="overlapped", max_staleness=1))

Everything stage-specific is the trainer's: prompt order (its PromptSampler), `stages.generate`,
the judge, `stages.combine_reward` (rule rewards, missing-EOS penalty), the judge-failure rule
(`MPOTrainer.count_judgements`), advantages and the update (`MPOTrainer.train_on`: GRPO or PPO,
KL in the loss or in the reward, the ratio taken against the behaviour log-probs when a batch is
stale, the LR schedule), the metrics row and the samples records (`trainer/step_record.py`), the
meta-judge and its RubricStore, checkpoints and the run log. What differs by schedule is only where
each runs and when; the trainer's counters change only through its own methods.

Sampling is seeded per (run seed, step, prompt), so the samples do not depend on which thread
draws them or in what order: the serial and the overlapped schedules at max_staleness=0 generate,
judge and train on identical batches.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import threading
import time
from typing import Any

import torch

from ...judges.types import Judgement
from ...ops.advantages import group_advantages
from ...rollout import HFRollout, Rollout
from ...rubrics import Rubric
from .. import reward_funcs
from .. import stages as trainer_stages
from ..eval_loop import pipeline_eval
from ..step_record import StepTimings, unanswered_judgement
from ..trainer import JudgeFailureRateError
from . import make_pipeline
from .common import RecentSamples
from .errors import JudgeFailureError, ShutdownRequested
from .protocol import PromptItem, ScoredBatch, ScoredSample
from .report import PipelineReport
from .settings import PipelineConfigError, PipelineSettings
from .weight_handoff import RolloutCopy


@dataclasses.dataclass
class _JudgeItem:
    request: Any  # JudgeRequest
    finished: bool
    example: Any  # TaskExample
    text: str
    step: int  # 0-based, for the step's judge time
    completion_ids: list[int] = dataclasses.field(default_factory=list)  # what reward functions get (TRL's argument)


@dataclasses.dataclass
class _StepClock:
    """One step's generation time and the span of its judge calls (both overlap other steps' work)."""

    generate_s: float = 0.0
    judge_start: float | None = None
    judge_end: float | None = None

    @property
    def judge_s(self) -> float:
        return 0.0 if self.judge_start is None else self.judge_end - self.judge_start


@dataclasses.dataclass
class _TrainedStep:
    """A step trained but not yet logged: its row is written at the step's boundary (checkpoint()),
    once the rubric for the next step is known."""

    step: int  # 1-based
    rubric: Any  # the RubricVersion that scored it
    rollouts: list
    scored: trainer_stages.ScoredRollouts
    trained: Any  # trainer.StepUpdate
    staleness: int
    signals: list[str]
    clock: _StepClock
    update_s: float


@dataclasses.dataclass(frozen=True)
class CombinedJudgement:
    """The judge's verdict plus the reward the trainer uses (rule reward mixed in, EOS penalty)."""

    judgement: Any
    reward: float | None
    judge_reward: float | None
    rule_reward: float | None
    func_rewards: dict = dataclasses.field(default_factory=dict)  # reward_funcs' values for this sample

    @property
    def ok(self) -> bool:
        return self.reward is not None

    @property
    def calls(self) -> int:
        return self.judgement.calls

    @property
    def error(self) -> str | None:
        return self.judgement.error

    def __getattr__(self, name):  # item_scores, rationale, mode, ... of the underlying judgement
        return getattr(self.judgement, name)


class TrainerStages:
    def __init__(self, trainer, settings: PipelineSettings):
        a = trainer.args
        self.trainer = trainer
        self.settings = settings
        self.group_size = a.rollout.num_generations
        self.prompts_per_step = a.rollout.prompts_per_step
        if settings.mode == "overlapped" and a.judge.backend == "local" and a.judge.model == "policy":
            raise PipelineConfigError(
                "judge.model=policy shares the policy's weights (adapters switched off while judging), which cannot "
                "happen while the trainer updates them; with pipeline.mode=overlapped use a separate judge "
                "(judge.backend=openai, or judge.model=embedded / a model directory)"
            )
        # Data parallel (torchrun): every collective is issued from the trainer thread, in the same
        # order on every rank (update, step boundary, checkpoint); the producer and judge threads
        # never issue one. Only rank 0 runs the meta-judge; at each boundary it broadcasts the rubric
        # it installs and every rank installs exactly that one (agree_rubric).
        ctx = getattr(trainer, "dist", None)
        self.dist = ctx
        self.lockstep_rubric = ctx is not None  # read by the pipeline (PipelineBase._rubric_for_step)
        self.runs_meta = ctx is None or ctx.is_main
        self._sampler_lock = threading.Lock()
        self.generate_lock = threading.Lock()  # rollout generation and evaluation (eval_loop.py) take turns
        self.judge_loop: asyncio.AbstractEventLoop | None = None  # the loop judging runs on (evaluation uses it)
        self._sampler_states: dict[int, dict] = {}
        self._snapshot: dict | None = None
        self._snapshot_lock = threading.Lock()
        self.copy: RolloutCopy | None = None
        backend = trainer.rollout
        self.rollout = backend
        self._kind = "shared"  # HF generate on the training module itself (max_staleness=0)
        if isinstance(backend, HFRollout):
            if settings.max_staleness > 0:
                self.copy = RolloutCopy(trainer.model)
                self.rollout = HFRollout(self.copy.module, trainer.tokenizer, batch_size=a.rollout.batch_size,
                                         decode=a.rollout.decode, cache=a.rollout.cache, compile=a.rollout.compile,
                                         packed_weights=a.rollout.packed_weights)
                self._kind = "copy"
        elif type(backend).__name__ == "VLLMRollout":
            self._kind = "vllm"
            if settings.max_staleness > 0 and getattr(backend, "sleep_level", None) is not None:
                raise PipelineConfigError(
                    "a vLLM engine that sleeps between generations cannot generate while the trainer updates: with "
                    "pipeline.max_staleness > 0 build VLLMRollout(sleep_level=None) and a gpu_memory_utilization "
                    "that leaves the trainer its memory"
                )
            if settings.max_staleness > 0 and getattr(backend, "sync_mode", None) == "lora_adapter":
                raise PipelineConfigError(
                    "with pipeline.max_staleness > 0 the trainer hands the engine a snapshot of the weights between "
                    "updates, which a LoRA adapter sync cannot take: build VLLMRollout(sync_mode='merged_lora')"
                )
        else:
            self._kind = "push"  # remote or custom backends: pushed from the trainer thread between updates
        meta = trainer.meta_judge
        if meta is not None and inspect.iscoroutinefunction(getattr(meta, "evolve", None)):
            self.evolve = self._evolve_async  # type: ignore[method-assign]
        self.samples_log: list[dict] = []
        self._pending: _TrainedStep | None = None
        # The meta-judge's last result and its seconds, for the next metrics row: set on the
        # meta-judge's thread, taken on the trainer's.
        self._evolution: tuple[Any, float] | None = None
        self._evolution_lock = threading.Lock()
        # The refinement launched at boundary `_meta_launch` (0-based update index) and the version
        # it made (0: none; None: still running); a checkpoint taken before that version is
        # installed records the launch, and a resumed run launches it again (pipeline: resume_meta_step).
        self._meta_launch: int | None = None
        self._meta_outcome: int | None = None
        self._clocks: dict[int, _StepClock] = {}  # per 0-based step; written by the producer and the judge loop
        self._clocks_lock = threading.Lock()
        self.progress = None  # a run_log.Progress, set by train_pipelined
        self.window: RecentSamples | None = None  # the pipeline's meta-judge sample window, checkpointed with the run
        self._signals: list[str] = []  # reward-hacking signals of the last update
        self._t0 = self._last_row_at = time.perf_counter()

    # -- start-up checks ----------------------------------------------------------------------
    def preflight(self) -> None:
        """Every HTTP endpoint the run depends on must answer GET /models before anything starts."""
        t = self.trainer
        roles = [("judge", getattr(getattr(t.judge, "llm", None), "endpoint", None)),
                 ("meta-judge", getattr(getattr(t.meta_judge, "llm", None), "endpoint", None)),
                 ("rollout", getattr(self.rollout, "endpoint", None))]
        for role, endpoint in roles:
            if endpoint is not None:
                probe_endpoint(role, endpoint)

    # -- producer thread ----------------------------------------------------------------------
    def step_prompts(self, step: int) -> list[PromptItem]:
        t = self.trainer
        with self._sampler_lock:
            self._sampler_states[step] = t.sampler.state_dict()
            picked = t.sampler.next(self.prompts_per_step)
        return [self._prompt_item(i) for i in picked]

    def _prompt_item(self, index: int) -> PromptItem:
        p = self.trainer.prompts[index]
        return PromptItem(index=index, prompt_ids=list(p.ids), prompt_text=p.text, reference=p.example.reference, example=p)

    def _clock(self, step: int) -> _StepClock:
        with self._clocks_lock:
            return self._clocks.setdefault(step, _StepClock())

    def generate(self, prompts, *, step: int, policy_version: int):
        t = self.trainer
        out = []
        t0 = time.perf_counter()
        for p in prompts:  # one seed per (run, step, prompt): samples independent of thread and chunking
            sampling = dataclasses.replace(t.sampling, seed=(t.args.seed * 1_000_003 + step * 7919 + p.index) % 2**31)
            with self.generate_lock:
                rollouts = trainer_stages.generate(self.rollout, [p.example], n=self.group_size, sampling=sampling,
                                                   policy_version=policy_version)
            out += [dataclasses.replace(r, prompt_index=len(out) // self.group_size) for r in rollouts]
        self._clock(step).generate_s += time.perf_counter() - t0
        return out

    def sync_rollout_weights(self, version: int) -> int | None:
        if self._kind == "copy":
            self.copy.sync(version)
            return self.copy.loaded_version
        if self._kind == "vllm":
            with self._snapshot_lock:
                snap, snap_version = self._snapshot if self._snapshot is not None else (None, None)
            if snap is not None:
                self.rollout.sync_weights(snap, snap_version)
                return snap_version
            self.rollout.sync_weights(self.trainer.model, version)  # max_staleness=0: the trainer is waiting
        return None

    # -- trainer thread -----------------------------------------------------------------------
    def publish_weights(self, version: int) -> None:
        t = self.trainer
        if self._kind == "copy":
            self.copy.publish(t.model, version)
        elif self._kind == "vllm" and self.settings.max_staleness > 0:
            from ...rollout.vllm_weights import weights_for_vllm

            snap = {name: w.detach().clone() for name, w in weights_for_vllm(t.model)}
            with self._snapshot_lock:
                self._snapshot = (snap, version)
        elif self._kind == "push":
            self.rollout.sync_weights(t.model, version)

    def update(self, batch: ScoredBatch) -> dict[str, float]:
        """The trainer's own stages on one batch: the failure rule, advantages and update, the samples
        records and the reward-hacking monitor; the metrics row follows at the step boundary."""
        t = self.trainer
        step = batch.step + 1
        rollouts, prompts, scored = self._step_inputs(batch.samples)
        try:
            t.count_judgements(step, scored)
        except JudgeFailureRateError as e:  # the pipeline's name for it (CLI exit status 3 either way)
            raise JudgeFailureError("judge", str(e)) from e
        if self.dist is not None:
            self._gather_window(batch.samples)
        t0 = time.perf_counter()
        # A batch sampled by an older policy takes its ratio (and its KL-in-reward k1) against the
        # behaviour log-probs; the weights then have the version of the step count (the gate's).
        trained = t.train_on(rollouts, scored, version_after=step, behaviour_old_logp=batch.step > batch.behaviour_version)
        update_s = time.perf_counter() - t0
        staleness = [batch.step - s.policy_version for s in batch.samples]
        self.samples_log += t.sample_records(step, prompts, rollouts, scored, trained, batch.rubric, staleness=staleness)
        self._signals = t.signals.observe(step, rollouts, scored) if t.signals is not None else []
        with self._clocks_lock:
            clock = self._clocks.pop(batch.step, _StepClock())
        self._pending = _TrainedStep(step, batch.rubric, rollouts, scored, trained, batch.step - batch.behaviour_version,
                                     list(self._signals), clock, update_s)
        update = trained.update
        if update is None:
            return {"loss": float("nan"), "valid_samples": 0.0}
        return {"loss": update.loss, "grad_norm": update.grad_norm, "lr": update.lr,
                "valid_samples": float(int(scored.valid.sum())), "update_s": update_s,
                **{k: float(v) for k, v in update.metrics.items()}}

    def _gather_window(self, samples: list[ScoredSample]) -> None:
        """Data parallel: every rank's samples of the step into rank 0's meta-judge window (its own
        are there since they were judged), so the meta-judge reads the whole global step, as the
        serial data-parallel path's GatheredMetaBuffer; slots shifted by each rank's share, the
        order of one process running the global batch."""
        from ..distributed import all_gather, shard_range

        parts = all_gather([] if self.dist.is_main else [self._sample_state(s) for s in samples])
        if not self.dist.is_main or self.window is None:
            return
        for rank, rows in enumerate(parts[1:], start=1):
            offset = shard_range(self.prompts_per_step, rank, self.dist.world_size)[0]
            for d in rows:
                self.window.add(self._sample_from_state({**d, "slot": d["slot"] + offset}))

    def agree_rubric(self, step: int, swap, board):
        """Data parallel: the rubric swap at boundary `step` (0-based update index) on every rank.
        Rank 0 broadcasts the one it installed (version, RubricVersion) or None; every rank checks
        the hash, and the others install exactly it on their board, at this same boundary."""
        ctx = self.dist
        if ctx is None:
            return swap
        from ..data_parallel import checked_rubric
        from ..distributed import run_on_main

        got = run_on_main(ctx, lambda: None if swap is None else (swap.version, swap.rubric),
                          f"broadcasting the rubric at the boundary after step {step + 1}")
        if got is None:
            return None
        version, rubric = got
        checked_rubric(rubric, ctx)
        if ctx.is_main:
            return swap
        self.trainer.store.add(rubric)
        return board.install(version, rubric, step)

    def _step_inputs(self, samples: list[ScoredSample]) -> tuple[list[Rollout], list, trainer_stages.ScoredRollouts]:
        """(rollouts, the trainer's prompt per sample, ScoredRollouts) of samples in batch order; a
        sample the pipeline gave up on (judge timeout) is a failed judgement, masked, and has no
        reward-function values (None, as a function that does not apply)."""
        funcs = getattr(self.trainer, "reward_funcs", None)
        # every configured function by name, so the row's rewards/<name>/* keys do not depend on
        # which samples were judged (a batch of timeouts still has them, as None)
        func_rewards: dict[str, list] = {name: [] for name in (funcs.names if funcs is not None else ())}
        judgements, judge_rewards, rule_rewards, rewards = [], [], [], []
        for s in samples:
            cj = s.judgement
            if cj is None:
                judgements.append(unanswered_judgement(s.rubric.rubric, s.judge_error or "no judgement"))
                judge_rewards.append(None)
                rule_rewards.append(None)
            else:
                judgements.append(cj.judgement)
                judge_rewards.append(cj.judge_reward)
                rule_rewards.append(cj.rule_reward)
            for name, values in func_rewards.items():
                values.append(None if cj is None else cj.func_rewards.get(name))
            rewards.append(s.reward)
        scored = trainer_stages.ScoredRollouts(
            rewards=torch.tensor([0.0 if r is None else r for r in rewards], dtype=torch.float32),
            valid=torch.tensor([r is not None for r in rewards], dtype=torch.bool),
            judgements=judgements, judge_rewards=judge_rewards, rule_rewards=rule_rewards, func_rewards=func_rewards,
        )
        return [s.rollout for s in samples], [s.prompt.example for s in samples], scored

    def evolve_requested(self, step: int) -> bool:
        """After update `step` (1-based): do reward-hacking signals ask for meta-refinement now?"""
        t, m = self.trainer, self.trainer.args.meta
        if t.meta_judge is None or not m.enabled or not m.trigger_on_signals or not self._signals:
            return False
        return step - t.last_evolve_step >= m.min_steps_between

    def checkpoint(self, step: int, rubric_version: int, rubric) -> None:
        t = self.trainer
        t.end_step(step, rubric)
        row = None
        if getattr(t, "run_log", None) is not None:
            if self.samples_log or self.dist is not None:  # data parallel: a gather every rank joins
                t.run_log.samples(self.samples_log)
                self.samples_log = []
            if self._pending is not None:
                # eval/* when train.eval_steps is due, as the serial loop adds them (eval_loop.py)
                row = {**self._row(self._pending, getattr(rubric, "version", rubric_version)), **pipeline_eval(self, step)}
                t.run_log.metrics(row)
                if self.progress is not None:
                    self.progress.step(row)
                self._pending = None
        save_steps = t.args.log.save_steps
        saved = bool((save_steps and step % save_steps == 0) or step == t.args.train.max_steps)
        installed = getattr(rubric, "version", rubric_version)
        if saved:
            self._save(step, installed)
        # After the save decision, as the serial loop (MPOTrainer.train); on_evolve fires here too
        # when end_step installed a new rubric (callbacks.step_end compares versions).
        callbacks = getattr(t, "callbacks", None)
        if callbacks and row is not None and callbacks.step_end(step, row, saved=saved):
            if not saved:
                self._save(step, installed)  # a stopped run can be resumed from where it stopped
            raise ShutdownRequested(f"a callback set control.should_training_stop after step {step}")

    def _save(self, step: int, installed_version: int) -> None:
        t = self.trainer
        # The producer may have drawn prompts for later steps already: the checkpoint records the
        # sampler as it was before step `step` was drawn, so a resumed run draws the same prompts.
        with self._sampler_lock:
            current = t.sampler.state_dict()
            t.sampler.load_state_dict(self._sampler_states.get(step, current))
            try:
                # The meta-judge's window of completed steps: a resumed run's next refinement reads
                # the samples the uninterrupted run's would (steps in flight are drawn again).
                window = None if self.window is None else self.window.state(self._sample_state, up_to_step=step - 1)
                t.save_checkpoint(extra_state={"meta_window": window,
                                               "meta_pending_step": self._pending_meta(installed_version)})
            finally:
                t.sampler.load_state_dict(current)
            for old in [k for k in self._sampler_states if k < step]:
                del self._sampler_states[old]

    # -- judge loop ---------------------------------------------------------------------------
    def judge_request(self, sample: ScoredSample) -> _JudgeItem:
        from ...judges.types import JudgeRequest

        ex = sample.prompt.example.example
        request = JudgeRequest(prompt=sample.prompt.prompt_text, response=sample.rollout.text,
                               rubric=sample.rubric.rubric, reference=ex.reference)
        return _JudgeItem(request, sample.rollout.finished, ex, sample.rollout.text, sample.step,
                          list(sample.rollout.completion_ids))

    async def judge(self, items: list[_JudgeItem]) -> list[CombinedJudgement]:
        """The judge's verdicts combined with the rule reward and the reward functions by the same
        reward_funcs.combine as stages.judge (the serial loop's): one reward rule for every schedule."""
        t, a = self.trainer, self.trainer.args
        self.judge_loop = asyncio.get_running_loop()  # evaluation judges here too (eval_loop.pipeline_eval)
        clocks = [self._clock(step) for step in sorted({i.step for i in items})]
        started = time.perf_counter()
        try:
            judgements = await t.judge.judge([i.request for i in items])
            judged = [j.reward if j.ok else None for j in judgements]
            rules = [t.task.rule_reward(i.example, i.text) if a.task.rule_weight > 0 else None for i in items]
            components = [trainer_stages.combine_reward(jr, rule, rule_weight=a.task.rule_weight, finished=True,
                                                        missing_eos_penalty=0.0) for jr, rule in zip(judged, rules)]
            funcs = getattr(t, "reward_funcs", None)
            per_func = await reward_funcs.call_funcs_async(funcs, reward_funcs.func_kwargs(
                [i.example for i in items], [i.text for i in items], [i.completion_ids for i in items]), len(items)) \
                if funcs is not None else {}
        finally:  # the span of the step's judge calls, reward functions included (as the serial judge_s)
            ended = time.perf_counter()
            with self._clocks_lock:
                for c in clocks:
                    c.judge_start = started if c.judge_start is None else min(c.judge_start, started)
                    c.judge_end = ended if c.judge_end is None else max(c.judge_end, ended)
        rewards = reward_funcs.combine(funcs, components, per_func, finished=[i.finished for i in items],
                                       missing_eos_penalty=a.rollout.missing_eos_penalty)
        return [CombinedJudgement(j, reward, jr, rule, {name: v[k] for name, v in per_func.items()})
                for k, (j, reward, jr, rule) in enumerate(zip(judgements, rewards, judged, rules))]

    def advantages(self, batch: ScoredBatch) -> torch.Tensor:
        """The protocol's judge-side advantages (the pipeline's report and stream hand-off). The
        update does not read them: MPOTrainer.train_on computes the ones it trains on, as in every
        schedule (with KL in the reward they differ; it needs the policy, on the trainer thread)."""
        a = self.trainer.args.train
        rewards = torch.nan_to_num(batch.rewards, nan=0.0)  # masked members carry no value into the group
        return group_advantages(rewards, batch.group_size, mode=a.advantage_mode, eps=a.advantage_eps, valid=batch.valid).advantages

    # -- meta-judge ---------------------------------------------------------------------------
    def _meta_samples(self, samples: list[ScoredSample]) -> list:
        """The trainer's MetaSamples for `samples` (failed judgements included: evidence about the
        rubric too), built by its own `stages.meta_samples`, one step at a time."""
        out = []
        for step in sorted({s.step for s in samples}):
            group = [s for s in samples if s.step == step and s.judgement is not None]
            if not group:
                continue
            rollouts, prompts, scored = self._step_inputs(group)
            rollouts = [dataclasses.replace(r, prompt_index=i) for i, r in enumerate(rollouts)]
            out += trainer_stages.meta_samples(step + 1, prompts, rollouts, scored, getattr(group[0].rubric, "hash", ""))
        return out

    def _store(self, current, result, step: int):
        if result is None or getattr(result, "changed", True) is False:
            return None
        rubric = result if isinstance(result, Rubric) else getattr(result, "rubric", None)
        if not isinstance(rubric, Rubric):
            raise TypeError(f"meta_judge.evolve returned {type(result).__name__}; it must return a Rubric, an object with "
                            "a .rubric attribute, or None")
        analyses = tuple(getattr(result, "analyses", ()) or ())
        new = self.trainer.store.save(rubric, parent=current.version, step=step, analyses=analyses)
        return None if new.hash == current.hash else new

    def evolve(self, current, samples: list[ScoredSample], step: int):
        self.trainer.mark_evolved(step + 1)
        metas = self._meta_samples(samples)
        if not metas or self.trainer.meta_judge is None:
            return self._finish_meta(None)
        t0 = time.perf_counter()
        result = trainer_stages.call_evolve(self.trainer.meta_judge, current.rubric, metas, step + 1, self.trainer.initial_rubric)
        self._record_evolution(result, time.perf_counter() - t0)
        return self._finish_meta(self._store(current, result, step + 1))

    async def _evolve_async(self, current, samples: list[ScoredSample], step: int):
        self.trainer.mark_evolved(step + 1)
        metas = self._meta_samples(samples)
        if not metas or self.trainer.meta_judge is None:
            return self._finish_meta(None)
        t0 = time.perf_counter()
        result = await trainer_stages.call_evolve(self.trainer.meta_judge, current.rubric, metas, step + 1,
                                                  self.trainer.initial_rubric)
        self._record_evolution(result, time.perf_counter() - t0)
        return self._finish_meta(self._store(current, result, step + 1))

    def _record_evolution(self, result, seconds: float) -> None:
        with self._evolution_lock:
            self._evolution = (result, seconds)

    def _finish_meta(self, new):
        with self._evolution_lock:
            self._meta_outcome = 0 if new is None else new.version
        return new

    def meta_launched(self, step: int) -> None:
        """The pipeline launched a refinement at boundary `step` (after update step + 1)."""
        with self._evolution_lock:
            self._meta_launch, self._meta_outcome = step, None

    def resume_meta_step(self) -> int | None:
        """The boundary whose refinement the checkpoint this run resumed from had not installed yet
        (the pipeline launches it again, on the restored sample window, before anything else)."""
        state = self.trainer.restored_state
        return None if state is None else state.get("meta_pending_step")

    def _pending_meta(self, installed_version: int) -> int | None:
        with self._evolution_lock:
            launch, outcome = self._meta_launch, self._meta_outcome
        if launch is None or (outcome is not None and (outcome == 0 or installed_version >= outcome)):
            return None
        return launch

    async def aclose_judge(self) -> None:
        """Close the judge's and meta-judge's HTTP clients on the loop that opened them."""
        t = self.trainer
        for closer in (getattr(t.judge, "aclose", None), getattr(getattr(t.meta_judge, "llm", None), "aclose", None)):
            if closer is not None:
                await closer()

    # -- logging ------------------------------------------------------------------------------
    def _row(self, done: _TrainedStep, rubric_next: int) -> dict:
        """The step's metrics row, built by the trainer as in every schedule; the meta-judge's call
        (and its seconds) is reported on the first row written after it finished."""
        with self._evolution_lock:
            evolution, self._evolution = self._evolution, None
        now = time.perf_counter()
        timings = StepTimings(generate_s=done.clock.generate_s, judge_s=done.clock.judge_s, update_s=done.update_s,
                              evolve_s=evolution[1] if evolution is not None else 0.0, step_seconds=now - self._last_row_at)
        self._last_row_at = now
        facts = self.trainer.step_facts(done.step, done.rubric, done.rollouts, done.scored, done.trained,
                                        staleness=done.staleness, schedule=self.settings.mode, signals=done.signals,
                                        timings=timings, rubric_next=rubric_next, wall_s=now - self._t0)
        return self.trainer.step_row(facts, done.trained, evolution[0] if evolution is not None else None)

    # -- the meta-judge's window in checkpoints ---------------------------------------------------
    def attach_window(self, window: RecentSamples) -> None:
        """The pipeline's sample window, to checkpoint with the run; restored from the checkpoint the
        trainer resumed from, if it holds one."""
        self.window = window
        state = self.trainer.restored_state
        # A data-parallel rank other than 0 never reads it (no meta-judge), nor holds the rubric
        # versions its samples name.
        if self.runs_meta and state is not None and state.get("meta_window") is not None:
            window.load_state(state["meta_window"], self._sample_from_state)

    def _sample_state(self, s: ScoredSample) -> dict:
        cj = s.judgement
        return {
            "step": s.step, "slot": s.slot, "prompt": s.prompt.index, "rollout": dataclasses.asdict(s.rollout),
            "rubric_version": s.rubric_version, "judge_error": s.judge_error,
            "judgement": None if cj is None else {
                "judgement": cj.judgement.to_dict(), "cached": cj.judgement.cached, "reward": cj.reward,
                "judge_reward": cj.judge_reward, "rule_reward": cj.rule_reward, "func_rewards": dict(cj.func_rewards),
            },
        }

    def _sample_from_state(self, d: dict) -> ScoredSample:
        j = d["judgement"]
        judgement = None if j is None else CombinedJudgement(
            Judgement.from_dict(j["judgement"], cached=j["cached"]), j["reward"], j["judge_reward"], j["rule_reward"],
            j.get("func_rewards", {}))  # a checkpoint written before reward functions existed has none
        return ScoredSample(step=d["step"], slot=d["slot"], prompt=self._prompt_item(d["prompt"]),
                            rollout=Rollout(**d["rollout"]), rubric_version=d["rubric_version"],
                            rubric=self.trainer.store.get(d["rubric_version"]), judgement=judgement,
                            judge_error=d["judge_error"])


def probe_endpoint(role: str, endpoint, timeout_s: float = 10.0) -> None:
    """GET <base_url>/models once; PipelineConfigError naming the URL and the fix when it fails."""
    import httpx

    url = endpoint.base_url.rstrip("/") + "/models"
    key = endpoint.api_key()  # raises, naming the variable, when the key is expected but unset
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise PipelineConfigError(
            f"the {role} endpoint {endpoint.base_url} is unreachable ({type(exc).__name__}: {exc}); start the server "
            "(vllm serve / python -m llama_cpp.server / python -m mpo_fast.testing.judge_server) or fix its base_url"
        ) from None
    if r.status_code in (401, 403):
        raise PipelineConfigError(f"the {role} endpoint {endpoint.base_url} refused the API key (HTTP {r.status_code}); "
                                  f"check ${endpoint.api_key_env}")
    if r.status_code != 200:
        raise PipelineConfigError(f"GET {url} -> HTTP {r.status_code} ({r.text[:200]!r}); is {endpoint.base_url} an "
                                  "OpenAI-compatible API (it should end in /v1)?")


def train_pipelined(trainer, settings: PipelineSettings | None = None, *, device: str | None = None) -> PipelineReport:
    """Run `trainer` to args.train.max_steps under `settings` (default: from trainer.args).

    A fresh run, or with args.resume the continuation of the newest checkpoint in output_dir (the
    weights, optimizer, scheduler, sampler, rubric version and counters it holds). Writes the
    trainer's rubric store, checkpoints, samples.jsonl and metrics.jsonl (one row per step with the
    pipeline's staleness and stage timings) as MPOTrainer.train does.
    """
    from ..config import pipeline_settings
    from ..run_log import Progress
    from ..threads import stage_threads, torch_threads

    a = trainer.args
    # One source of truth for meta-refinement: the trainer's meta settings (none without a meta-judge).
    derived = pipeline_settings(a)
    # The judge-failure rule is the trainer's (judge.max_failure_rate once judge.min_judged were
    # judged, MPOTrainer.count_judgements), the same in every schedule: no second per-batch bound.
    settings = dataclasses.replace(settings or derived, mpo_samples=derived.mpo_samples, max_failed_fraction=1.0,
                                   evolve_every=derived.evolve_every if trainer.meta_judge is not None else 0)
    resume_step = trainer.start_run()
    start = trainer.step
    stages = TrainerStages(trainer, settings)  # after the restore: a rollout copy starts from the restored weights
    trainer.run_log = trainer._open_run_log(resume_step)  # data parallel: rank 0 writes, the others gather
    stages.progress = Progress(a.train.max_steps, enabled=a.log.progress, start=start)
    if resume_step is not None:
        stages.progress.message(f"resumed from {trainer.last_checkpoint} (step {start}, rubric v{trainer.rubric_version.version})")
    try:
        if start >= a.train.max_steps:
            return PipelineReport(settings.mode, settings.max_staleness, 0.0)
        pipeline = make_pipeline(stages, settings, rubric=trainer.rubric_version, rubric_version=trainer.rubric_version.version,
                                 start_step=start, device=device)
        stages.attach_window(pipeline.recent)
        trainer.callbacks.train_begin()
        with torch_threads(stage_threads(settings.mode, device or str(trainer.device))):  # see trainer/threads.py
            report = pipeline.run(a.train.max_steps - start)
        trainer.callbacks.train_end()
        return report
    finally:
        stages.progress.close()
        trainer.run_log.close()
