"""gae: every backend against the reference and TRL's PPO loop, in one run.

Workload: per-token rewards (a score on each sequence's last valid token, a small KL-style penalty
elsewhere), value estimates, a bool mask with ~25% right padding; gamma 1.0, lam 0.95 (TRL's PPO
defaults). Pass: fwd only (GAE produces targets, it has no backward).

Peer: TRL PPOTrainer's reverse loop as TRL writes it (values zeroed past the response, one column
per Python iteration: ~6 kernel launches per time step). The reference is the same loop with the
padding semantics of mpo_fast (torch.where per step).
Floor: rewards and values 4 B + mask 1 B read, advantages and returns 8 B written = 17 B/token at the
copy bandwidth measured in this run; on a GPU the serial dependency over T also bounds it.
"""
from __future__ import annotations

from typing import Iterator

import torch

from benchmarks.common import BenchContext, Case, backend_providers, once, run_cases, time_fn
from benchmarks.ops.policy_loss import copy_bandwidth
from mpo_fast.ops.gae import gae

GAMMA, LAM = 1.0, 0.95


def _trl_ppo_loop(rewards, values, padding_mask):
    values = torch.masked_fill(values, padding_mask, 0)
    lastgaelam = 0
    advantages_reversed = []
    gen_length = rewards.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + GAMMA * nextvalues - values[:, t]
        lastgaelam = delta + GAMMA * LAM * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    returns = advantages + values
    return advantages, returns


def _inputs(batch: int, steps: int, device: str):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(steps // 2, steps + 1, (batch,), generator=g)
    mask = torch.arange(steps)[None, :] < lengths[:, None]
    rewards = -0.01 * torch.rand(batch, steps, generator=g)
    rewards[torch.arange(batch), lengths - 1] += torch.randn(batch, generator=g)
    rewards = rewards * mask
    values = torch.randn(batch, steps, generator=g) * mask
    return rewards.to(device), values.to(device), mask.to(device)


def cases(ctx: BenchContext) -> Iterator[Case]:
    device = ctx.device
    shapes = [(64, 1024)] if ctx.quick else [(64, 1024), (512, 4096)]
    fast, unavailable = backend_providers(device)
    bandwidth = once(lambda: copy_bandwidth(device))
    for batch, steps in shapes:
        yield _case(ctx, batch, steps, fast, unavailable, bandwidth)


def _case(ctx: BenchContext, batch: int, steps: int, fast: list[str], unavailable: dict, bandwidth) -> Case:
    rewards, values, mask = _inputs(batch, steps, ctx.device)
    fns = {"reference": lambda: gae(rewards, values, mask, gamma=GAMMA, lam=LAM, backend="reference")}
    for b in fast:
        fns[b] = lambda b=b: gae(rewards, values, mask, gamma=GAMMA, lam=LAM, backend=b)
    fns["trl_ppo_loop"] = lambda: _trl_ppo_loop(rewards, values, ~mask)
    floor_ms = once(lambda: batch * steps * 17 / bandwidth() * 1e3)
    # The Python loops run T iterations: fewer repeats keep the full run to minutes.
    repeats = ctx.repeats if steps <= 1024 else max(3, ctx.repeats // 4)

    def timer(fn, ctx):
        return time_fn(fn, device=ctx.device, repeats=repeats, warmup=1)

    def extras(timings, peaks):
        ref_ms = timings["reference"].median_ms
        trl_ms = timings["trl_ppo_loop"].median_ms
        return {
            name: dict(
                floor_ms=round(floor_ms(), 4),
                ratio_to_floor=round(t.median_ms / floor_ms(), 2),
                speedup_vs_reference=round(ref_ms / t.median_ms, 3),
                speedup_vs_trl=round(trl_ms / t.median_ms, 3),
                copy_gb_s=round(bandwidth() / 1e9, 2),
            )
            for name, t in timings.items()
        }

    return Case(f"B={batch},T={steps}", "fwd", fns, reference="reference", peers=("trl_ppo_loop",), floor_ms=floor_ms,
                extras=extras, unavailable=unavailable, timer=timer)


def run(ctx: BenchContext) -> Iterator[dict]:
    return run_cases(ctx, cases(ctx), "gae")
