"""KL to the reference in the reward (`train.kl_in: reward`), as the reference's PPO does.

Each completion token t carries the reward -kl_coef * k1_t, with k1_t = log pi(t) - log pi_ref(t)
under the policy that sampled it; the judge's reward comes on top. Without a value head (GRPO)
the return of a sequence is the sum: r_i - kl_coef * sum_t k1_t, and that is what the group
advantages see. In the loss, k1 would be useless: its expected gradient on-policy is 0 (config.py
refuses it); in the reward it is an unbiased estimate of KL(pi || pi_ref) per sequence.
"""
from __future__ import annotations

import torch

from .batch import TrainBatch
from .logprobs import PolicyLogprobs


def kl_penalised_rewards(rewards: torch.Tensor, valid: torch.Tensor, kl_per_sequence: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """rewards - kl_coef * kl_per_sequence where valid; a failed judgement keeps its (masked) value."""
    if rewards.shape != kl_per_sequence.shape or rewards.shape != valid.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)}, valid {tuple(valid.shape)} and kl_per_sequence "
                         f"{tuple(kl_per_sequence.shape)} must have the same shape [B]")
    penalised = rewards.float() - kl_coef * kl_per_sequence.float()
    return torch.where(valid, penalised, rewards.float())


@torch.no_grad()
def sequence_k1(logprobs: PolicyLogprobs, batch: TrainBatch, *, micro_batch_size: int, device: torch.device,
                behaviour: bool = False) -> torch.Tensor:
    """[B] sum over each completion of log pi - log pi_ref (float32, on the CPU), the policy in eval
    mode (no dropout) as it sampled.

    behaviour: log pi is the one the rollout recorded (batch.behaviour_logp): for a batch sampled
    by an older policy than the current one (the overlapped schedule at max_staleness > 0), the
    k1 of the policy that sampled it, as the reward is defined."""
    if behaviour and batch.behaviour_logp is None:
        raise ValueError("behaviour=True but the batch carries no behaviour log-probs; use a rollout backend that "
                         "records them (HF generate and vLLM do), or pipeline.max_staleness: 0")
    model = logprobs.model
    was_training = model.training
    model.eval()
    try:
        sums = []
        for start in range(0, batch.size, micro_batch_size):
            m = batch.select(list(range(start, min(start + micro_batch_size, batch.size)))).to(device)
            policy = m.behaviour_logp if behaviour else logprobs.policy(m)
            k1 = (policy - logprobs.reference(m)) * m.completion_mask
            sums.append(k1.sum(dim=-1).float().cpu())
        return torch.cat(sums)
    finally:
        model.train(was_training)
