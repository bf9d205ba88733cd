"""fused_linear_policy_loss: chunked backends against the materialised fp64 oracle; 3 GEMMs.

Criterion (tests/helpers.py): element-wise err(backend vs fp64) <= 2 * err(the oracle run in the
inputs' dtype) + floor, for the loss, every metric, grad_hidden and grad_weight.
"""
import pytest
import torch

import mpo_fast.ops.fused_linear_policy_loss as flpl
from mpo_fast.ops.fused_linear_policy_loss import fused_linear_policy_loss
from mpo_fast.reference import fused_linear_policy_loss as ref
from tests.helpers import assert_close_to_reference, assert_elementwise_close, available_backends

CHUNKED = ["torch"] + available_backends("cpu", "triton")
QWEN_VOCAB = 151936
FLOOR = 2e-6


def _case(b, t, h, v, dtype, seed, per_token_adv=False, with_ref=True):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(b, t, h, generator=g, dtype=torch.float64)).to(dtype)
    weight = (torch.randn(v, h, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    ids = torch.randint(0, v, (b, t), generator=g)
    mask = torch.rand(b, t, generator=g) > 0.25
    mask[0, 0] = True
    ids[~mask] = -100  # padding may hold anything, out of range included
    with torch.no_grad():
        lp, _ = _logp(hidden.double(), weight.double(), ids, mask)
    old = (lp + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3).float()  # some ratios clip
    adv = torch.randn((b, t) if per_token_adv else (b,), generator=g).float()
    ref_lp = (lp + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.1).float() if with_ref else None
    return hidden, weight, ids, old, adv, mask, ref_lp


def _logp(hidden, weight, ids, mask):
    from mpo_fast.reference.logprobs import selective_log_softmax

    b, t, h = hidden.shape
    flat = torch.where(mask.reshape(-1), ids.reshape(-1), torch.full_like(ids.reshape(-1), -100))
    return [x.view(b, t) for x in selective_log_softmax(hidden.reshape(-1, h) @ weight.t(), flat)]


def _run(fn, hidden, weight, *args, **kw):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    out = fn(h, w, *args, **kw)
    loss, metrics = (out.loss, out.metrics) if hasattr(out, "loss") else (out[0], out[1])
    (loss * 1.7).backward()  # a non-unit upstream gradient: the saved gradients must be scaled
    return loss.detach(), {k: m.detach() for k, m in metrics.items()}, h.grad, w.grad


def _check(backend, case, tag="", **kw):
    hidden, weight, ids, old, adv, mask, ref_lp = case
    got = _run(fused_linear_policy_loss, hidden, weight, ids, old, adv, mask, ref_logp=ref_lp, backend=backend, **kw)
    r64 = _run(ref.fused_linear_policy_loss, hidden.double(), weight.double(), ids, old.double(), adv.double(), mask,
               ref_logp=ref_lp.double() if ref_lp is not None else None, **kw)
    same = _run(ref.fused_linear_policy_loss, hidden, weight, ids, old, adv, mask, ref_logp=ref_lp, **kw)
    name = f"{backend}/{hidden.dtype}/{tuple(hidden.shape)}x{weight.shape[0]}{tag}"
    assert got[2].dtype == hidden.dtype and got[3].dtype == weight.dtype
    assert_close_to_reference(got[0], same[0], r64[0], floor=FLOOR, what=f"loss {name}")
    for k in r64[1]:
        assert_close_to_reference(got[1][k], same[1][k], r64[1][k], floor=FLOOR, what=f"{k} {name}")
    assert_close_to_reference(got[2], same[2], r64[2], floor=FLOOR, what=f"grad_hidden {name}")
    assert_close_to_reference(got[3], same[3], r64[3], floor=FLOOR, what=f"grad_weight {name}")
    return got


@pytest.mark.parametrize("backend", CHUNKED + ["reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(backend, dtype):
    _check(backend, _case(3, 5, 16, 300, dtype, seed=1), kl_coef=0.05, temperature=0.8)


@pytest.mark.parametrize("backend", [b for b in CHUNKED if b != "triton"])
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
@pytest.mark.parametrize("kl", [None, "k1", "k2", "k3"])
def test_aggregations_and_kl(backend, aggregation, kl):
    case = _case(4, 6, 8, 200, torch.float32, seed=2, per_token_adv=aggregation != "token_mean", with_ref=kl is not None)
    kw = {"aggregation": aggregation, "max_tokens": 9 if aggregation == "seq_mean_token_sum" else None}
    if kl is not None:
        kw.update(kl_coef=0.1, kl_estimator=kl)
    _check(backend, case, tag=f"/{aggregation}/{kl}", **kw)


@pytest.mark.parametrize("backend", [b for b in CHUNKED if b != "triton"])
@pytest.mark.parametrize("b, t, h", [(2, 4, 24), (3, 7, 13)])  # even and odd batch, length, width
def test_real_vocab(backend, b, t, h):
    """V = 151,936: the gradient rows are one large target entry and ~1e-5 elsewhere (element-wise metric)."""
    _check(backend, _case(b, t, h, QWEN_VOCAB, torch.float32, seed=3 + h), kl_coef=0.02)


@pytest.mark.skipif("triton" not in CHUNKED, reason="triton interpreter not available")
def test_triton_real_vocab_bf16():
    _check("triton", _case(1, 3, 8, QWEN_VOCAB, torch.bfloat16, seed=4))


def test_three_gemms_and_a_scaling_backward(monkeypatch):
    """Forward: one logits GEMM and two gradient GEMMs per token chunk; backward: no GEMM at all."""
    calls = []
    real_mm, real_acc = torch.mm, flpl._addmm_acc_
    monkeypatch.setattr(flpl.torch, "mm", lambda a, b, **kw: calls.append(("mm", tuple(a.shape), tuple(b.shape)))
                        or real_mm(a, b, **kw))
    monkeypatch.setattr(flpl, "_addmm_acc_", lambda acc, a, b: calls.append(("acc", tuple(a.shape), tuple(b.shape)))
                        or real_acc(acc, a, b))
    hidden, weight, ids, old, adv, mask, _ = _case(2, 4, 16, 500, torch.float32, seed=5)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    out = fused_linear_policy_loss(h, w, ids, old, adv, mask, backend="torch")
    n = int(mask.sum())
    assert calls == [("mm", (n, 16), (16, 500)), ("acc", (n, 500), (500, 16)), ("acc", (500, n), (n, 16))], calls
    calls.clear()
    out.loss.backward()
    assert calls == [] and h.grad is not None and w.grad is not None
    # a frozen head: grad_weight's GEMM is skipped
    calls.clear()
    fused_linear_policy_loss(hidden.clone().requires_grad_(), weight, ids, old, adv, mask, backend="torch")
    assert [c[0] for c in calls] == ["mm", "acc"], calls


def test_chunks_cover_every_token(monkeypatch):
    """Several token chunks (a tiny tile budget) give the same result as one."""
    case = _case(3, 7, 8, 300, torch.float32, seed=6)
    one = _run(fused_linear_policy_loss, *case[:2], *case[2:6], ref_logp=case[6], kl_coef=0.1, backend="torch")
    monkeypatch.setitem(flpl.TILE_BYTES, "cpu", 300 * 4 * 3)  # 3 tokens a chunk
    monkeypatch.setitem(flpl.MIN_TOKENS, "cpu", 1)
    many = _run(fused_linear_policy_loss, *case[:2], *case[2:6], ref_logp=case[6], kl_coef=0.1, backend="torch")
    torch.testing.assert_close(one[0], many[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(one[2], many[2], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(one[3], many[3], rtol=1e-5, atol=1e-9)


def test_all_padding_gives_zero_loss_and_gradients():
    hidden, weight, ids, old, adv, mask, _ = _case(2, 3, 8, 50, torch.float32, seed=7)
    mask = torch.zeros_like(mask)
    _, metrics, gh, gw = _run(fused_linear_policy_loss, hidden, weight, ids, old, adv, mask, backend="torch")
    assert (gh == 0).all() and (gw == 0).all() and metrics["tokens"] == 0


def test_bad_inputs_are_named():
    hidden, weight, ids, old, adv, mask, _ = _case(2, 3, 8, 50, torch.float32, seed=8)
    with pytest.raises(ValueError, match=r"hidden must be \[B, T, H\]"):
        fused_linear_policy_loss(hidden[0], weight, ids, old, adv, mask)
    with pytest.raises(ValueError, match=r"weight has shape \(50, 7\), expected \[V, 8\]"):
        fused_linear_policy_loss(hidden, weight[:, :7], ids, old, adv, mask)
    with pytest.raises(ValueError, match="kl_coef != 0 needs ref_logp"):
        fused_linear_policy_loss(hidden, weight, ids, old, adv, mask, kl_coef=0.1)
    bad = ids.clone()
    bad[0, 0] = 50
    with pytest.raises(ValueError, match=r"ids out of range \[0, 50\)"):
        fused_linear_policy_loss(hidden, weight, bad, old, adv, mask)


# ---- GPU -------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("v", [1000, QWEN_VOCAB])
def test_gpu_matches_reference(backend, dtype, v):
    case = [x.cuda() if isinstance(x, torch.Tensor) else x for x in _case(4, 33, 64, v, dtype, seed=v)]
    got = _run(fused_linear_policy_loss, case[0], case[1], *case[2:6], ref_logp=case[6], kl_coef=0.05, backend=backend)
    cpu = [x.cpu() if isinstance(x, torch.Tensor) else x for x in case]
    r64 = _run(ref.fused_linear_policy_loss, cpu[0].double(), cpu[1].double(), cpu[2], cpu[3].double(),
               cpu[4].double(), cpu[5], ref_logp=cpu[6].double(), kl_coef=0.05)
    same = _run(ref.fused_linear_policy_loss, case[0], case[1], *case[2:6], ref_logp=case[6], kl_coef=0.05)
    for i, name in ((0, "loss"), (2, "grad_hidden"), (3, "grad_weight")):
        assert_close_to_reference(got[i].cpu(), same[i].cpu(), r64[i], floor=FLOOR, what=f"{name} {backend}/{dtype}/{v}")


@pytest.mark.gpu
def test_gpu_auto_and_peak_memory():
    """auto on CUDA picks the CUDA tiles; peak extra memory stays far under the materialised path's."""
    hidden, weight, ids, old, adv, mask, _ = [x.cuda() if isinstance(x, torch.Tensor) else x
                                              for x in _case(4, 512, 256, QWEN_VOCAB, torch.bfloat16, seed=9)]
    peaks = {}
    for backend in ("reference", "auto"):
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fused_linear_policy_loss(h, w, ids, old, adv, mask, backend=backend).loss.backward()
        torch.cuda.synchronize()
        peaks[backend] = torch.cuda.max_memory_allocated() - base
    assert peaks["auto"] < peaks["reference"] / 2, peaks


def test_benchmark_module_runs_quick_on_cpu():
    """benchmarks/ops/fused_linear_policy_loss.py (what gpu_checks.sh runs on CUDA) yields every provider."""
    from benchmarks.common import BenchContext
    from benchmarks.ops import fused_linear_policy_loss as bench

    records = list(bench.run(BenchContext(quick=True, device="cpu", repeats=1, warmup=0)))
    providers = {r["provider"] for r in records}
    assert {"torch_materialised"} <= providers and all(r["pass"] == "fwd_bwd" for r in records)
    if "cpu" in available_backends("cpu"):
        assert {"mpo_cpu", "mpo_logprob_then_loss"} <= providers
    timed = [r for r in records if "unavailable" not in r]
    assert all(r["median_ms"] > 0 and r["floor_ms"] > 0 for r in timed)
    # providers that cannot run here are records with their reason (GPU backends, Liger on CPU)
    assert all(r["median_ms"] is None and r["unavailable"] for r in records if "unavailable" in r)
    assert "liger_grpo" in {r["provider"] for r in records if "unavailable" in r}


# ---- what the trainer uses: on-policy old_logp=None, token_stats (logp + entropy) -------------
@pytest.mark.parametrize("backend", CHUNKED + ["reference"])
@pytest.mark.parametrize("shape", [(1, 7, 13, 1025), (3, 5, 16, 769), (1, 3, 9, QWEN_VOCAB)])  # odd sizes
def test_token_stats_and_on_policy_ratio(backend, shape):
    """old_logp=None is the on-policy pass (ratio against this forward's own logp): same loss, metrics
    and gradients as passing those log-probs in; token_stats returns logp and entropy [B, T] as the
    materialised oracle computes them, 0 on padding, without gradient."""
    b, t, h, v = shape
    hidden, weight, ids, _, adv, mask, ref_lp = _case(b, t, h, v, torch.float32, seed=v, per_token_adv=True)
    with torch.no_grad():
        lp64, ent64 = _logp(hidden.double(), weight.double(), ids, mask)
    lp32, _ = _logp(hidden, weight, ids, mask)
    kw = dict(ref_logp=ref_lp, kl_coef=0.05, temperature=1.0, aggregation="seq_mean_token_mean")
    got = _run(lambda *a, **k: fused_linear_policy_loss(*a, **k, token_stats=True), hidden, weight, ids, None, adv,
               mask, backend=backend, **kw)
    given = _run(fused_linear_policy_loss, hidden, weight, ids, lp32.detach(), adv, mask, backend=backend, **kw)
    r64 = _run(ref.fused_linear_policy_loss, hidden.double(), weight.double(), ids, lp64, adv.double(), mask,
               ref_logp=ref_lp.double(), kl_coef=0.05, aggregation="seq_mean_token_mean")
    assert float(got[1]["ratio_min"]) == 1.0 == float(got[1]["ratio_max"]) and float(got[1]["clip_fraction"]) == 0
    torch.testing.assert_close(got[0], given[0], rtol=1e-5, atol=1e-7)
    for k in ("kl", "approx_kl", "tokens"):
        torch.testing.assert_close(got[1][k], given[1][k], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[2], given[2], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got[3], given[3], rtol=1e-4, atol=1e-7)
    assert_elementwise_close(got[2], r64[2], rtol=1e-4, what=f"grad_hidden {backend}")
    assert_elementwise_close(got[3], r64[3], rtol=1e-4, what=f"grad_weight {backend}")
    out = fused_linear_policy_loss(hidden, weight, ids, None, adv, mask, backend=backend, token_stats=True, **kw)
    assert out.logp.shape == out.entropy.shape == (b, t) and not out.entropy.requires_grad
    assert_elementwise_close(out.logp, lp64, rtol=1e-5, what=f"logp {backend}")
    assert_elementwise_close(out.entropy, ent64, rtol=1e-5, what=f"entropy {backend}")
    assert (out.entropy[~mask] == 0).all() and (out.logp[~mask] == 0).all()


def test_chunk_size_keeps_the_weight_gradient_gemm_compute_bound():
    """GEMM 3's inner dimension is the chunk's token count: never fewer than MIN_TOKENS, else the
    tile budget (flpl.TILE_BYTES) decides."""
    assert flpl._tokens_per_tile(QWEN_VOCAB, torch.float32, "cpu") == flpl.MIN_TOKENS["cpu"]  # 32 MB fits 55
    assert flpl._tokens_per_tile(49152, torch.float32, "cpu") == (32 << 20) // (49152 * 4)  # 170
    assert flpl._tokens_per_tile(QWEN_VOCAB, torch.bfloat16, "cuda") == (256 << 20) // (QWEN_VOCAB * 2)  # 883
