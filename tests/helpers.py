"""Numerical test helpers shared by every op's tests.

The criterion (as flash-attention's tests): a fast path is as good as plain torch in the same dtype,
measured against an fp64 reference: err(fast) <= 2 * err(torch same dtype) + floor.
"""
from __future__ import annotations

import importlib.util

import torch


def max_rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs error scaled by the reference's magnitude (never divides by a near-zero element)."""
    x = x.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    both_nan = torch.isnan(x) & torch.isnan(ref)
    diff = torch.where(both_nan, torch.zeros_like(x), (x - ref).abs())
    if torch.isnan(diff).any():
        return float("inf")
    scale = ref[~torch.isnan(ref)].abs().max().item() if (~torch.isnan(ref)).any() else 1.0
    return diff.max().item() / max(scale, 1e-30) if diff.numel() else 0.0


def assert_close_to_reference(fast, torch_same_dtype, ref_fp64, *, floor: float = 1e-6, what: str = "output"):
    err_fast = max_rel_err(fast, ref_fp64)
    err_torch = max_rel_err(torch_same_dtype, ref_fp64)
    bound = 2 * err_torch + floor
    assert err_fast <= bound, f"{what}: rel err {err_fast:.3e} > 2 * torch's {err_torch:.3e} + {floor:.0e}"


def available_backends(*names: str) -> list[str]:
    import mpo_fast

    info = mpo_fast.backends()
    return [n for n in names if info[n].available]


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
