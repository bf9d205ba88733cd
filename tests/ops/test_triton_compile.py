"""Every Triton kernel, in every variant the ops' dispatch picks, lowers to a cubin for sm_80 and sm_90.

Issue 18: policy_loss (what `auto` runs for the training loss on CUDA), gae, group_advantages and
expected_score had only run in the interpreter. Here the public ops are driven with backend="triton"
through each choice that changes a kernel's signature or constexprs (input dtypes, mask dtype, KL
estimator, aggregation, gradient or not, entropy or not, and shapes that pick the smallest and the
largest block sizes); tests/ops/triton_launches.py records each distinct launch, and a fresh process
without TRITON_INTERPRET compiles all of them for both targets (ptxas ships with triton; no GPU).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import available_backends, has_module

pytestmark = [
    pytest.mark.skipif("triton" not in available_backends("triton"), reason="triton (interpreter) is not available"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="recording needs the Triton interpreter"),
]

FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
ROOT = Path(__file__).resolve().parents[2]


def _drive_policy_loss():
    from mpo_fast.ops.policy_loss import policy_loss

    def run(b, t, dtype, kl=None, agg="token_mean", float_mask=False, grad=True, per_token_adv=False):
        g = torch.Generator().manual_seed(b * 1000 + t)
        lp = (torch.randn(b, t, generator=g) * 0.1 - 1).to(dtype).requires_grad_(grad)
        old = (lp.detach().float() + torch.randn(b, t, generator=g) * 0.1).to(dtype)
        adv = torch.randn((b, t) if per_token_adv else (b,), generator=g).to(dtype)
        mask = torch.rand(b, t, generator=g) > 0.2
        mask = mask.float() if float_mask else mask
        kw = {}
        if kl is not None:
            kw = {"ref_logp": (lp.detach().float() + 0.05).to(dtype), "kl_coef": 0.1, "kl_estimator": kl}
        out = policy_loss(lp, old, adv, mask, aggregation=agg, backend="triton", **kw)
        if grad:
            out.loss.backward()

    for dtype in FLOATS:
        for kl in (None, "k1", "k2", "k3"):
            run(3, 5, dtype, kl=kl)
    for agg in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        run(5, 70, torch.float32, agg=agg, float_mask=True, per_token_adv=True)
    run(4, 9, torch.float32, grad=False)
    run(4, 9, torch.bfloat16, grad=False, kl="k3")
    run(64, 100, torch.float32, kl="k3")  # BLOCK_B 16 x BLOCK_T 128
    run(2, 4100, torch.bfloat16, kl="k3")  # BLOCK_T 2048 (the cap), two column tiles, BLOCK_NT 4


def _drive_gae():
    from mpo_fast.ops.gae import gae

    for dtype in FLOATS:
        for float_mask in (False, True):
            for t in (7, 1500):  # BLOCK_T 8 and the 1024 cap (two dependent blocks)
                r = torch.randn(3, t).to(dtype)
                v = torch.randn(3, t).to(dtype)
                m = torch.rand(3, t) > 0.1
                gae(r, v, m.to(dtype) if float_mask else m, gamma=0.99, lam=0.95, backend="triton")


def _drive_group_advantages():
    from mpo_fast.ops.advantages import group_advantages

    for dtype in FLOATS:
        for mode in ("grpo", "dr_grpo", "rloo"):
            for with_valid in (False, True):
                r = torch.randn(12).to(dtype)
                valid = torch.rand(12) > 0.2 if with_valid else None
                group_advantages(r, 4, mode=mode, valid=valid, backend="triton")
    group_advantages(torch.randn(3 * 4096), 4096, backend="triton")  # BLOCK_S 4096, BLOCK_G 1
    group_advantages(torch.randn(2048 * 2), 2, backend="triton")  # BLOCK_G 2048, BLOCK_S 2


def _drive_expected_score():
    from mpo_fast.ops.expected_score import expected_score, expected_score_advantages

    for dtype in FLOATS:
        for vocab in (50, 9000):  # a block under the cap and the BLOCK_V cap
            logits = torch.randn(8, vocab).to(dtype)
            ids = torch.tensor([3, 7, 11, -1])
            vals = torch.tensor([1.0, 2.0, 3.0, 4.0])
            expected_score(logits, ids, vals, backend="triton")
            expected_score(logits, ids.expand(8, 4).contiguous(), vals.expand(8, 4).contiguous(), backend="triton")
            for mode in ("grpo", "dr_grpo", "rloo"):
                expected_score_advantages(logits, ids, vals, 4, mode=mode, min_mass=0.0, backend="triton")
    logits = torch.randn(64, 300)
    expected_score_advantages(logits, torch.arange(10), torch.arange(10.0), 64, backend="triton")  # BLOCK_S 64
    from mpo_fast.kernels import expected_score as tk  # the split form auto picks for large B (>= 2^20 logits)

    for dtype in FLOATS:
        for mode in ("grpo", "dr_grpo", "rloo"):
            x = torch.randn(16, 2100).to(dtype)
            tk.expected_score_advantages(x, torch.tensor([1, 5, -1]), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64
                                         if dtype == torch.float64 else torch.float32), 8, 1.0, 0.0, mode, 1e-6,
                                         split=True)


def _drive_selective_log_softmax():
    from mpo_fast.ops.fused_linear_logprob import fused_linear_logprob
    from mpo_fast.ops.selective_log_softmax import selective_log_softmax

    for dtype in FLOATS:
        for v in (100, 5000):  # BLOCK 128 and the 4096 cap
            x = torch.randn(3, v).to(dtype)
            ids = torch.tensor([1, -100, 7])
            for with_entropy in (True, False):
                z = x.clone().requires_grad_()
                out = selective_log_softmax(z, ids, return_entropy=with_entropy, backend="triton")
                (out.logp.sum() + out.entropy.sum() if with_entropy else out.sum()).backward()
            z = x.clone().requires_grad_()
            selective_log_softmax(z, ids, return_entropy=True, backend="triton").entropy.sum().backward()
    for dtype in (torch.float32, torch.bfloat16):
        for with_entropy in (True, False):
            h = torch.randn(5, 16).to(dtype).requires_grad_()
            w = torch.randn(300, 16).to(dtype).requires_grad_()
            out = fused_linear_logprob(h, w, torch.tensor([1, 2, -100, 299, 0]), return_entropy=with_entropy,
                                       backend="triton")
            (out.logp.sum() + out.entropy.sum() if with_entropy else out.sum()).backward()
        for entropy_grad in (True, False):  # a frozen head (LoRA): the E_p[W] fold (WRITE_EXP), entropy on/off
            h = torch.randn(5, 16).to(dtype).requires_grad_()
            out = fused_linear_logprob(h, torch.randn(300, 16).to(dtype), torch.tensor([1, 2, -100, 299, 0]),
                                       return_entropy=not entropy_grad, entropy_grad=entropy_grad, backend="triton")
            (out if entropy_grad else out.logp).sum().backward()
    from mpo_fast.ops.fused_linear_policy_loss import fused_linear_policy_loss

    for dtype in (torch.float32, torch.bfloat16):  # fold with and without entropy (token_stats), grad from logp
        for token_stats in (False, True):
            h = torch.randn(2, 3, 16).to(dtype).requires_grad_()
            w = torch.randn(300, 16).to(dtype).requires_grad_()
            ids = torch.randint(0, 300, (2, 3))
            lp = torch.full((2, 3), -5.0)
            fused_linear_policy_loss(h, w, ids, lp, torch.randn(2), torch.ones(2, 3, dtype=torch.bool),
                                     backend="triton", token_stats=token_stats).loss.backward()


DRIVERS = {
    "policy_loss": (_drive_policy_loss, {"_policy_loss_fwd_kernel", "_policy_loss_finalize_kernel",
                                         "_policy_loss_bwd_kernel"}),
    "gae": (_drive_gae, {"_gae_kernel"}),
    "group_advantages": (_drive_group_advantages, {"_group_advantages_kernel"}),
    "expected_score": (_drive_expected_score, {"_expected_score_kernel", "_expected_score_advantages_kernel",
                                               "_advantages_of_rows_kernel"}),
    "selective_log_softmax": (_drive_selective_log_softmax, {"_forward_kernel", "_fold_kernel", "_backward_kernel"}),
}


def _record(op: str) -> list[dict]:
    from tests.ops.triton_launches import record_launches

    drive, kernels = DRIVERS[op]
    with record_launches() as launches:
        drive()
    got = {d["name"] for d in launches}
    assert kernels <= got, f"{op}: kernels never launched: {sorted(kernels - got)}"
    return launches


def test_recorder_sees_constexprs_and_signatures():
    launches = _record("gae")
    accs = {d["constexprs"]["ACC"]["tl_dtype"] for d in launches}
    blocks = {d["constexprs"]["BLOCK_T"]["value"] for d in launches}
    masks = {d["signature"]["mask_ptr"] for d in launches if "mask_ptr" in d["signature"]}
    assert accs == {"fp32", "fp64"} and blocks == {8, 1024}
    assert {"*u8", "*fp32", "*bf16"} <= masks, masks


@pytest.mark.skipif(not has_module("triton"), reason="triton is not installed")
@pytest.mark.parametrize("op", sorted(DRIVERS))
def test_triton_kernels_compile_for_sm80_and_sm90(op):
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this triton has no NVIDIA backend")
    launches = _record(op)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import json, sys\n"
        "from tests.ops.triton_launches import compile_recorded\n"
        "launches = json.load(sys.stdin)\n"
        "for arch in (90, 80):\n"
        "    print('\\n'.join(compile_recorded(launches, arch)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, input=json.dumps(launches),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cubins = [line for line in proc.stdout.splitlines() if line.startswith("sm_")]
    assert len(cubins) == 2 * len(launches), proc.stdout[-2000:]
