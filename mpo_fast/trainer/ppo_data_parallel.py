"""PPO (`train.algorithm: ppo`) on every rank of a torchrun job (DDP; see data_parallel.py).

The same contract as DataParallelUpdater for GRPO: N ranks x B prompts give the update of one
process on N*B prompts, within fp32 rounding. What PPO adds over GRPO, and how it is made global:

- advantage whitening: mean and variance over the *global* batch's completion tokens, two-pass in
  float64 (an all-reduce of (count, sum), then of the sum of squared deviations), as one process's
  flat.mean() / flat.var(unbiased=False) over the concatenated batch;
- loss weights: each micro-batch's tokens over the global token count, so the gradients summed over
  ranks (policy *and* value head: the head's parameters are in the updater's params) are the
  global token mean; the value head starts from rank 0's weights (broadcast in _setup_model);
- metrics: loss, value_loss, clip_fraction and entropy are weighted by global shares (their sum over
  ranks is the global value); kl and returns_mean are global sums over global counts.

A rank with no valid row runs one placeholder row with weight 0 (zero_weight_next, as for GRPO):
it adds nothing to any sum but joins every collective.
"""
from __future__ import annotations

import torch

from .distributed import DistContext, all_reduce_sum
from .ppo_update import PPOUpdater
from .update import UpdateResult


class DataParallelPPOUpdater(PPOUpdater):
    def __init__(self, *args, ctx: DistContext, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ctx = ctx
        self.zero_weight_next = False

    def _counts_here(self) -> bool:
        return not self.zero_weight_next

    def _sum_over_ranks(self, values: list[float]) -> list[float]:
        return all_reduce_sum(values)

    def _whitening_stats(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = flat.detach().double()
        count, total = all_reduce_sum([x.numel(), float(x.sum())])
        mean = total / max(count, 1)
        (squares,) = all_reduce_sum([float(((x - mean) ** 2).sum())])
        var = squares / max(count, 1)
        return (torch.tensor(mean, dtype=flat.dtype, device=flat.device),
                torch.tensor(var, dtype=flat.dtype, device=flat.device))

    def _sync_gradients(self) -> None:
        from .data_parallel import all_reduce_gradients

        all_reduce_gradients(self.params)

    def update(self, batch, scores, *, behaviour_old_logp: bool = False) -> UpdateResult:
        placeholder = self.zero_weight_next
        try:
            result = super().update(batch, scores, behaviour_old_logp=behaviour_old_logp)
        finally:
            self.zero_weight_next = False
        if placeholder:  # the placeholder row is an invalid sample: logged with advantage 0, as one process logs it
            self.sequence_advantages = torch.zeros_like(self.sequence_advantages)
        keys = ("value_loss", "clip_fraction", "entropy")  # weighted by global token shares: summed over ranks
        summed = all_reduce_sum([result.loss, *[result.metrics[k] for k in keys]])
        result.loss = summed[0]
        result.metrics.update(zip(keys, summed[1:]))
        return result
