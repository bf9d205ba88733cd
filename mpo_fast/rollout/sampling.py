"""One decoding step's token choice and behaviour log-prob, with `generate`'s sampling semantics.

`generate` (do_sample) applies temperature, then top-k, then top-p (the TopK/TopPLogitsWarper
rules, copied below), then draws with `torch.multinomial`. On CPU multinomial draws one
exponential variate per vocabulary entry (8 rows x 49,152 = 393K variates, 7.7 ms a step for
SmolLM2, 0.5 s of a 64-token rollout); inverse-CDF sampling draws one uniform per row and does a
float64 cumulative sum plus a binary search (~0.5 ms). Same distribution, a different random
stream: a seed reproduces this path's samples, not `generate`'s.

The behaviour log-prob is log_softmax(logits / T) of the chosen token, before top-k/top-p (what
the trainer recomputes); greedy uses T = 1, as HFRollout always has.
"""
from __future__ import annotations

import torch

from .base import SamplingParams


def _truncate(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """scores with the tokens top-k then top-p remove set to -inf (transformers' warpers, min_tokens_to_keep=1)."""
    if top_k > 0:
        k = min(top_k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return scores


def choose_tokens(logits: torch.Tensor, sampling: SamplingParams, *, want_logprobs: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(tokens [rows] long, behaviour log-probs [rows] float32 or None) for logits [rows, vocab]."""
    logits = logits.float()
    if sampling.greedy:
        tokens = logits.argmax(dim=-1)
        scores = logits
    else:
        scores = logits / sampling.temperature
        kept = _truncate(scores, sampling.top_k, sampling.top_p)
        probs = torch.softmax(kept, dim=-1)
        cdf = probs.cumsum(dim=-1, dtype=torch.float64)
        u = torch.rand((cdf.shape[0], 1), dtype=torch.float64, device=cdf.device) * cdf[:, -1:]
        # first index whose cumulative mass exceeds u: a zero-probability token never qualifies
        tokens = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[-1] - 1)
    if not want_logprobs:
        return tokens, None
    logprobs = scores.gather(1, tokens[:, None]).squeeze(1) - torch.logsumexp(scores, dim=-1)
    return tokens, logprobs
