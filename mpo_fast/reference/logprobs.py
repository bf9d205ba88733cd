"""Per-token log-probabilities and entropies, the readable way (the oracle for every backend).

`selective_log_softmax` answers "log p(id) at every position" from logits [N, V];
`fused_linear_logprob` does the same from hidden states [N, H] and an LM head [V, H] by
materialising the logits, exactly what a user would write in plain torch. Both are differentiable
through ordinary autograd, which is what the tests compare every fast backward against.

Conventions shared by every backend:
- z = logits / temperature; logp = z[id] - logsumexp(z); entropy = -sum softmax(z) * log_softmax(z).
- Math in float32 (float64 for float64 input); outputs have that dtype.
- Positions with id == ignore_index give logp 0 and entropy 0 and never read their logits
  (so padding rows may hold anything, NaN included).
- -inf logits are ordinary zero-probability entries (vocabulary masking); a row with a NaN or a
  +inf logit has no defined distribution and gives NaN (logp and entropy); a row of only -inf too.
"""
from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scaled(logits: torch.Tensor, ids: torch.Tensor, temperature: float, ignore_index: int):
    ignored = ids == ignore_index
    z = logits.to(acc_dtype(logits.dtype)) / temperature
    z = torch.where(ignored[:, None], torch.zeros((), dtype=z.dtype, device=z.device), z)
    return z, ignored


def selective_log_softmax(
    logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp [N], entropy [N]) of `ids` under softmax(logits / temperature); see the module docstring."""
    z, ignored = _scaled(logits, ids, temperature, ignore_index)
    lse = torch.logsumexp(z, dim=-1)
    logp_all = z - lse[:, None]
    logp = logp_all.gather(1, torch.where(ignored, 0, ids).long()[:, None]).squeeze(1)
    # p * log p with p = 0 (a -inf logit) is 0; the double where keeps its gradient finite too.
    p = logp_all.exp()
    nonzero = p > 0
    plogp = torch.where(nonzero, p * torch.where(nonzero, logp_all, 0.0), 0.0)
    entropy = -plogp.sum(dim=-1)
    undefined = torch.isnan(z).any(-1) | torch.isposinf(z).any(-1) | torch.isneginf(z).all(-1)
    nan = torch.full((), float("nan"), dtype=z.dtype, device=z.device)
    logp = torch.where(undefined, nan, logp)
    entropy = torch.where(undefined, nan, entropy)
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    return torch.where(ignored, zero, logp), torch.where(ignored, zero, entropy)


def selective_log_softmax_backward(
    grad_logp: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    logits: torch.Tensor,
    ids: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> torch.Tensor:
    """d(sum grad_logp * logp + grad_entropy * entropy) / d logits, in the logits' dtype.

    With p = softmax(z), z = logits / T:
      d logp / d z_j    = [j == id] - p_j
      d entropy / d z_j = -p_j (log p_j + entropy)
    Written out (rather than autograd) because this is what every fast backward computes; the tests
    check it against autograd through `selective_log_softmax`.
    """
    z, ignored = _scaled(logits, ids, temperature, ignore_index)
    logp_all = z - lse.to(z.dtype)[:, None]
    p = logp_all.exp()
    grad = torch.zeros_like(z)
    if grad_logp is not None:
        g = grad_logp.to(z.dtype)[:, None]
        onehot = torch.zeros_like(z).scatter_(1, torch.where(ignored, 0, ids).long()[:, None], 1.0)
        grad = grad + g * (onehot - p)
    if grad_entropy is not None:
        g = grad_entropy.to(z.dtype)[:, None]
        term = p * (logp_all + entropy.to(z.dtype)[:, None])
        grad = grad - g * torch.where(p == 0, 0.0, term)  # p = 0 at a -inf logit: no gradient, not NaN
    grad = torch.where(ignored[:, None], 0.0, grad / temperature)
    return grad.to(logits.dtype)


def logsumexp_rows(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0, ignore_index: int = -100):
    """logsumexp(logits / T) per row (0 on ignored rows): the statistic every backward needs."""
    z, ignored = _scaled(logits, ids, temperature, ignore_index)
    return torch.where(ignored, 0.0, torch.logsumexp(z, dim=-1))


def fused_linear_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp [N], entropy [N]) from hidden [N, H] and weight [V, H]: the full logits, then the above.

    The logits are computed in the inputs' dtype (as a model's LM head does), the softmax in fp32.
    """
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    return selective_log_softmax(logits, ids, temperature, ignore_index)
