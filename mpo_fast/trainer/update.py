"""The update stage: clipped policy loss with KL to the reference, gradient accumulation over
micro-batches, clipping, skip-and-log of non-finite gradients, one scheduler step per optimizer step.

Micro-batch losses are weighted so the accumulated gradient equals the full batch's: token_mean
weights each micro-batch by its share of the batch's completion tokens, the seq_mean variants
by its share of sequences. Splitting a batch into micro-batches therefore changes memory, not
the update.

The loss of each micro-batch comes from PolicyLogprobs.policy_loss: fused_linear_policy_loss (3
GEMMs, gradients formed in the forward) when the LM head is a trained plain nn.Linear, else logp
then the policy_loss op. `entropy` is the mean per-token entropy of the policy over the batch's
completion tokens, from the first epoch's forwards (the policy that sampled the batch when
on-policy), a by-product of the same softmax: no extra forward, no [N, V] logits on the fused paths.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import torch

from ..ops.policy_loss import LossVariant
from .batch import TrainBatch
from .config import TrainSettings
from .logprobs import PolicyLogprobs

log = logging.getLogger("mpo_fast")
_MEAN_METRICS = ("clip_fraction", "approx_kl", "kl", "ratio_mean")


@dataclass
class UpdateResult:
    loss: float
    grad_norm: float
    skipped_steps: int  # optimizer steps skipped for a non-finite gradient
    optimizer_steps: int
    lr: float
    metrics: dict[str, float]


def advance_schedule(scheduler) -> None:
    """One scheduler step per optimizer-step slot, taken or skipped, so resumed and uninterrupted
    runs see the same learning rate at the same step. torch warns when the very first optimizer
    step was skipped; that order is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        scheduler.step()


def clip_and_step(optimizer, scheduler, params, max_grad_norm: float) -> tuple[float, bool]:
    """Clip the gradient norm, step unless it is non-finite, zero the gradients, advance the
    schedule. (grad norm, stepped). Shared by the GRPO and PPO updaters."""
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf))
    stepped = math.isfinite(norm)
    if stepped:
        optimizer.step()
    else:
        log.warning("non-finite gradient norm (%s): optimizer step skipped, gradients dropped", norm)
    optimizer.zero_grad(set_to_none=True)
    advance_schedule(scheduler)
    return norm, stepped


class PolicyUpdater:
    def __init__(
        self,
        logprobs: PolicyLogprobs,
        optimizer: torch.optim.Optimizer,
        scheduler,
        params: list[torch.nn.Parameter],
        settings: TrainSettings,
        *,
        max_tokens: int,
        device: torch.device,
    ) -> None:
        self.logprobs = logprobs
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.params = params
        self.settings = settings
        self.max_tokens = max_tokens
        self.device = device

    def _micro_batches(self, batch: TrainBatch) -> tuple[list[TrainBatch], list[float]]:
        size = self.settings.micro_batch_size
        micros = [batch.select(list(range(i, min(i + size, batch.size)))).to(self.device) for i in range(0, batch.size, size)]
        if self.settings.loss_aggregation == "token_mean":
            total = max(batch.num_tokens, 1)
            weights = [m.num_tokens / total for m in micros]
        else:
            weights = [m.size / batch.size for m in micros]
        return micros, weights

    def _sync_gradients(self) -> None:
        """Hook between the last backward and clipping: data-parallel ranks sum gradients here
        (trainer/data_parallel.py); one process has nothing to do."""

    def update(self, batch: TrainBatch, *, behaviour_old_logp: bool = False) -> UpdateResult:
        """One optimisation step (ppo_epochs passes) on `batch`.

        behaviour_old_logp: take the importance ratio against the log-probs the rollout recorded
        (batch.behaviour_logp) instead of the current policy's. Needed when the batch was sampled
        by an older policy (a pipeline with max_staleness > 0): the ratio is then pi_theta / pi_behaviour
        and the clip bounds the step from the policy that actually sampled the tokens.
        """
        s = self.settings
        model = self.logprobs.model
        model.train()
        lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step's update uses
        if behaviour_old_logp and batch.behaviour_logp is None:
            raise ValueError(
                "behaviour_old_logp=True but the batch carries no behaviour log-probs; use a rollout backend that "
                "records them (HFRollout(record_logprobs=True), vLLM) or train on-policy (pipeline.max_staleness=0)"
            )
        micros, weights = self._micro_batches(batch)
        kl_coef = s.kl_coef if s.kl_in == "loss" else 0.0  # kl_in=reward: the KL is already in the advantages
        refs = [self.logprobs.reference(m) if kl_coef > 0 else None for m in micros]
        olds: list[torch.Tensor | None] = [None] * len(micros)
        if behaviour_old_logp:
            olds = [m.behaviour_logp for m in micros]
        elif s.ppo_epochs > 1:
            # Several passes over the same rollouts: the ratio must be taken against the policy
            # that sampled them, frozen before the first optimizer step.
            with torch.no_grad():
                olds = [self.logprobs.policy(m) for m in micros]
        variant = LossVariant(s.clip_low, s.clip_high, kl_coef, s.kl_estimator, s.loss_aggregation, self.max_tokens)
        sums = {k: 0.0 for k in _MEAN_METRICS}
        entropy_sum, entropy_tokens = 0.0, 0
        ratio_min, ratio_max = math.inf, -math.inf
        loss_total = 0.0
        skipped = 0
        grad_norm = 0.0
        behaviour_diff = []
        for epoch in range(s.ppo_epochs):
            for m, w, ref, old in zip(micros, weights, refs, olds):
                out = self.logprobs.policy_loss(m, old_logp=old, ref_logp=ref, variant=variant)
                loss, loss_metrics, logp = out.loss, out.metrics, out.logp
                (loss * w).backward()
                loss_total += float(loss.detach()) * w / s.ppo_epochs
                for k in _MEAN_METRICS:
                    sums[k] += float(loss_metrics[k]) * w / s.ppo_epochs
                ratio_min = min(ratio_min, float(loss_metrics["ratio_min"]))
                ratio_max = max(ratio_max, float(loss_metrics["ratio_max"]))
                if epoch == 0:
                    entropy_sum += float(out.entropy.sum())  # 0 outside the completion mask
                    entropy_tokens += m.num_tokens
                if epoch == 0 and m.behaviour_logp is not None:
                    # Sampler-vs-trainer log-prob gap: ~1e-6 in-process; large values flag a
                    # stale or mismatched rollout engine.
                    mask = m.completion_mask
                    gap = (logp - m.behaviour_logp)[mask].abs()
                    behaviour_diff.append((float(gap.sum()), int(mask.sum())))
            self._sync_gradients()
            grad_norm, stepped = clip_and_step(self.optimizer, self.scheduler, self.params, s.max_grad_norm)
            skipped += 0 if stepped else 1
        metrics = dict(sums)
        metrics["ratio_min"] = ratio_min
        metrics["ratio_max"] = ratio_max
        if entropy_tokens:
            metrics["entropy"] = entropy_sum / entropy_tokens
        if behaviour_diff:
            metrics["behaviour_logp_gap"] = sum(a for a, _ in behaviour_diff) / max(sum(n for _, n in behaviour_diff), 1)
        return UpdateResult(
            loss=loss_total,
            grad_norm=grad_norm,
            skipped_steps=skipped,
            optimizer_steps=s.ppo_epochs,
            lr=lr,
            metrics=metrics,
        )
