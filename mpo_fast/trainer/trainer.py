"""MPOTrainer: Meta Policy Optimization as a short loop over named stages.

    for step in steps:
        generate -> judge -> advantages -> update -> evolve_rubric

    trainer = MPOTrainer(model, args=MPOConfig(...), train_dataset=rows, judge=judge, meta_judge=meta)
    result = trainer.train()

The rubric only changes between steps, so every group is judged by one rubric version and every
sample records the version that scored it. Failed judgements are masked out of the advantages
and the loss, counted, and stop the run (last checkpoint intact) past judge.max_failure_rate.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import inspect
import logging
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..rollout import HFRollout, Rollout, RolloutBackend, SamplingParams
from ..rubrics import Rubric, RubricStore, RubricVersion, load_rubric
from ..tasks import Task, get_task
from . import checkpoint as ckpt
from . import stages, step_record
from .batch import build_train_batch
from .config import MPOConfig
from .callbacks import CallbackHandler
from .eval_loop import make_evaluator
from .prompt_stream import training_prompts
from .reward_funcs import RewardFuncs
from .kl_reward import kl_penalised_rewards, sequence_k1
from .logprobs import PolicyLogprobs, adapters_disabled, causal_lm_of, is_peft_model
from .run_log import Progress, RunLog, read_jsonl
from .ppo import ValueHead
from .ppo_update import PPOUpdater
from .step_record import RunCounters, StepFacts, StepTimings
from .update import PolicyUpdater, UpdateResult, advance_schedule

log = logging.getLogger("mpo_fast")


class JudgeFailureRateError(RuntimeError):
    """Too many judgements failed: the run stops rather than train on a handful of rewards."""


class OutputDirInUseError(RuntimeError):
    """output_dir already holds a run and neither resume nor overwrite was asked for."""


@dataclass
class TrainResult:
    output_dir: str
    steps: int  # last completed step
    wall_seconds: float
    rubric_versions: list[int]  # versions that scored at least one step, in order of first use
    reward_by_version: dict[int, dict[str, float]]  # version -> {mean, std, steps, first_step, last_step}
    judge_failure_rate: float
    judge_failures: int
    judgements: int
    last_checkpoint: str | None
    metrics: list[dict[str, Any]] = field(default_factory=list, repr=False)
    pipeline: dict[str, Any] | None = None  # pipeline.mode=overlapped: stage busy/idle times, staleness, swaps


@dataclass
class StepUpdate:
    """What the advantages + update stages of one step produced (MPOTrainer.train_on)."""

    advantages: torch.Tensor  # [B] per sample, what samples.jsonl shows (PPO: the mean of its token advantages)
    degenerate_groups: int
    update: UpdateResult | None  # None: no validly judged row, nothing trained
    kl_reward_mean: float | None  # train.kl_in=reward (GRPO): mean per-sequence sum of k1 over valid samples


def _adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where the parameters allow it (CPU and CUDA floating point,
    torch >= 2.4), as transformers' Trainer (and so TRL) does by default. Measured on SmolLM2-135M,
    one CPU thread: 0.35-0.57 s a step against 2.5-4.2 s for the per-parameter default."""
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype the fused kernel lacks
        return torch.optim.AdamW(params, **kwargs)


