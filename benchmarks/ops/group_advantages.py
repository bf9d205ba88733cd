"""group_advantages: every backend against the reference and against TRL's formula, in one run.

Peer: the formula TRL's GRPOTrainer uses inline (view(-1, G), mean/std, repeat_interleave), written
out here as TRL has it, since TRL exposes no function for it. The floor on a GPU is one kernel
launch (~5 us): rewards are a few MB at most.
"""
from __future__ import annotations

from typing import Iterator

import torch

import mpo_fast
from benchmarks.common import BenchContext, Case, Timing, backend_providers, run_cases
from mpo_fast.reference import advantages as ref


def _trl_grpo(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    mean = rewards.view(-1, group_size).mean(dim=1).repeat_interleave(group_size, dim=0)
    std = rewards.view(-1, group_size).std(dim=1).repeat_interleave(group_size, dim=0)
    return (rewards - mean) / (std + eps)


def cases(ctx: BenchContext) -> Iterator[Case]:
    shapes = [(64, 8), (1024, 16)] if ctx.quick else [(64, 8), (1024, 16), (8192, 64), (65536, 16)]
    device = ctx.device
    fast, unavailable = backend_providers(device)
    providers = ["reference"] + fast
    for num_groups, group_size in shapes:
        n = num_groups * group_size
        g = torch.Generator().manual_seed(0)
        rewards = torch.randn(n, generator=g).to(device)
        valid = (torch.rand(n, generator=g) > 0.05).to(device)
        shape = f"groups={num_groups},G={group_size}"
        fns = {"trl_inline_formula": lambda rewards=rewards, group_size=group_size: _trl_grpo(rewards, group_size)}
        fns["reference"] = lambda rewards=rewards, group_size=group_size, valid=valid: ref.group_advantages(
            rewards, group_size, "grpo", 1e-6, valid)
        for b in providers[1:]:
            fns[b] = (lambda b=b, rewards=rewards, group_size=group_size, valid=valid: mpo_fast.group_advantages(
                rewards, group_size, valid=valid, backend=b, check_finite=False))
        yield Case(shape, "fwd", fns, reference="reference", peers=("trl_inline_formula",), extras=_extras,
                   unavailable=unavailable)


def _extras(timings: dict[str, Timing], peaks) -> dict[str, dict]:
    ref_ms = timings["reference"].median_ms
    trl_ms = timings["trl_inline_formula"].median_ms
    return {
        name: dict(
            speedup_vs_reference=round(ref_ms / t.median_ms, 3),
            speedup_vs_trl=round(trl_ms / t.median_ms, 3),
            masks_failed_judgements=name != "trl_inline_formula",
        )
        for name, t in timings.items()
    }


def run(ctx: BenchContext) -> Iterator[dict]:
    return run_cases(ctx, cases(ctx), "group_advantages")
