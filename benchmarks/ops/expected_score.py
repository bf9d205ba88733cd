"""expected_score: probability-weighted judge scores from [rows, vocab] logits, every backend in one run.

Peer: what a user writes without this op, `logits.float().log_softmax(-1)` then a gather and a
softmax over the allowed columns (the full [rows, vocab] fp32 log-softmax is materialised).
Floor on a GPU: the logits are read once, rows x vocab x 2 B in bf16 (512 x 151,936 -> 156 MB,
~52 us at 3 TB/s). The fused form (`expected_score_advantages`) is compared with the two-op
composition expected_score -> group_advantages.
"""
from __future__ import annotations

from typing import Iterator

import torch

import mpo_fast
from benchmarks.common import BenchContext, measurement, peak_memory_bytes, time_fn
from mpo_fast.ops.expected_score import expected_score, expected_score_advantages

VOCAB = 151936
CHOICES = 11  # scores 0-10


def _peer(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor):
    logp = logits.float().log_softmax(-1)[:, ids]
    probs = logp.softmax(-1)
    return (probs * values).sum(-1), logp.exp().sum(-1)


def run(ctx: BenchContext) -> Iterator[dict]:
    device = ctx.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    info = mpo_fast.backends()
    providers = ["reference"] + (["triton"] if device == "cuda" and info["triton"].available else [])
    rows_list = [64] if ctx.quick else [64, 512]
    group = 8
    for rows in rows_list:
        g = torch.Generator().manual_seed(0)
        logits = (torch.randn(rows, VOCAB, generator=g) * 3).to(dtype).to(device)
        ids = torch.randperm(VOCAB, generator=g)[:CHOICES].to(device)
        values = torch.arange(CHOICES, dtype=torch.float32, device=device)
        shape = f"rows={rows},V={VOCAB},K={CHOICES},{str(dtype).replace('torch.', '')}"
        fns = {"torch_log_softmax_peer": lambda: _peer(logits, ids, values)}
        for b in providers:
            fns[b] = lambda b=b: expected_score(logits, ids, values, backend=b)
        timings = {name: time_fn(fn, device=device, repeats=ctx.repeats, warmup=ctx.warmup) for name, fn in fns.items()}
        ref_ms = timings["reference"].median_ms
        floor_ms = rows * VOCAB * logits.element_size() / 3.0e12 * 1e3 if device == "cuda" else None
        for name, t in timings.items():
            rec = measurement(name, shape, "fwd", t, peak_memory_bytes(fns[name], device=device))
            rec["speedup_vs_reference"] = ref_ms / t.median_ms
            if floor_ms:
                rec["floor_ms_3TBps"] = floor_ms
            yield rec
        # Fused with group advantages vs the two ops in sequence.
        fused = {}
        for b in providers:
            fused[f"{b}_fused"] = lambda b=b: expected_score_advantages(logits, ids, values, group, scale=0.1, backend=b)
            fused[f"{b}_two_ops"] = lambda b=b: mpo_fast.group_advantages(
                expected_score(logits, ids, values, backend=b).expected * 0.1, group, backend="auto", check_finite=False
            )
        for name, fn in fused.items():
            t = time_fn(fn, device=device, repeats=ctx.repeats, warmup=ctx.warmup)
            rec = measurement(name, shape + f",G={group}", "fwd+adv", t, peak_memory_bytes(fn, device=device))
            rec["speedup_vs_reference"] = ref_ms / t.median_ms
            yield rec
