"""The MPOTrainer's own stages behind the pipeline protocol, so one update path serves both schedules.

    trainer = MPOTrainer(model, args=cfg, train_dataset=rows, judge=judge, meta_judge=meta, ...)
    report = train_pipelined(trainer, PipelineSettings(mode="overlapped", max_staleness=1))

Everything stage-specific is the trainer's: prompt order (its PromptSampler), `stages.generate`,
the judge, `stages.combine_reward` (rule rewards, missing-EOS penalty), group advantages with the
configured mode, `build_train_batch` and its PolicyUpdater (with the ratio taken against the
behaviour log-probs when a batch is stale), the meta-judge and its RubricStore, checkpoints and the
run log. What differs by schedule is only where each runs and when.

Sampling is seeded per (run seed, step, prompt), so the samples do not depend on which thread
draws them or in what order: the serial and the overlapped schedules at max_staleness=0 generate,
judge and train on identical batches.
"""
from __future__ import annotations

import dataclasses
import inspect
import threading
import time
from typing import Any

import torch

from ...judges.types import judgement_metrics
from ...ops.advantages import group_advantages
from ...rollout import HFRollout
from ...rubrics import Rubric
from .. import stages as trainer_stages
from ..batch import build_train_batch
from . import make_pipeline
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


@dataclasses.dataclass(frozen=True)
class CombinedJudgement:
    """The judge's verdict plus the reward the trainer uses (rule reward mixed in, EOS penalty)."""

    judgement: Any
    reward: float | None
    judge_reward: float | None
    rule_reward: float | None

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
        self._sampler_lock = threading.Lock()
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
        self._pending_row: dict | None = None
        self._gate_notes: list[dict] = []  # quality-gate refusals of the meta-judge, for the next metrics row
        self._notes_lock = threading.Lock()  # appended on the meta-judge's thread, taken on the trainer's
        self.progress = None  # a run_log.Progress, set by train_pipelined
        self._signals: list[str] = []  # reward-hacking signals of the last update
        self._rubric_hash = getattr(trainer.rubric_version, "hash", None)
        self._t0 = time.perf_counter()

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
        items = []
        for i in picked:
            p = t.prompts[i]
            items.append(PromptItem(index=i, prompt_ids=list(p.ids), prompt_text=p.text, reference=p.example.reference, example=p))
        return items

    def generate(self, prompts, *, step: int, policy_version: int):
        t = self.trainer
        out = []
        for p in prompts:  # one seed per (run, step, prompt): samples independent of thread and chunking
            sampling = dataclasses.replace(t.sampling, seed=(t.args.seed * 1_000_003 + step * 7919 + p.index) % 2**31)
            rollouts = trainer_stages.generate(self.rollout, [p.example], n=self.group_size, sampling=sampling,
                                               policy_version=policy_version)
            out += [dataclasses.replace(r, prompt_index=len(out) // self.group_size) for r in rollouts]
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
        t = self.trainer
        keep = [i for i, ok in enumerate(batch.valid.tolist()) if ok]
        rollouts = [s.rollout for s in batch.samples]
        t.judged += len(batch.samples)  # the trainer's counters, so its summary reads the same
        t.judge_failed += len(batch.samples) - len(keep)
        self._log_samples(batch)
        self._signals = self._observe_signals(batch, rollouts)
        if not keep:
            for _ in range(t.args.train.ppo_epochs):  # keep the schedule aligned with the step count
                t.scheduler.step()
            metrics = {"loss": float("nan"), "valid_samples": 0.0}
            self._pending_row = self._metrics_row(batch, metrics)
            return metrics
        adv = batch.advantages.detach().cpu()
        train_batch = build_train_batch([rollouts[i] for i in keep], adv[keep], pad_token_id=t.tokenizer.pad_token_id)
        t0 = time.perf_counter()
        # A batch sampled by an older policy takes its ratio against the behaviour log-probs.
        result = t.updater.update(train_batch, behaviour_old_logp=batch.step > batch.behaviour_version)
        t.policy_version = batch.step + 1
        metrics = {"loss": result.loss, "grad_norm": result.grad_norm, "lr": result.lr, "valid_samples": float(len(keep)),
                   "update_s": time.perf_counter() - t0, **{k: float(v) for k, v in result.metrics.items()}}
        self._pending_row = self._metrics_row(batch, metrics)
        return metrics

    def _observe_signals(self, batch: ScoredBatch, rollouts: list) -> list[str]:
        """Feed the step to the trainer's reward-hacking monitor (as MPOTrainer.train_step does)."""
        t = self.trainer
        if t.signals is None:
            return []
        from types import SimpleNamespace

        scored = SimpleNamespace(rewards=torch.nan_to_num(batch.rewards.detach().cpu(), nan=0.0), valid=batch.valid.detach().cpu(),
                                 judgements=[s.judgement for s in batch.samples if s.judgement is not None])
        return t.signals.observe(batch.step + 1, rollouts, scored)

    def evolve_requested(self, step: int) -> bool:
        """After update `step` (1-based): do reward-hacking signals ask for meta-refinement now?"""
        t, m = self.trainer, self.trainer.args.meta
        if t.meta_judge is None or not m.enabled or not m.trigger_on_signals or not self._signals:
            return False
        return step - t.last_evolve_step >= m.min_steps_between

    def checkpoint(self, step: int, rubric_version: int, rubric) -> None:
        t = self.trainer
        t.step = step
        t.rubric_version = rubric
        new_hash = getattr(rubric, "hash", None)
        if new_hash != self._rubric_hash:
            self._rubric_hash = new_hash
            if t.signals is not None:
                t.signals.rebaseline()  # the old rubric's baseline says nothing about the new one
        if getattr(t, "run_log", None) is not None:
            if self.samples_log:
                t.run_log.samples(self.samples_log)
                self.samples_log = []
            if self._pending_row is not None:
                row = {**self._pending_row, "rubric_version_next": getattr(rubric, "version", rubric_version)}
                t.run_log.metrics(row)
                if self.progress is not None:
                    self.progress.step(row)
                self._pending_row = None
        save_steps = t.args.log.save_steps
        if not ((save_steps and step % save_steps == 0) or step == t.args.train.max_steps):
            return
        # The producer may have drawn prompts for later steps already: the checkpoint records the
        # sampler as it was before step `step` was drawn, so a resumed run draws the same prompts.
        with self._sampler_lock:
            current = t.sampler.state_dict()
            t.sampler.load_state_dict(self._sampler_states.get(step, current))
            try:
                t.save_checkpoint()
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
        return _JudgeItem(request, sample.rollout.finished, ex, sample.rollout.text)

    async def judge(self, items: list[_JudgeItem]) -> list[CombinedJudgement]:
        t, a = self.trainer, self.trainer.args
        judgements = await t.judge.judge([i.request for i in items])
        out = []
        for item, j in zip(items, judgements):
            judged = j.reward if j.ok else None
            rule = t.task.rule_reward(item.example, item.text) if a.task.rule_weight > 0 else None
            reward = trainer_stages.combine_reward(judged, rule, rule_weight=a.task.rule_weight, finished=item.finished,
                                                   missing_eos_penalty=a.rollout.missing_eos_penalty)
            out.append(CombinedJudgement(j, reward, judged, rule))
        return out

    def advantages(self, batch: ScoredBatch) -> torch.Tensor:
        a = self.trainer.args.train
        rewards = torch.nan_to_num(batch.rewards, nan=0.0)  # masked members carry no value into the group
        return group_advantages(rewards, batch.group_size, mode=a.advantage_mode, eps=a.advantage_eps, valid=batch.valid).advantages

    # -- meta-judge ---------------------------------------------------------------------------
    def _meta_samples(self, samples: list[ScoredSample]) -> list:
        """The trainer's MetaSamples for `samples` (failed judgements included: evidence about the
        rubric too), built by its own `stages.meta_samples`, one step at a time."""
        from types import SimpleNamespace

        out = []
        for step in sorted({s.step for s in samples}):
            group = [s for s in samples if s.step == step and s.judgement is not None]
            if not group:
                continue
            rollouts = [dataclasses.replace(s.rollout, prompt_index=i) for i, s in enumerate(group)]
            scored = SimpleNamespace(
                judgements=[s.judgement.judgement for s in group],
                rewards=torch.tensor([s.reward if s.reward is not None else 0.0 for s in group]),
                valid=torch.tensor([s.reward is not None for s in group]),
            )
            out += trainer_stages.meta_samples(step + 1, [s.prompt.example for s in group], rollouts, scored,
                                               getattr(group[0].rubric, "hash", ""))
        return out

    def _store(self, current, result, step: int):
        if result is None:
            return None
        rubric = result if isinstance(result, Rubric) else getattr(result, "rubric", None)
        if not isinstance(rubric, Rubric):
            raise TypeError(f"meta_judge.evolve returned {type(result).__name__}; it must return a Rubric, an object with "
                            "a .rubric attribute, or None")
        analyses = tuple(getattr(result, "analyses", ()) or ())
        with self._notes_lock:
            self._gate_notes += [{"step": step, **r.to_dict()} for r in getattr(result, "rejections", ()) or ()]
        new = self.trainer.store.save(rubric, parent=current.version, step=step, analyses=analyses)
        return None if new.hash == current.hash else new

    def evolve(self, current, samples: list[ScoredSample], step: int):
        self.trainer.last_evolve_step = step + 1
        metas = self._meta_samples(samples)
        if not metas or self.trainer.meta_judge is None:
            return None
        return self._store(current, trainer_stages.call_evolve(self.trainer.meta_judge, current.rubric, metas, step + 1,
                                                              self.trainer.initial_rubric), step + 1)

    async def _evolve_async(self, current, samples: list[ScoredSample], step: int):
        self.trainer.last_evolve_step = step + 1
        metas = self._meta_samples(samples)
        if not metas or self.trainer.meta_judge is None:
            return None
        return self._store(current, await trainer_stages.call_evolve(self.trainer.meta_judge, current.rubric, metas, step + 1,
                                                                self.trainer.initial_rubric), step + 1)

    async def aclose_judge(self) -> None:
        """Close the judge's and meta-judge's HTTP clients on the loop that opened them."""
        t = self.trainer
        for closer in (getattr(t.judge, "aclose", None), getattr(getattr(t.meta_judge, "llm", None), "aclose", None)):
            if closer is not None:
                await closer()

    # -- logging ------------------------------------------------------------------------------
    def _metrics_row(self, batch: ScoredBatch, metrics: dict) -> dict:
        with self._notes_lock:
            notes, self._gate_notes = self._gate_notes, []
        if notes:
            metrics = {**metrics, "meta_gate_notes": notes,
                       "meta_rejections": sum(1 for n in notes if n["action"] != "flagged")}
        rewards = [s.reward for s in batch.samples if s.reward is not None]
        lengths = [len(s.rollout.completion_ids) for s in batch.samples]
        return {
            "step": batch.step + 1, "rubric_version": getattr(batch.rubric, "version", batch.rubric_version),
            "rubric_hash": getattr(batch.rubric, "hash", None),
            "reward_mean": sum(rewards) / len(rewards) if rewards else float("nan"),
            "samples": len(batch.samples), "valid_samples": len(rewards), "judge_failed": batch.num_failed,
            "judge_calls": batch.judge_calls, "policy_version": batch.behaviour_version,
            "staleness": batch.step - batch.behaviour_version, "response_length_mean": sum(lengths) / len(lengths),
            "eos_fraction": sum(s.rollout.finished for s in batch.samples) / len(batch.samples),
            "wall_s": time.perf_counter() - self._t0, "pipeline": self.settings.mode, "signals": list(self._signals),
            **_judge_metrics(batch),
            **trainer_stages.item_score_stats([s.judgement.judgement for s in batch.samples if s.judgement is not None]),
            **metrics,
        }

    def _log_samples(self, batch: ScoredBatch) -> None:
        adv = batch.advantages.detach().cpu().tolist() if batch.advantages is not None else [None] * len(batch.samples)
        for s, a in zip(batch.samples, adv):
            j = s.judgement
            self.samples_log.append({
                "step": batch.step + 1, "prompt_id": s.prompt.example.example.id, "prompt": s.prompt.prompt_text,
                "sample_index": s.sample_index, "response": s.rollout.text, "reward": s.reward,
                "judge_reward": getattr(j, "judge_reward", None), "rule_reward": getattr(j, "rule_reward", None),
                "valid": s.reward is not None, "advantage": a, "judge_error": s.judge_error or getattr(j, "error", None),
                "rubric_version": getattr(s.rubric, "version", s.rubric_version), "policy_version": s.policy_version,
                "staleness": batch.step - s.policy_version, "finished": s.rollout.finished,
                "length": len(s.rollout.completion_ids),
            })


def _judge_metrics(batch: ScoredBatch) -> dict:
    """judge_errors by cause and the score-mass distribution, as the serial trainer logs them; a
    sample the pipeline gave up on (no judgement) counts under its own cause."""
    out = judgement_metrics([s.judgement for s in batch.samples if s.judgement is not None])
    for s in batch.samples:
        if s.judgement is None:
            cause = (s.judge_error or "failed").split(":", 1)[0]
            out["judge_errors"][cause] = out["judge_errors"].get(cause, 0) + 1
    return out


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
    from ..run_log import Progress, RunLog
    from ..threads import stage_threads, torch_threads

    a = trainer.args
    # One source of truth for meta-refinement: the trainer's meta settings (none without a meta-judge).
    derived = pipeline_settings(a)
    settings = dataclasses.replace(settings or derived, mpo_samples=derived.mpo_samples,
                                   evolve_every=derived.evolve_every if trainer.meta_judge is not None else 0)
    resume_step = trainer.start_run()
    start = trainer.step
    stages = TrainerStages(trainer, settings)  # after the restore: a rollout copy starts from the restored weights
    trainer.run_log = RunLog(a, resume_step=resume_step)
    stages.progress = Progress(a.train.max_steps, enabled=a.log.progress, start=start)
    if resume_step is not None:
        stages.progress.message(f"resumed from {trainer.last_checkpoint} (step {start}, rubric v{trainer.rubric_version.version})")
    try:
        if start >= a.train.max_steps:
            return PipelineReport(settings.mode, settings.max_staleness, 0.0)
        pipeline = make_pipeline(stages, settings, rubric=trainer.rubric_version, rubric_version=trainer.rubric_version.version,
                                 start_step=start, device=device)
        with torch_threads(stage_threads(settings.mode, device or str(trainer.device))):  # see trainer/threads.py
            return pipeline.run(a.train.max_steps - start)
    finally:
        stages.progress.close()
        trainer.run_log.close()
