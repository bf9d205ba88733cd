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
from benchmarks.common import BenchContext, Case, backend_providers, run_cases
from mpo_fast.ops.expected_score import expected_score, expected_score_advantages

VOCAB = 151936
CHOICES = 11  # scores 0-10


def _peer(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor):
    logp = logits.float().log_softmax(-1)[:, ids]
    probs = logp.softmax(-1)
    return (probs * values).sum(-1), logp.exp().sum(-1)


def cases(ctx: BenchContext) -> Iterator[Case]:
    device = ctx.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    fast, unavailable = backend_providers(device, gpu=("triton",), cpu=())
    providers = ["reference"] + fast
    rows_list = [64] if ctx.quick else [64, 512]
    for rows in rows_list:
        yield from _cases(ctx, rows, dtype, providers, unavailable)


def _cases(ctx: BenchContext, rows: int, dtype: torch.dtype, providers: list[str], unavailable: dict) -> Iterator[Case]:
    device = ctx.device
    group = 8
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(rows, VOCAB, generator=g) * 3).to(dtype).to(device)
    ids = torch.randperm(VOCAB, generator=g)[:CHOICES].to(device)
    values = torch.arange(CHOICES, dtype=torch.float32, device=device)
    shape = f"rows={rows},V={VOCAB},K={CHOICES},{str(dtype).replace('torch.', '')}"
    fns = {"torch_log_softmax_peer": lambda: _peer(logits, ids, values)}
    for b in providers:
        fns[b] = lambda b=b: expected_score(logits, ids, values, backend=b)
    floor_ms = rows * VOCAB * logits.element_size() / 3.0e12 * 1e3 if device == "cuda" else None
    ref_ms = {}  # the expected_score reference's time, which the fused case's speedups are also taken against

    def extras(timings, peaks):
        ref_ms["reference"] = timings["reference"].median_ms
        out = {name: {"speedup_vs_reference": ref_ms["reference"] / t.median_ms} for name, t in timings.items()}
        if floor_ms:
            for rec in out.values():
                rec["floor_ms_3TBps"] = floor_ms
        return out

    yield Case(shape, "fwd", fns, reference="reference", peers=("torch_log_softmax_peer",),
               floor_ms=(lambda: floor_ms) if floor_ms else None, extras=extras, unavailable=unavailable)
    # Fused with group advantages vs the two ops in sequence.
    fused = {}
    for b in providers:
        fused[f"{b}_fused"] = lambda b=b: expected_score_advantages(logits, ids, values, group, scale=0.1, backend=b)
        fused[f"{b}_two_ops"] = lambda b=b: mpo_fast.group_advantages(
            expected_score(logits, ids, values, backend=b).expected * 0.1, group, backend="auto", check_finite=False
        )

    def fused_extras(timings, peaks):
        base = ref_ms.get("reference") or timings["reference_two_ops"].median_ms
        return {name: {"speedup_vs_reference": base / t.median_ms} for name, t in timings.items()}

    yield Case(shape + f",G={group}", "fwd+adv", fused, reference="reference_two_ops", extras=fused_extras,
               unavailable={f"{b}_fused": why for b, why in unavailable.items()})


def run(ctx: BenchContext) -> Iterator[dict]:
    return run_cases(ctx, cases(ctx), "expected_score")
