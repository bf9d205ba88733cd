"""Oracle of fused_linear_policy_loss: materialise the logits, log-softmax, gather, policy loss.

Materialises [B*T, V] on purpose (the tests' yardstick); autograd gives grad_hidden and grad_weight.
"""
from __future__ import annotations

import torch

from .logprobs import selective_log_softmax
from .policy_loss import policy_loss


def fused_linear_policy_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    temperature: float = 1.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    aggregation: str = "token_mean",
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(loss, metrics, logp [B, T], entropy [B, T]) from hidden [B, T, H], weight [V, H], ids [B, T].

    old_logp None: the ratio is taken against this very forward's log-probs (detached), as an
    on-policy single pass does."""
    batch, steps, h = hidden.shape
    logits = hidden.reshape(batch * steps, h) @ weight.t()  # in the inputs' dtype, as an LM head
    flat_ids = torch.where(mask.reshape(-1) != 0, ids.reshape(-1), torch.full_like(ids.reshape(-1), -100))
    logp, entropy = selective_log_softmax(logits, flat_ids, temperature, -100)
    logp, entropy = logp.view(batch, steps), entropy.view(batch, steps)
    loss, metrics = policy_loss(
        logp, logp.detach() if old_logp is None else old_logp, advantages, mask, ref_logp=ref_logp, clip_low=clip_low, clip_high=clip_high,
        kl_coef=kl_coef, kl_estimator=kl_estimator, aggregation=aggregation, max_tokens=max_tokens,
    )
    return loss, metrics, logp, entropy
