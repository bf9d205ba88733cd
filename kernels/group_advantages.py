"""Triton group-relative advantages.

A program handles BLOCK_G groups x BLOCK_S members as one 2-D tile (BLOCK_S = next power of two
>= group_size): load once, reduce the valid members' sum and squared deviations along the member
axis, write. Rewards are tiny (a few MB at most), so the aim is one launch next to the other device
kernels, not bandwidth.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MODE_IDS = {"grpo": 0, "dr_grpo": 1, "rloo": 2}


@triton.jit
def _group_advantages_kernel(
    rewards_ptr,
    valid_ptr,
    out_ptr,
    counts_ptr,
    num_groups,
    group_size,
    eps,
    MODE: tl.constexpr,
    ACC: tl.constexpr,
    HAS_VALID: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_G + tl.arange(0, BLOCK_G)
    cols = tl.arange(0, BLOCK_S)
    in_bounds = (rows[:, None] < num_groups) & (cols[None, :] < group_size)
    offs = rows[:, None].to(tl.int64) * group_size + cols[None, :]
    r = tl.load(rewards_ptr + offs, mask=in_bounds, other=0.0).to(ACC)
    if HAS_VALID:
        v = tl.load(valid_ptr + offs, mask=in_bounds, other=0) != 0
        v = v & in_bounds
    else:
        v = in_bounds
    r = tl.where(v, r, 0.0)  # invalid members may hold NaN: keep them out of every sum
    n = tl.sum(v.to(tl.int32), axis=1)
    nf = n.to(ACC)
    mean = tl.sum(r, axis=1) / tl.maximum(nf, 1.0)
    dev = tl.where(v, r - mean[:, None], 0.0)
    if MODE == 0:
        var = tl.sum(dev * dev, axis=1) / tl.maximum(nf - 1.0, 1.0)
        scale = 1.0 / (tl.sqrt(var) + eps)
    elif MODE == 2:
        scale = nf / tl.maximum(nf - 1.0, 1.0)
    else:
        scale = tl.full([BLOCK_G], 1.0, ACC)
    adv = tl.where(v & (n[:, None] >= 2), dev * scale[:, None], 0.0)
    tl.store(out_ptr + offs, adv, mask=in_bounds)
    tl.store(counts_ptr + rows, n, mask=rows < num_groups)


def group_advantages(
    rewards: torch.Tensor, valid: torch.Tensor | None, group_size: int, mode: str, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous 1-D rewards -> (advantages, int32 counts); math and output in fp32 (fp64 for fp64)."""
    num_groups = rewards.numel() // group_size
    acc = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    out = torch.empty(rewards.numel(), dtype=acc, device=rewards.device)
    counts = torch.empty(num_groups, dtype=torch.int32, device=rewards.device)
    if num_groups == 0:
        return out, counts
    block_s = triton.next_power_of_2(group_size)
    # ~4096 elements per program keeps registers modest for any group size.
    block_g = max(1, min(triton.next_power_of_2(num_groups), 4096 // block_s))
    grid = (triton.cdiv(num_groups, block_g),)
    valid_arg = valid.view(torch.uint8) if valid is not None else rewards  # dummy pointer when absent
    _group_advantages_kernel[grid](
        rewards, valid_arg, out, counts, num_groups, group_size, eps,
        MODE=MODE_IDS[mode], ACC=tl.float64 if acc == torch.float64 else tl.float32, HAS_VALID=valid is not None, BLOCK_G=block_g, BLOCK_S=block_s,
    )
    return out, counts
