"""The PPO update stage (`train.algorithm: ppo`): a value head on the policy, GAE, clipped losses.

One step: (1) without gradient, the sampling policy's log-probs and values and the reference's
log-probs for every completion (one forward each, micro-batched); (2) token rewards (score on the
last token, -kl_coef * k1 per token, as the reference's PPO), GAE and batch-wide whitening
(ppo.py); (3) ppo_epochs passes of clipped policy loss (ops.policy_loss with token advantages, no
KL term: it is in the reward) + vf_coef * clipped value loss, with gradient accumulation,
clipping, skip-on-non-finite and one scheduler step per optimizer step as in update.py.

The policy term and the values share one backbone forward (PolicyLogprobs.policy_loss with the value
head): fused_linear_policy_loss where the LM head is a trained plain nn.Linear, as in update.py.
`entropy` is the mean per-token policy entropy over the completion tokens of the first epoch.
"""
from __future__ import annotations

import logging

import torch

from ..ops.policy_loss import LossVariant
from .batch import TrainBatch
from .config import TrainSettings
from .logprobs import PolicyLogprobs
from .ppo import ValueHead, gae, token_rewards, value_loss, whiten
from .update import UpdateResult, clip_and_step

log = logging.getLogger("mpo_fast")


class PPOUpdater:
    def __init__(self, logprobs: PolicyLogprobs, value_head: ValueHead, optimizer, scheduler, params, settings: TrainSettings,
                 *, max_tokens: int, device: torch.device):
        self.logprobs = logprobs
        self.value_head = value_head
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.params = params
        self.settings = settings
        self.max_tokens = max_tokens
        self.device = device

    # -- hooks: one process has nothing to add; data-parallel ranks (ppo_data_parallel.py) reduce --

    def _counts_here(self) -> bool:
        """Whether this process's rows count (a data-parallel rank with no valid row runs one
        placeholder row with weight 0 so it still joins the gradient sum)."""
        return True

    def _sum_over_ranks(self, values: list[float]) -> list[float]:
        return values

    def _whitening_stats(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # float64 (then cast back): the data-parallel ranks' two-pass all-reduce gives the same
        # fp32 mean and variance whatever the summation order, so N ranks match one process.
        x = flat.detach().double()
        return x.mean().to(flat.dtype), x.var(unbiased=False).to(flat.dtype)

    def _sync_gradients(self) -> None:
        """Between the last backward of an epoch and clipping (data-parallel ranks sum gradients)."""

    def update(self, batch: TrainBatch, scores: torch.Tensor, *, behaviour_old_logp: bool = False) -> UpdateResult:
        """behaviour_old_logp: the batch was sampled by an older policy (overlapped, max_staleness > 0):
        the ratio's old log-probs and the reward's k1 are the rollout's recorded ones (the policy
        that acted); the values still come from the current head (the critic has no stale copy)."""
        s = self.settings
        if behaviour_old_logp and batch.behaviour_logp is None:
            raise ValueError("behaviour_old_logp=True but the batch carries no behaviour log-probs; use a rollout "
                             "backend that records them (HF generate and vLLM do), or pipeline.max_staleness: 0")
        model = self.logprobs.model
        lr = float(self.optimizer.param_groups[0]["lr"])
        size = s.micro_batch_size
        micros = [batch.select(list(range(i, min(i + size, batch.size)))).to(self.device) for i in range(0, batch.size, size)]
        chunks = [scores[i:i + size].to(self.device) for i in range(0, batch.size, size)]
        here = self._counts_here()
        model.eval()
        olds, advs, rets = [], [], []
        kl_sum, kl_tokens = 0.0, 0
        with torch.no_grad():
            for m, sc in zip(micros, chunks):
                # the sampling policy's log-probs and V at the position that predicts each completion token
                logp, values = self.logprobs.policy_and_values(m, self.value_head)
                if behaviour_old_logp:
                    logp = m.behaviour_logp
                k1 = None
                if s.kl_coef > 0:
                    k1 = (logp - self.logprobs.reference(m)) * m.completion_mask
                    if here:
                        kl_sum += float(k1.sum())
                        kl_tokens += int(m.completion_mask.sum())
                rewards = token_rewards(sc, m.completion_mask, k1, s.kl_coef)
                adv, ret = gae(rewards, values, m.completion_mask, gamma=s.gamma, lam=s.lam)
                olds.append((logp, values))
                advs.append(adv)
                rets.append(ret)
        # whitening over the whole (global) batch's tokens, not per micro-batch
        flat = torch.cat([a[m.completion_mask] for a, m in zip(advs, micros)])
        mean, var = self._whitening_stats(flat if here else flat[:0])
        advs = [torch.where(m.completion_mask, (a - mean) * torch.rsqrt(var + 1e-8), torch.zeros_like(a))
                for a, m in zip(advs, micros)]
        # per sample, the mean of its token advantages: what samples.jsonl shows as its advantage
        self.sequence_advantages = torch.cat([(a.sum(-1) / m.completion_mask.sum(-1).clamp(min=1)).cpu()
                                              for a, m in zip(advs, micros)])
        model.train()
        # each micro-batch's share of the global token count: summed over ranks, the gradient is one process's
        total = max(self._sum_over_ranks([batch.num_tokens if here else 0])[0], 1)
        weights = [m.num_tokens / total if here else 0.0 for m in micros]
        loss_total = vf_total = 0.0
        clip_frac = 0.0
        skipped = 0
        grad_norm = 0.0
        entropy_sum = 0.0
        variant = LossVariant(s.clip_low, s.clip_high, aggregation="token_mean", max_tokens=self.max_tokens)
        for epoch in range(s.ppo_epochs):
            for m, w, (old_logp, old_v), adv, ret in zip(micros, weights, olds, advs, rets):
                out = self.logprobs.policy_loss(m, old_logp=old_logp, ref_logp=None, variant=variant, advantages=adv,
                                                value_head=self.value_head)
                pl, metrics = out.loss, out.metrics
                if epoch == 0 and here:
                    entropy_sum += float(out.entropy.sum())
                vl = value_loss(out.values, old_v, ret, m.completion_mask, clip=s.vf_clip)
                loss = pl + s.vf_coef * vl
                (loss * w).backward()
                loss_total += float(loss.detach()) * w / s.ppo_epochs
                vf_total += float(vl.detach()) * w / s.ppo_epochs
                clip_frac += float(metrics["clip_fraction"]) * w / s.ppo_epochs
            self._sync_gradients()
            grad_norm, stepped = clip_and_step(self.optimizer, self.scheduler, self.params, s.max_grad_norm)
            skipped += 0 if stepped else 1
        flat_returns = torch.cat([r[m.completion_mask] for r, m in zip(rets, micros)])
        returns_sum, returns_count, kl_sum, kl_tokens = self._sum_over_ranks(
            [float(flat_returns.sum()) if here else 0.0, flat_returns.numel() if here else 0, kl_sum, kl_tokens])
        returns_mean = returns_sum / max(returns_count, 1)
        return UpdateResult(
            loss=loss_total, grad_norm=grad_norm, skipped_steps=skipped, optimizer_steps=s.ppo_epochs, lr=lr,
            metrics={"value_loss": vf_total, "clip_fraction": clip_frac, "returns_mean": returns_mean,
                     "kl": kl_sum / kl_tokens if kl_tokens else 0.0, "entropy": entropy_sum / total},
        )
