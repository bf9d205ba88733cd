"""HFRollout's decode loop: the model's forward with a KV cache, without `generate`'s machinery.

What it does that `generate` does not (measured on SmolLM2-135M, 8 rows x 64 tokens, prompts of
~116 tokens, one CPU thread):
- prefill once per distinct prompt: the n samples of a prompt share its KV cache, copied to their
  rows after the prefill. `generate` prefills all 8 rows (8 x 117 tokens, 3.2-3.8 s of a ~9.5 s
  call); the group of 4 needs 2 x 117;
- the prefill keeps the logits of the last position only (logits_to_keep=1): the LM head over
  every prompt position is 49,152 x 576 MACs a token that nobody reads;
- a static KV cache: keys/values written in place into [rows, heads, prompt + max_new, dim]
  buffers instead of `torch.cat` per layer per step (0.7 s of the call); the step has one shape,
  so `torch.compile` can trace it once (`compile`);
- sampling by inverse CDF (`sampling.choose_tokens`) instead of multinomial's 393K exponential
  variates a step.
HFRollout also runs it on oneDNN-packed weights on a CPU (`packed_linear`, LoRA folded in).
Together: 0.49x plain `generate`'s wall time (BENCHMARKS.md "rollout").

Semantics kept: left padding with position ids cumsum(mask) - 1 (as `generate`), EOS in any of
eos_ids ends a row (later tokens are pad_id), the loop stops when every row has ended or at
max_new_tokens, and the behaviour log-prob of each chosen token is recorded.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..models.hf_compat import output_cache, with_cache_name
from .base import SamplingParams
from .sampling import choose_tokens

CACHES = ("static", "dynamic")


@dataclass
class Decoded:
    tokens: torch.Tensor  # [rows, steps] long; pad_id after a row's EOS
    logprobs: torch.Tensor | None  # [rows, steps] float32


def _base_model(model):
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _takes(model, name: str) -> bool:
    try:
        return name in inspect.signature(type(_base_model(model)).forward).parameters
    except (TypeError, ValueError):
        return False


def _left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, width - len(p):] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # generate's rule: a row's first real token is position 0, padding gets 0
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _static_cache(model, source, rows: torch.Tensor, max_len: int):
    """A StaticCache of max_len slots holding `source`'s (a DynamicCache) entries for `rows`; None
    where the model's cache is not plain full-attention layers (sliding windows, hybrid models):
    those keep the dynamic cache, whose semantics `generate` defines."""
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    cache = StaticCache(config=model.config, max_cache_len=max_len)
    if len(cache.layers) != len(source.layers) or any(type(layer) is not StaticLayer for layer in cache.layers):
        return None
    for static, dynamic in zip(cache.layers, source.layers):
        static.update(dynamic.keys.index_select(0, rows), dynamic.values.index_select(0, rows))
    return cache


def decode_rows(
    model,
    prompts: Sequence[Sequence[int]],
    row_prompt: Sequence[int],
    sampling: SamplingParams,
    *,
    eos_ids: Sequence[int],
    pad_id: int,
    want_logprobs: bool = True,
    cache: str = "static",
    step: Callable | None = None,
) -> Decoded:
    """Decode one row per entry of row_prompt (an index into prompts). Call under no_grad, eval mode.

    step: for cache="static", a callable with the signature of `static_step` (e.g. its compiled
    form) run for every token after the first; None runs static_step itself.
    """
    if cache not in CACHES:
        raise ValueError(f"cache is {cache!r}; use one of {list(CACHES)}")
    device = next(model.parameters()).device
    rows = torch.as_tensor(list(row_prompt), dtype=torch.long, device=device)
    ids, mask = _left_padded(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    width = ids.shape[1]
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True)
    if _takes(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    out = model(**kwargs)
    prefix = output_cache(out)
    logits = out.logits[:, -1].index_select(0, rows)
    mask = mask.index_select(0, rows)
    positions = mask.sum(-1, keepdim=True) - 1  # the last prompt token's position, per row
    n_rows, total = rows.numel(), width + sampling.max_new_tokens
    full_mask = torch.cat([mask, mask.new_ones(n_rows, sampling.max_new_tokens)], dim=1)
    cache_name = next(iter(with_cache_name(model, {"past_key_values": None})))
    kv = _static_cache(model, prefix, rows, total) if cache == "static" else None
    if kv is not None:
        run = step if step is not None else static_step
    else:
        cache = "dynamic"
        prefix.batch_select_indices(rows)
        kv = prefix
    del out, prefix
    eos = torch.as_tensor(list(eos_ids), dtype=torch.long, device=device)
    slots = torch.arange(width, total, dtype=torch.long, device=device)  # no host-to-device copy a step
    done = torch.zeros(n_rows, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    logprobs: list[torch.Tensor] = []
    # a host sync per step to stop early costs little on CPU; on a GPU check every 8 steps
    check_every = 1 if device.type == "cpu" else 8
    for t in range(sampling.max_new_tokens):
        chosen, lp = choose_tokens(logits, sampling, want_logprobs=want_logprobs)
        chosen = chosen.masked_fill(done, pad_id)
        tokens.append(chosen)
        if lp is not None:
            logprobs.append(lp)
        done = done | torch.isin(chosen, eos)
        if t + 1 == sampling.max_new_tokens or ((t + 1) % check_every == 0 and bool(done.all())):
            break
        positions = positions + 1
        cache_position = slots[t : t + 1].clone()  # offset 0: a compiled step would recompile on a view
        if cache == "static":
            logits = run(model, kv, chosen[:, None], full_mask, positions, cache_position, cache_name)
        else:
            step_out = model(**with_cache_name(model, dict(
                input_ids=chosen[:, None], attention_mask=full_mask[:, : width + t + 1], position_ids=positions,
                cache_position=cache_position, past_key_values=kv, use_cache=True)))
            logits = step_out.logits[:, -1]
    return Decoded(torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1).float() if logprobs else None)


def static_step(model, kv, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                cache_position: torch.Tensor, cache_name: str = "past_key_values") -> torch.Tensor:
    """One decode token against a StaticCache: [rows, vocab] logits. Every tensor has a fixed shape
    (the mask covers all slots; slots not yet written are hidden by the causal rule), so
    torch.compile traces it once. cache_name: the model's KV-cache argument (hf_compat), resolved
    by the caller: looking it up in here would break the compiled graph."""
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache_position=cache_position,
                use_cache=True, **{cache_name: kv})
    return out.logits[:, -1]