def _scheduler_name(name: str) -> str:
    return {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[name]


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else float("nan")


def _std(values: Sequence[float]) -> float:
    return float(statistics.pstdev(values)) if len(values) > 1 else 0.0


class MPOTrainer:
    """Train `model` with MPO.

    model: a transformers causal LM (or a peft model, or a model path / "embedded").
    train_dataset: TaskExamples, rows with 'prompt' (TRL style), strings, or None to load the
        task's data as args.task says.
    judge: the reward model: `async judge(list[JudgeRequest]) -> list[Judgement]`.
    meta_judge: the meta-reward model: `evolve(rubric, samples, step)` (sync or async) returning
        a new Rubric (or an object with .rubric and .analyses), or None to keep the rubric.
        None disables rubric evolution (a fixed-rubric baseline).
    peft_config: a peft LoraConfig; None trains all parameters (unless `model` is already a
        peft model).
    processing_class: the tokenizer (loaded with the model when `model` is a path).
    rollout: a RolloutBackend; default in-process HF generate.
    signals: a reward-hacking detector (see `_observe_signals`); None: none.
    reward_funcs, reward_weights: TRL-style reward functions combined with the judge's reward
        (trainer/reward_funcs.py); default: args.reward.
    callbacks: our callbacks or transformers TrainerCallbacks (trainer/callbacks.py).
    eval_dataset: prompts judged every args.train.eval_steps, never trained on (trainer/eval_loop.py).
    train_dataset may also be an iterable (torch/datasets IterableDataset): streamed (prompt_stream.py).
    """

    def __init__(
        self,
        model,
        args: MPOConfig | None = None,
        train_dataset: Sequence[Any] | None = None,
        judge=None,
        meta_judge=None,
        peft_config=None,
        *,
        processing_class=None,
        rollout: RolloutBackend | None = None,
        signals=None,
        task: Task | None = None,
        reward_funcs=None,
        reward_weights: Sequence[float] | None = None,
        callbacks: Sequence[Any] | None = None,
        eval_dataset=None,
    ) -> None:
        self.args = args = args if args is not None else MPOConfig()
        if judge is None:
            raise ValueError("judge is None; pass a judge (e.g. mpo_fast.judges.LocalJudge) that scores responses")
        self.output_dir = Path(args.output_dir)
        self.task = task if task is not None else get_task(args.task.name)
        self._setup_model(model, processing_class, peft_config)
        self._setup_optimisation()
        self.prompts, self.sampler = training_prompts(train_dataset, self.task, self.tokenizer, args)
        self.sampling = SamplingParams(
            max_new_tokens=args.rollout.max_new_tokens, temperature=args.rollout.temperature,
            top_p=args.rollout.top_p, top_k=args.rollout.top_k,
        )
        self.rollout = rollout if rollout is not None else HFRollout(
            self.model, self.tokenizer, batch_size=args.rollout.batch_size, decode=args.rollout.decode,
            cache=args.rollout.cache, compile=args.rollout.compile,
            packed_weights=args.rollout.packed_weights,
        )
        # -- judges and rubric ----------------------------------------------------------------
        self.judge = judge
        self.meta_judge = meta_judge
        self.signals = stages.SignalMonitor(signals) if signals is not None else None
        self.initial_rubric: Rubric = (
            load_rubric(args.task.rubric, task=self.task.name) if args.task.rubric else self.task.initial_rubric()
        )
        self._loop = asyncio.new_event_loop()
        # -- what a TRL user passes: reward functions, callbacks, an eval set ---------------------
        self.callbacks = CallbackHandler(callbacks, self)
        self.control = self.callbacks.control  # control.should_training_stop = True ends the run after the step
        self.reward_funcs = RewardFuncs.build(
            reward_funcs if reward_funcs is not None else (args.reward.funcs or None),
            reward_weights if reward_weights is not None else args.reward.weights,
            trainer_state=lambda: self.callbacks.state,
        )
        self.evaluator = make_evaluator(self, eval_dataset)
        # -- run state (what a checkpoint holds) ------------------------------------------------
        self.step = 0
        self.policy_version = 0
        self.judged = 0
        self.judge_failed = 0
        self.skipped_nonfinite = 0
        self.last_evolve_step = 0
        # 4x what the meta-judge analyses: enough for its prescreen to find the odd ones out.
        self.meta_buffer = stages.MetaSampleBuffer(capacity=4 * args.meta.num_samples)
        self.store: RubricStore | None = None
        self.rubric_version: RubricVersion | None = None
        self.last_checkpoint: Path | None = None
        self._last_evolution = None
        self._run_started = time.perf_counter()
        self.restored_state: dict[str, Any] | None = None  # the checkpoint state a resumed run started from

    def _setup_model(self, model, tokenizer, peft_config) -> None:
        """Policy (LoRA-wrapped when peft_config is given), tokenizer, and the KL reference:
        LoRA -> the same module with adapters disabled; full fine-tuning -> a frozen copy;
        kl_coef == 0 -> none at all."""
        args = self.args
        if isinstance(model, str):
            from .model_loading import load_causal_lm

            model, loaded_tokenizer = load_causal_lm(model, dtype=args.model.dtype, device=args.model.device)
            tokenizer = tokenizer or loaded_tokenizer
        if tokenizer is None:
            raise ValueError("processing_class (the tokenizer) is None; pass the policy's tokenizer")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        if peft_config is not None:
            if is_peft_model(model):
                raise ValueError("model is already a peft model and peft_config was given too; pass one of them")
            from ..models.hf_compat import wrap_with_peft

            model = wrap_with_peft(model, peft_config)
        self.model = model
        if args.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if is_peft_model(model):
                model.enable_input_require_grads()
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters; unfreeze some, or pass a peft_config")
        self.device = next(model.parameters()).device
        self.value_head = None
        if args.train.algorithm == "ppo":  # V(s_t) from the policy's last hidden state, trained with it
            self.value_head = ValueHead(causal_lm_of(model).config.hidden_size).to(self.device)
            self.params += list(self.value_head.parameters())
        self.ref_model = None
        if args.train.kl_coef > 0 and not is_peft_model(model):
            self.ref_model = copy.deepcopy(causal_lm_of(model)).eval().requires_grad_(False)
        self.logprobs = PolicyLogprobs(
            model, temperature=args.rollout.temperature, impl=args.model.logprob_impl, ref_model=self.ref_model
        )

    def _setup_optimisation(self) -> None:
        t = self.args.train
        self.optimizer = _adamw(
            self.params, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
            weight_decay=t.weight_decay,
        )
        from transformers import get_scheduler

        self.scheduler = get_scheduler(
            _scheduler_name(t.lr_scheduler), self.optimizer,
            num_warmup_steps=t.warmup_steps * t.ppo_epochs, num_training_steps=t.max_steps * t.ppo_epochs,
        )
        updater = PPOUpdater if t.algorithm == "ppo" else PolicyUpdater
        extra = (self.value_head,) if t.algorithm == "ppo" else ()
        self.updater = updater(
            self.logprobs, *extra, self.optimizer, self.scheduler, self.params, t,
            max_tokens=self.args.rollout.max_new_tokens, device=self.device,
        )

    # -- helpers ----------------------------------------------------------------------------

    def _run_async(self, awaitable):
        if not inspect.isawaitable(awaitable):
            return awaitable  # a synchronous judge or meta-judge
        return self._loop.run_until_complete(awaitable)

    @contextlib.contextmanager
    def _judging(self):
        """A judge that shares the policy's weights must see the frozen base: adapters off,
        eval mode, no autograd."""
        shares = self.args.judge.backend == "local" and self.args.judge.model == "policy" and is_peft_model(self.model)
        if not shares:
            yield
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), adapters_disabled(self.model):
                yield
        finally:
            self.model.train(was_training)

    def _state(self) -> dict[str, Any]:
        return {
            "policy_version": self.policy_version,
            "sampler": self.sampler.state_dict(),
            "rubric_version": self.rubric_version.version,
            "rubric_hash": self.rubric_version.hash,
            "judged": self.judged,
            "judge_failed": self.judge_failed,
            "skipped_nonfinite": self.skipped_nonfinite,
            "last_evolve_step": self.last_evolve_step,
            "meta_buffer": self.meta_buffer.state(),
            "signals": self.signals.state() if self.signals is not None else None,
            # hidden_size + 1 floats: float32 -> JSON -> float32 is exact
            "value_head": None if self.value_head is None else {k: v.tolist() for k, v in self.value_head.state_dict().items()},
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.policy_version = int(state["policy_version"])
        self.sampler.load_state_dict(state["sampler"])
        self.rubric_version = self.store.get(int(state["rubric_version"]))
        if self.rubric_version.hash != state["rubric_hash"]:
            raise ckpt.CheckpointError(
                f"rubric v{state['rubric_version']} in {self.store.directory} has hash {self.rubric_version.hash}, "
                f"the checkpoint recorded {state['rubric_hash']}; the rubric store was changed after the checkpoint"
            )
        self.judged = int(state["judged"])
        self.judge_failed = int(state["judge_failed"])
        self.skipped_nonfinite = int(state["skipped_nonfinite"])
        self.last_evolve_step = int(state["last_evolve_step"])
        self.meta_buffer.load_state(state["meta_buffer"])
        if self.value_head is not None and state.get("value_head") is not None:
            self.value_head.load_state_dict({k: torch.tensor(v) for k, v in state["value_head"].items()})
        if self.signals is not None and state.get("signals") is not None:
            self.signals.load_state(state["signals"])

    def _prepare_output_dir(self) -> int | None:
        """Returns the step to resume after, or None for a fresh run."""
        out = self.output_dir
        existing = ckpt.latest_checkpoint(out)
        if self.args.resume:
            ckpt.sweep_partial_checkpoints(out)
            if existing is None:
                log.warning("resume=true but %s holds no checkpoint: starting from step 0", out)
                self._clear_run_files()
                return None
            return int(existing.name.split("-")[1])
        has_run = existing is not None or (out / "metrics.jsonl").exists() or (out / "rubrics" / "index.json").exists()
        if has_run:
            if not self.args.overwrite:
                raise OutputDirInUseError(
                    f"output_dir {out} already holds a run ({existing or out / 'metrics.jsonl'}); pass resume=true to "
                    "continue it, overwrite=true to start over there, or choose another output_dir"
                )
            self._clear_run_files()
        return None

    def _clear_run_files(self) -> None:
        out = self.output_dir
        # Only what a run writes; never the whole directory (it may be a user's folder).
        for sub in ("checkpoints", "rubrics", "tensorboard"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("metrics.jsonl", "samples.jsonl", "summary.json", "config.yaml"):
            (out / name).unlink(missing_ok=True)

    # -- the loop ---------------------------------------------------------------------------

    def train(self) -> TrainResult:
        """Train to args.train.max_steps (continuing the newest checkpoint when args.resume).

        pipeline.mode=overlapped runs the same stages concurrently (trainer/pipeline); the result,
        the run files and the checkpoints are the same kind either way.
        """
        args = self.args
        started = time.perf_counter()
        if args.pipeline.mode == "overlapped":
            from .pipeline.trainer_stages import train_pipelined

            report = train_pipelined(self, device=str(self.device))
            result = self.summary(time.perf_counter() - started)
            result.pipeline = report.summary()
            return result
        resume_step = self.start_run()
        self.run_log = self._open_run_log(resume_step)
        progress = Progress(args.train.max_steps, enabled=args.log.progress, start=self.step)
        if resume_step is not None:
            progress.message(f"resumed from {self.last_checkpoint} (step {self.step}, rubric v{self.rubric_version.version})")
        self.callbacks.train_begin()
        try:
            while self.step < args.train.max_steps:
                row = self.train_step(self.step + 1)
                self.step += 1
                if self.evaluator is not None:
                    row.update(self.evaluator.maybe_run(self.step))
                self.run_log.metrics(row)
                progress.step(row)
                save_steps = args.log.save_steps
                saved = (save_steps and self.step % save_steps == 0) or self.step == args.train.max_steps
                if saved:
                    self.save_checkpoint()
                if self.callbacks.step_end(self.step, row, saved=bool(saved)):
                    if not saved:
                        self.save_checkpoint()  # a stopped run can be resumed from where it stopped
                    break
        finally:
            progress.close()
            self.run_log.close()
        self.callbacks.train_end()
        return self.summary(time.perf_counter() - started)

    def evaluate(self) -> dict[str, Any]:
        """Generate for the eval set and judge it now (eval/* metrics), as transformers' Trainer.evaluate."""
        if self.evaluator is None:
            raise ValueError("there is no eval set; pass eval_dataset=... to MPOTrainer (or set task.eval_split)")
        return self.evaluator.run(self.step)

    def start_run(self) -> int | None:
        """Prepare output_dir and the run state: a fresh rubric store, or everything the newest
        checkpoint holds (weights, optimizer, scheduler, sampler, rubric version, counters) with the
        rollout backend synced to the restored weights. Returns the step resumed after, or None."""
        self._run_started = time.perf_counter()
        resume_step = self._prepare_output_dir()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.store = RubricStore(self.output_dir / "rubrics")
        if resume_step is None:
            self.rubric_version = self.store.save(self.initial_rubric, step=0, analyses=())
        else:
            path = ckpt.checkpoints_dir(self.output_dir) / f"step-{resume_step:06d}"
            state = ckpt.load_checkpoint(path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler)
            self._load_state(state)
            self.restored_state = state
            self.last_checkpoint = path
            self.rollout.sync_weights(self.model, self.policy_version)
        return resume_step

    def save_checkpoint(self, extra_state: dict[str, Any] | None = None) -> Path:
        """extra_state: what a schedule keeps beyond the trainer's own state (the overlapped
        pipeline's meta-judge sample window), read back from `restored_state` on resume."""
        self.last_checkpoint = ckpt.save_checkpoint(
            self.output_dir, self.step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            state={**self._state(), **(extra_state or {})}, keep=self.args.log.save_total_limit,
        )
        return self.last_checkpoint

    def train_step(self, step: int) -> dict[str, Any]:
        """One MPO step on the serial schedule; returns its metrics row (also written to
        metrics.jsonl by train()). The pipelined schedules run the same stage methods
        (count_judgements, train_on, step_row; pipeline/trainer_stages.py), only at other times."""
        args = self.args
        t_start = time.perf_counter()
        rubric_version = self.rubric_version
        rubric = rubric_version.rubric
        prompts = [self.prompts[i] for i in self.sampler.next(args.rollout.prompts_per_step)]
        group = args.rollout.num_generations

        # generate
        t0 = time.perf_counter()
        rollouts = stages.generate(self.rollout, prompts, n=group, sampling=self.sampling, policy_version=self.policy_version)
        generate_s = time.perf_counter() - t0

        # judge
        t0 = time.perf_counter()
        with self._judging():
            scored = stages.judge(
                self.judge, self._run_async, rollouts, prompts, rubric, self.task,
                rule_weight=args.task.rule_weight, missing_eos_penalty=args.rollout.missing_eos_penalty,
                reward_funcs=self.reward_funcs,
            )
        judge_s = time.perf_counter() - t0
        self.count_judgements(step, scored)

        # advantages + update (failed judgements are out of the batch, and so out of the loss mask)
        t0 = time.perf_counter()
        trained = self.train_on(rollouts, scored, version_after=self.policy_version + 1)
        if trained.update is not None:
            self.rollout.sync_weights(self.model, self.policy_version)
        update_s = time.perf_counter() - t0

        # samples + evolve
        sample_prompts = [prompts[r.prompt_index] for r in rollouts]
        self.run_log.samples(self.sample_records(step, sample_prompts, rollouts, scored, trained, rubric_version, staleness=0))
        self.meta_buffer.add(stages.meta_samples(step, prompts, rollouts, scored, rubric_version.hash))
        signals = self.signals.observe(step, rollouts, scored) if self.signals is not None else []
        t0 = time.perf_counter()
        self._maybe_evolve(step, signals)
        evolve_s = time.perf_counter() - t0
        evolution, self._last_evolution = self._last_evolution, None

        timings = StepTimings(generate_s=generate_s, judge_s=judge_s, update_s=update_s, evolve_s=evolve_s,
                              step_seconds=time.perf_counter() - t_start)
        facts = self.step_facts(step, rubric_version, rollouts, scored, trained, staleness=0, schedule="serial",
                                signals=signals, timings=timings)
        return self.step_row(facts, trained, evolution)

    # -- the stages every schedule runs (serial: train_step; pipelined: pipeline/trainer_stages.py) --

    def count_judgements(self, step: int, scored: stages.ScoredRollouts) -> None:
        """Add a step's judgements to the run's tallies; JudgeFailureRateError past
        judge.max_failure_rate (once judge.min_judged were judged): one rule for every schedule."""
        self._count_failures(step, scored)

    def train_on(self, rollouts: list[Rollout], scored: stages.ScoredRollouts, *, version_after: int,
                 behaviour_old_logp: bool = False) -> StepUpdate:
        """Advantages (with KL in the reward where configured) and the update on the validly judged
        rows; the weights become `version_after`. No valid row: no update, the LR schedule still
        advances one slot per PPO epoch so it stays aligned with the step count.

        behaviour_old_logp: the batch was sampled by an older policy (a pipeline with max_staleness
        > 0): the importance ratio, and the k1 of KL-in-reward, are taken against the log-probs the
        rollout recorded instead of the current policy's."""
        args, t = self.args, self.args.train
        group = args.rollout.num_generations
        adv_input, kl_seq = scored, None
        if t.kl_in == "reward" and t.kl_coef > 0 and t.algorithm == "grpo":  # r - kl_coef * sum_t k1_t
            kl_seq = sequence_k1(self.logprobs, build_train_batch(rollouts, torch.zeros(len(rollouts)),
                                                                  pad_token_id=self.tokenizer.pad_token_id),
                                 micro_batch_size=t.micro_batch_size, device=self.device, behaviour=behaviour_old_logp)
            adv_input = dataclasses.replace(scored, rewards=kl_penalised_rewards(scored.rewards, scored.valid, kl_seq,
                                                                                 t.kl_coef))
        adv = stages.advantages(adv_input, group_size=group, mode=t.advantage_mode, eps=t.advantage_eps)
        keep = self._update_rows(scored)
        update: UpdateResult | None = None
        logged = adv.advantages
        if keep:
            batch = build_train_batch(
                [rollouts[i] for i in keep], adv.advantages[keep], pad_token_id=self.tokenizer.pad_token_id
            )
            if t.algorithm == "ppo":  # token advantages from the judge's scores (ppo_update.py)
                update = self.updater.update(batch, scored.rewards[keep], behaviour_old_logp=behaviour_old_logp)
                logged = torch.zeros(len(rollouts))  # the advantages PPO trained on (per-sample token mean)
                logged[keep] = self.updater.sequence_advantages
            else:
                update = self.updater.update(batch, behaviour_old_logp=behaviour_old_logp)
            self.policy_version = version_after
            self.skipped_nonfinite += update.skipped_steps
        else:
            self.skip_update()
        kl_mean = None
        if kl_seq is not None:  # per-sequence sum of k1 over the valid samples (what the reward lost / kl_coef)
            kl_mean = _mean([float(k) for k, v in zip(kl_seq.tolist(), scored.valid.tolist()) if v])
        return StepUpdate(advantages=logged.detach().cpu(), degenerate_groups=int(adv.degenerate_groups), update=update,
                          kl_reward_mean=kl_mean)

    def end_step(self, step: int, rubric_version: RubricVersion) -> None:
        """A pipelined schedule finished `step`; `rubric_version` is in force for the next one (a new
        rubric: the reward-hacking monitor starts a fresh baseline, as _maybe_evolve does)."""
        self.step = step
        if rubric_version.hash != self.rubric_version.hash and self.signals is not None:
            self.signals.rebaseline()  # the old rubric's baseline says nothing about the new one
        self.rubric_version = rubric_version

    def mark_evolved(self, step: int) -> None:
        """The meta-judge ran after `step` (meta.min_steps_between counts from here)."""
        self.last_evolve_step = step

    def skip_update(self) -> None:
        """A step that trains nothing still takes its LR-schedule slots (one per PPO epoch)."""
        for _ in range(self.args.train.ppo_epochs):
            advance_schedule(self.scheduler)

    def counters(self) -> RunCounters:
        return RunCounters(judged=self.judged, judge_failed=self.judge_failed, skipped_nonfinite=self.skipped_nonfinite)

    def sample_records(self, step: int, prompts: Sequence[stages.PromptItem], rollouts: Sequence[Rollout],
                       scored: stages.ScoredRollouts, trained: StepUpdate, rubric_version: RubricVersion, *,
                       staleness) -> list[dict[str, Any]]:
        return step_record.sample_records(step, prompts, rollouts, scored, trained.advantages.tolist(), rubric_version,
                                          staleness=staleness, limit=self.args.log.samples_per_step)

    def step_facts(self, step: int, rubric_version: RubricVersion, rollouts: Sequence[Rollout],
                   scored: stages.ScoredRollouts, trained: StepUpdate, *, staleness: int, schedule: str,
                   signals: list[str], timings: StepTimings, rubric_next: int | None = None,
                   wall_s: float | None = None) -> StepFacts:
        return StepFacts(
            step=step, rubric_version=rubric_version, scored=scored,
            lengths=[len(r.completion_ids) for r in rollouts], finished=[bool(r.finished) for r in rollouts],
            degenerate_groups=trained.degenerate_groups, policy_version=self.policy_version, staleness=staleness,
            schedule=schedule, signals=list(signals),
            rubric_next=self.rubric_version.version if rubric_next is None else rubric_next, timings=timings,
            wall_s=time.perf_counter() - self._run_started if wall_s is None else wall_s,
            lr=float(self.optimizer.param_groups[0]["lr"]),
        )

    def step_row(self, facts: StepFacts, trained: StepUpdate, evolution_result: Any = None) -> dict[str, Any]:
        """The step's metrics.jsonl row (step_record.metrics_row), the same keys in every schedule."""
        row = self._metrics_row(facts, trained.update, step_record.evolution_metrics(evolution_result))
        row["kl_reward_mean"] = trained.kl_reward_mean
        return row

    # -- stage helpers ----------------------------------------------------------------------

    def _update_rows(self, scored: stages.ScoredRollouts) -> list[int]:
        """Rows the update trains on: the validly judged ones (data-parallel ranks override it so
        every rank joins the gradient all-reduce)."""
        return [i for i in range(len(scored.judgements)) if bool(scored.valid[i])]

    def _open_run_log(self, resume_step: int | None):
        return RunLog(self.args, resume_step=resume_step)  # data-parallel: rank 0 writes, the others gather

    def _count_failures(self, step: int, scored: stages.ScoredRollouts) -> None:
        self.judged += len(scored.judgements)
        self.judge_failed += sum(1 for j in scored.judgements if not j.ok)
        j = self.args.judge
        rate = self.judge_failed / max(self.judged, 1)
        if self.judged >= j.min_judged and rate > j.max_failure_rate:
            errors: dict[str, int] = {}
            for jd in scored.judgements:
                if not jd.ok:
                    kind = (jd.error or "failed").split(":", 1)[0][:80]
                    errors[kind] = errors.get(kind, 0) + 1
            where = f"the last checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written yet"
            raise JudgeFailureRateError(
                f"stopping at step {step}: {self.judge_failed} of {self.judged} judgements failed "
                f"({rate:.0%} > judge.max_failure_rate={j.max_failure_rate:.0%}); {where}. Errors this step: {errors}. "
                "Fix: check the judge is reachable and answering; with a small judge model use judge.scoring=expected "
                "or constrained (free-text parsing fails on small models); then resume with resume=true"
            )

    def _maybe_evolve(self, step: int, signals: list[str]) -> RubricVersion | None:
        """The MPO step: every meta.interval steps, or early on a reward-hacking signal."""
        m = self.args.meta
        if self.meta_judge is None or not m.enabled or step >= self.args.train.max_steps:
            return None  # a rubric made at the last step would never score anything
        scheduled = step % m.interval == 0
        triggered = bool(signals) and m.trigger_on_signals
        if not (scheduled or triggered) or step - self.last_evolve_step < m.min_steps_between:
            return None
        samples = list(self.meta_buffer.samples)
        if not samples:
            return None
        current = self.rubric_version
        with self._judging():
            result = self._run_async(stages.call_evolve(self.meta_judge, current.rubric, samples, step, self.initial_rubric))
        self.last_evolve_step = step
        self.meta_buffer.clear()
        self._last_evolution = result
        if result is None or getattr(result, "changed", True) is False:
            return None
        rubric = result if isinstance(result, Rubric) else getattr(result, "rubric", None)
        if not isinstance(rubric, Rubric):
            raise TypeError(
                f"meta_judge.evolve returned {type(result).__name__}; it must return a Rubric, an object with a "
                ".rubric attribute (judges.Evolution), or None"
            )
        analyses = tuple(getattr(result, "analyses", ()) or ())
        new = self.store.save(rubric, parent=current.version, step=step, analyses=analyses)
        if new.hash == current.hash:
            return None
        self.rubric_version = new  # takes effect at the next step: this step's samples keep their version
        if self.signals is not None:
            self.signals.rebaseline()  # the old rubric's baseline says nothing about the new one
        return new

    def _metrics_row(self, facts: StepFacts, update: UpdateResult | None, evolution: dict[str, Any]) -> dict[str, Any]:
        """One process: the shared row builder as is (data-parallel ranks gather first)."""
        return step_record.metrics_row(facts, update=update, counters=self.counters(), evolution=evolution)

    # -- summary ----------------------------------------------------------------------------

    def summary(self, wall_seconds: float) -> TrainResult:
        rows = read_jsonl(self.output_dir / "metrics.jsonl")
        by_version: dict[int, dict[str, Any]] = {}
        for row in rows:
            v = int(row["rubric_version"])
            entry = by_version.setdefault(v, {"rewards": [], "first_step": row["step"]})
            if row.get("reward_mean") is not None:
                entry["rewards"].append(float(row["reward_mean"]))
            entry["last_step"] = row["step"]
        reward_by_version = {
            v: {
                "mean": _mean(e["rewards"]),
                "std": _std(e["rewards"]),
                "steps": len(e["rewards"]),
                "first_step": e["first_step"],
                "last_step": e["last_step"],
            }
            for v, e in by_version.items()
        }
        return TrainResult(
            output_dir=str(self.output_dir),
            steps=self.step,
            wall_seconds=wall_seconds,
            rubric_versions=list(by_version),
            reward_by_version=reward_by_version,
            judge_failure_rate=self.judge_failed / max(self.judged, 1),
            judge_failures=self.judge_failed,
            judgements=self.judged,
            last_checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None,
            metrics=rows,
        )

    def close(self) -> None:
        """Release the rollout backend and the judges' HTTP clients (OpenAIJudge.aclose)."""
        self.rollout.close()
        if self._loop.is_closed():
            return
        owners = [self.judge]
        meta_llm = getattr(self.meta_judge, "llm", None)
        if meta_llm is not None and meta_llm is not getattr(self.judge, "llm", None):  # not shared with the RM
            owners.append(meta_llm)
        for owner in owners:
            aclose = getattr(owner, "aclose", None)
            if aclose is not None:
                self._loop.run_until_complete(aclose())
        self._loop.close()
