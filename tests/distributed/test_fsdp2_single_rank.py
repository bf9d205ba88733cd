"""The FSDP2 pieces in one process (a world-size-1 group): the fused log-prob path through the root
unit's registered forward method gives the plain model's log-probs and gradients, and generation
runs inside `unsharded`. On CPU (gloo, fp32: tight) here; on CUDA (`-m gpu`: nccl, the bf16
MixedPrecisionPolicy, bf16 tolerances) where there is a GPU."""
from __future__ import annotations

import pytest
import torch

from tests.distributed import fsdp_workers
from tests.distributed.launch import all_ok, run_ranks


def _check(result, *, rtol, atol):
    lp_got, lp_want = result["lp"]
    torch.testing.assert_close(lp_got, lp_want, rtol=rtol, atol=atol)
    grads_got, grads_want = result["grads"]
    assert set(grads_got) == set(grads_want)
    for name, g in grads_want.items():
        scale = float(g.abs().max()) or 1.0  # relative to the tensor's largest gradient
        torch.testing.assert_close(grads_got[name] / scale, g / scale, rtol=rtol, atol=atol, msg=name)
    assert any(float(g.abs().max()) > 0 for g in grads_want.values())
    assert result["generated"] == (1, 9)
    assert all(dtype == torch.float32 for dtype in result["weights"].values())  # fp32 shards stored


@pytest.mark.slow  # one spawned process (~10 s)
def test_sharded_fused_logprobs_and_gradients_equal_the_plain_model_cpu(tmp_path):
    (result,) = all_ok(run_ranks(fsdp_workers.single_rank_sharded_pass, 1, tmp_path, "cpu", timeout_s=180))
    _check(result, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_sharded_fused_logprobs_and_gradients_bf16_on_gpu(tmp_path):
    # bf16 compute on both sides but different reduction orders (FSDP's bf16 all-gather, fp32
    # reduce): bf16's 8 mantissa bits, ~4e-3 relative per rounding, a few roundings deep.
    (result,) = all_ok(run_ranks(fsdp_workers.single_rank_sharded_pass, 1, tmp_path, "cuda", timeout_s=300))
    _check(result, rtol=5e-2, atol=5e-2)
