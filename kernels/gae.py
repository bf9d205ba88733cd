"""Triton generalised advantage estimation (math: mpo_fast/reference/gae.py).

One program per sequence walks T backwards in blocks of BLOCK_T. The recurrence is serial in t, but
each step is an affine map of the state (next valid value nv, next valid advantage A):
    valid t:    nv' = v_t,   A' = gamma * nv + gamma * lam * A + (r_t - v_t)
    padding t:  nv' = nv,    A' = A
i.e. x -> M x + c with M lower-triangular [[p, 0], [q, s]] and c = (c, d). Maps compose
associatively, so a block is one `tl.associative_scan` over 5-tuples (p, q, s, c, d) in reverse time
order (the block is loaded back to front), then applied to the carry from the block to its right.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .policy_loss import fp32_pair


@triton.jit
def _compose(p1, q1, s1, c1, d1, p2, q2, s2, c2, d2):
    # map 1 is applied first (later time), map 2 after it: result = map2 o map1
    p = p2 * p1
    q = q2 * p1 + s2 * q1
    s = s2 * s1
    c = p2 * c1 + c2
    d = q2 * c1 + s2 * d1 + d2
    return p, q, s, c, d


@triton.jit
def _gae_kernel(
    rew_ptr, val_ptr, mask_ptr, adv_ptr, ret_ptr,
    T, s_r_b, s_r_t, s_v_b, s_v_t, s_m_b, s_m_t,
    g_hi, g_lo, gl_hi, gl_lo,
    ACC: tl.constexpr, BLOCK_T: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK_T)
    nv_carry = tl.zeros([BLOCK_T], ACC)  # every lane holds the same carry: no 0-d loop state needed
    adv_carry = tl.zeros([BLOCK_T], ACC)
    # gamma and gamma * lam arrive as fp32 pairs (kernels/policy_loss.py: fp32_pair), exact in fp64 too.
    g = tl.zeros([BLOCK_T], ACC) + (tl.cast(g_hi, ACC) + tl.cast(g_lo, ACC))
    gl = tl.zeros([BLOCK_T], ACC) + (tl.cast(gl_hi, ACC) + tl.cast(gl_lo, ACC))
    for i in range(0, tl.cdiv(T, BLOCK_T)):
        t = T - i * BLOCK_T - 1 - k  # scan position k is time T - i BLOCK_T - 1 - k: back to front
        inb = t >= 0
        t64 = t.to(tl.int64)
        ok = (tl.load(mask_ptr + row * s_m_b + t64 * s_m_t, mask=inb, other=0) != 0) & inb
        r = tl.load(rew_ptr + row * s_r_b + t64 * s_r_t, mask=ok, other=0.0).to(ACC)
        v = tl.load(val_ptr + row * s_v_b + t64 * s_v_t, mask=ok, other=0.0).to(ACC)
        one = tl.full([BLOCK_T], 1.0, ACC)
        zero = tl.zeros([BLOCK_T], ACC)
        p = tl.where(ok, zero, one)
        q = tl.where(ok, g, zero)
        s = tl.where(ok, gl, one)
        c = tl.where(ok, v, zero)
        d = tl.where(ok, r - v, zero)
        p, q, s, c, d = tl.associative_scan((p, q, s, c, d), 0, _compose)
        adv = q * nv_carry + s * adv_carry + d
        nv = p * nv_carry + c
        tl.store(adv_ptr + row * T + t64, tl.where(ok, adv, 0.0), mask=inb)
        tl.store(ret_ptr + row * T + t64, tl.where(ok, adv + v, 0.0), mask=inb)
        # The state after the whole block (its earliest time) is at the last scan position; out-of-range
        # positions are identity maps, so that is also the state at the earliest in-range time.
        last = k == BLOCK_T - 1
        adv_carry = zero + tl.sum(tl.where(last, adv, 0.0), axis=0)
        nv_carry = zero + tl.sum(tl.where(last, nv, 0.0), axis=0)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] inputs of any strides -> (advantages, returns), contiguous fp32 (fp64 for fp64 rewards)."""
    batch, steps = rewards.shape
    acc = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    adv = torch.empty((batch, steps), dtype=acc, device=rewards.device)
    ret = torch.empty((batch, steps), dtype=acc, device=rewards.device)
    if batch == 0 or steps == 0:
        return adv, ret
    m = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
    # 1024 steps a block: a 4096-token response is 4 dependent block steps; the 5-tuple scan of a
    # 1024 block at 4 warps is 8 elements a thread.
    block_t = min(triton.next_power_of_2(steps), 1024)
    _gae_kernel[(batch,)](
        rewards, values, m, adv, ret,
        steps, rewards.stride(0), rewards.stride(1), values.stride(0), values.stride(1), m.stride(0), m.stride(1),
        *fp32_pair(float(gamma)), *fp32_pair(float(gamma) * float(lam)),
        ACC=tl.float64 if acc == torch.float64 else tl.float32, BLOCK_T=block_t, num_warps=4,
    )
    return adv, ret
