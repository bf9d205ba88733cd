"""Every C++ op returns with the x87 FPU as it found it.

GCC 12 at -O3 compiled some 64-bit vector moves in mpo_fast._C through MMX registers (movq %mm0,
movq2dq) without `emms`: each call left the x87 register stack tagged in use, and the next x87
instruction anywhere in the process failed. glibc's fmod is one (numpy's floor_divide calls it), so
after a training step `np.float64(0.0389) // np.float64(0.01)` was NaN, and matplotlib's tick
locator raised "arange: cannot compute length" in a report drawn by the process that had trained.
CMakeLists.txt builds _C with -mno-mmx. This test fails on a module built without it (x86-64 glibc).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import available_backends

pytestmark = pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="mpo_fast._C is not built")


def _x87_division_is_sound() -> bool:
    return bool(np.float64(0.0389) // np.float64(0.01) == 3.0)  # fmod via x87 fprem on glibc x86-64


def _policy_loss():
    from mpo_fast.ops.policy_loss import policy_loss

    lp = torch.randn(2, 5, requires_grad=True)
    ref = (lp.detach() + 0.1)
    policy_loss(lp, lp.detach() - 0.05, torch.randn(2), torch.ones(2, 5, dtype=torch.bool), ref_logp=ref,
                kl_coef=0.1, backend="cpu").loss.backward()


def _selective_log_softmax():
    from mpo_fast.ops.selective_log_softmax import selective_log_softmax

    x = torch.randn(3, 50, requires_grad=True)
    out = selective_log_softmax(x, torch.tensor([1, 2, 3]), return_entropy=True, backend="cpu")
    (out.logp.sum() + out.entropy.sum()).backward()


def _fused_linear():
    from mpo_fast.ops.fused_linear_logprob import fused_linear_logprob
    from mpo_fast.ops.fused_linear_policy_loss import fused_linear_policy_loss

    h = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(40, 8, requires_grad=True)
    fused_linear_logprob(h, w, torch.tensor([1, 2, 3, 4]), backend="cpu").sum().backward()
    fused_linear_policy_loss(h.detach().view(2, 2, 8).requires_grad_(), w, torch.tensor([[1, 2], [3, 4]]), None,
                             torch.randn(2), torch.ones(2, 2, dtype=torch.bool), backend="cpu",
                             token_stats=True).loss.backward()


def _advantages_and_gae():
    from mpo_fast.ops.advantages import group_advantages
    from mpo_fast.ops.gae import gae

    group_advantages(torch.randn(8), 4, backend="cpu")
    gae(torch.randn(2, 6), torch.randn(2, 6), torch.ones(2, 6, dtype=torch.bool), gamma=0.99, lam=0.95, backend="cpu")


OPS = [_policy_loss, _selective_log_softmax, _fused_linear, _advantages_and_gae]


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__.strip("_"))
def test_native_ops_leave_the_x87_stack_empty(op):
    assert _x87_division_is_sound()
    op()
    assert _x87_division_is_sound(), (
        f"{op.__name__}: an x87 division returned NaN after the op: mpo_fast._C left MMX state behind "
        "(rebuild with CMakeLists.txt's -mno-mmx: bash scripts/build_native.sh)")
