"""Every C++ op with 2 OpenMP threads: bit-identical to 1 thread and within tolerance of the reference.

The suite runs with OMP_NUM_THREADS=1 (shared CI cores), so the `omp parallel` paths of the C++ ops
(selective_log_softmax forward / fold / backward above 65536 elements, group_advantages above 32768)
never ran in it (issue 18). Each op is run here at sizes above those thresholds, once in this process
and once in a subprocess with OMP_NUM_THREADS=2. Work is split by rows (or groups), one thread per
row, so any difference between the two is a race or a shared accumulator, not rounding: the test
asserts bit-equality. gae and policy_loss have no OpenMP loop (gae.cpp says why); they are run too,
so a loop added later is covered. parse_scores has its own pool, driven here by num_threads=2.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_close_to_reference, available_backends

pytestmark = pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="C++ extension not built")
ROOT = Path(__file__).resolve().parents[1]


def run_ops() -> dict[str, torch.Tensor]:
    """Each C++ op on fixed random inputs above its OpenMP threshold; every output and gradient."""
    import mpo_fast
    from mpo_fast.ops.fused_linear_logprob import fused_linear_logprob
    from mpo_fast.ops.selective_log_softmax import selective_log_softmax

    out: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(18)
    # selective_log_softmax: 96 x 5000 = 480k elements (threshold 65536), fp32 and bf16
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(96, 5000, generator=g) * 3).to(dtype).requires_grad_()
        ids = torch.randint(0, 5000, (96,), generator=g)
        ids[::7] = -100
        r = selective_log_softmax(x, ids, return_entropy=True, backend="cpu")
        (r.logp.sum() + 0.5 * r.entropy.sum()).backward()
        key = f"slsm_{dtype}"
        out[key + "_logp"], out[key + "_entropy"], out[key + "_grad"] = r.logp.detach(), r.entropy.detach(), x.grad
    # fused_linear_logprob (fold + backward kernels on its logits tiles)
    h = torch.randn(80, 32, generator=g).requires_grad_()
    w = (torch.randn(4000, 32, generator=g) * 0.3).requires_grad_()
    ids = torch.randint(0, 4000, (80,), generator=g)
    r = fused_linear_logprob(h, w, ids, return_entropy=True, backend="cpu")
    (r.logp.sum() + r.entropy.sum()).backward()
    out["flp_logp"], out["flp_entropy"], out["flp_grad_h"], out["flp_grad_w"] = (
        r.logp.detach(), r.entropy.detach(), h.grad, w.grad)
    # group_advantages: 40960 rewards (threshold 32768)
    rewards = torch.randn(40960, generator=g)
    valid = torch.rand(40960, generator=g) > 0.1
    for mode in ("grpo", "rloo"):
        a = mpo_fast.group_advantages(rewards, 8, mode=mode, valid=valid, backend="cpu")
        out[f"adv_{mode}"], out[f"adv_{mode}_counts"] = a.advantages, a.group_valid_counts
    # gae and policy_loss
    rw, vals = torch.randn(64, 700, generator=g), torch.randn(64, 700, generator=g)
    mask = torch.rand(64, 700, generator=g) > 0.1
    out["gae_adv"], out["gae_ret"] = mpo_fast.gae(rw, vals, mask, gamma=0.99, lam=0.95, backend="cpu")
    lp = (torch.randn(64, 700, generator=g) * 0.1 - 1).requires_grad_()
    old = lp.detach() + torch.randn(64, 700, generator=g) * 0.1
    res = mpo_fast.policy_loss(lp, old, torch.randn(64, generator=g), mask, ref_logp=old - 0.05, kl_coef=0.1,
                               backend="cpu")
    res.loss.backward()
    out["pl_loss"], out["pl_grad"] = res.loss.detach(), lp.grad
    for k, v in res.metrics.items():
        out[f"pl_{k}"] = v
    # parse_scores: its own thread pool, 2 threads
    from mpo_fast.parsing import ScoreSpec, parse_scores

    spec = ScoreSpec(k=3)
    texts = [f"{spec.format_score(i % 10, 0)} {spec.format_score((i * 7) % 10, 1)} "
             f"{spec.format_score(3, 2) if i % 3 else ''} " + "filler " * 200 for i in range(3000)]
    parsed = parse_scores(texts, spec, backend="cpu", num_threads=2)
    out["parse_values"], out["parse_status"] = parsed.values, parsed.status
    return out


def _two_threads(tmp_path: Path) -> dict[str, torch.Tensor]:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_DYNAMIC": "false"}
    dest = tmp_path / "omp2.pt"
    code = (
        "import sys, torch, mpo_fast._C as c\n"
        "assert c.openmp_max_threads() == 2, c.openmp_max_threads()\n"
        "from tests.test_openmp_threads import run_ops\n"
        f"torch.save(run_ops(), {str(dest)!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(dest)


def test_openmp_is_compiled_in_and_follows_the_environment():
    import mpo_fast._C as c

    if not c.has_openmp:
        pytest.skip("mpo_fast._C was built without OpenMP (no OpenMP found by CMake)")
    assert hasattr(c, "openmp_max_threads"), "mpo_fast._C predates openmp_max_threads: bash scripts/build_native.sh"
    assert c.openmp_max_threads() == int(os.environ.get("OMP_NUM_THREADS", c.openmp_max_threads()))


def test_two_threads_match_one_thread_bit_for_bit(tmp_path):
    import mpo_fast._C as c

    if not c.has_openmp:
        pytest.skip("mpo_fast._C was built without OpenMP")
    one = run_ops()
    two = _two_threads(tmp_path)
    assert one.keys() == two.keys()
    for k in one:
        a, b = one[k], two[k]
        assert a.dtype == b.dtype and a.shape == b.shape, k
        assert torch.equal(a, b) or (torch.isnan(a) == torch.isnan(b)).all() and torch.equal(
            a[~torch.isnan(a)], b[~torch.isnan(b)]), f"{k}: 2 OpenMP threads differ from 1"


def test_one_thread_results_are_right():
    """The bit-equality above is only worth something if the results are right: spot-check vs the reference."""
    from mpo_fast.reference import logprobs as ref

    out = run_ops()
    g = torch.Generator().manual_seed(18)
    x = (torch.randn(96, 5000, generator=g) * 3).to(torch.float32)
    ids = torch.randint(0, 5000, (96,), generator=g)
    ids[::7] = -100
    lp64, en64 = ref.selective_log_softmax(x.double(), ids)
    lp32, en32 = ref.selective_log_softmax(x, ids)
    assert_close_to_reference(out["slsm_torch.float32_logp"], lp32, lp64, floor=2e-6, what="logp")
    assert_close_to_reference(out["slsm_torch.float32_entropy"], en32, en64, floor=2e-6, what="entropy")
    assert (out["adv_grpo_counts"] <= 8).all() and out["adv_grpo"].abs().sum() > 0
    assert (out["parse_status"][:, :2] == 0).all()
