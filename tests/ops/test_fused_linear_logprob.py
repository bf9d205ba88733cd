"""fused_linear_logprob: every backend against the materialised fp64 reference, forward and gradients.

Same criterion as selective_log_softmax: err(backend vs fp64) <= 2 * err(plain torch in the input
dtype vs fp64) + floor, where plain torch is `hidden @ weight.T (+ bias)` in that dtype followed by
the fp32 log-softmax. Small tile budgets force the multi-tile paths (several vocabulary chunks,
several token chunks, the fp32 weight-chunk accumulator) at test sizes.
"""
import math

import pytest
import torch

from mpo_fast.ops import fused_linear_logprob as fused
from mpo_fast.ops.fused_linear_logprob import TilePlan, fused_linear_logprob
from mpo_fast.ops.selective_log_softmax import TokenLogProbs
from mpo_fast.reference import logprobs as ref
from tests.helpers import assert_close_to_reference, assert_elementwise_close, available_backends

CPU_BACKENDS = available_backends("cpu", "triton")
QWEN_VOCAB = 151936
FLOOR = 2e-6


def _inputs(n, v, h, dtype, seed=0, bias=False, ignore_every=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) * (2.0 / math.sqrt(h))
    b = torch.randn(v, generator=g, dtype=torch.float64) if bias else None
    ids = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        ids[::ignore_every] = -100
    return hidden.to(dtype), weight.to(dtype), (b.to(dtype) if b is not None else None), ids


def _upstream(n, dtype):
    g = torch.Generator().manual_seed(7)
    return (torch.randn(n, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(n, generator=g, dtype=torch.float64).to(dtype))


def _run(fn, hidden, weight, bias, ids, temperature, need=(True, True, True)):
    # detach keeps the strides of a sliced input (clone would compact it)
    leaves = [x.detach().requires_grad_(r) if x is not None else None for x, r in zip((hidden, weight, bias), need)]
    logp, entropy = fn(*leaves, ids, temperature)
    gl, ge = _upstream(ids.shape[0], logp.dtype)
    (logp * gl + entropy * ge).sum().backward()
    grads = [x.grad if x is not None else None for x in leaves]
    return logp.detach(), entropy.detach(), grads


def _op(backend, **kw):
    def fn(h, w, b, ids, temperature):
        out = fused_linear_logprob(h, w, ids, bias=b, temperature=temperature, return_entropy=True, backend=backend, **kw)
        return out.logp, out.entropy
    return fn


def _ref(h, w, b, ids, temperature):
    return ref.fused_linear_logprob(h, w, ids, b, temperature)


def _check(backend, hidden, weight, bias, ids, temperature=1.0, what=""):
    got = _run(_op(backend), hidden, weight, bias, ids, temperature)
    r64 = _run(_ref, *(x.double() if x is not None else None for x in (hidden, weight, bias)), ids, temperature)
    same = _run(_ref, hidden, weight, bias, ids, temperature)
    tag = f"{backend}/{hidden.dtype}/N={hidden.shape[0]},V={weight.shape[0]},H={hidden.shape[1]}{what}"
    assert got[0].dtype == (torch.float64 if hidden.dtype == torch.float64 else torch.float32)
    assert_close_to_reference(got[0], same[0], r64[0], floor=FLOOR, what=f"logp {tag}")
    assert_close_to_reference(got[1], same[1], r64[1], floor=FLOOR, what=f"entropy {tag}")
    for name, g, s, r in zip(("hidden", "weight", "bias"), got[2], same[2], r64[2]):
        if r is None:
            assert g is None
            continue
        assert g.dtype == r.dtype if hidden.dtype == torch.float64 else g.dtype == hidden.dtype
        assert_close_to_reference(g, s, r, floor=FLOOR, what=f"grad_{name} {tag}")
    return got


@pytest.fixture
def small_tiles(monkeypatch):
    """A 2 KB tile: several vocabulary chunks and several token chunks even at test sizes."""
    monkeypatch.setitem(fused.TILE_BYTES, "cpu", 2048)
    monkeypatch.setitem(fused.MIN_VOCAB_CHUNK, "cpu", 64)


CASES = [  # (N, V, H, bias)
    (1, 1000, 64, False),
    (7, 1000, 1536, True),
    (1025, 1000, 64, False),
    (7, QWEN_VOCAB, 64, False),
]


@pytest.mark.parametrize("backend", ["reference"] + [b for b in CPU_BACKENDS if b != "triton"])
@pytest.mark.parametrize("n,v,h,bias", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(backend, n, v, h, bias, dtype):
    if backend == "reference" and v == QWEN_VOCAB and dtype == torch.bfloat16:
        pytest.skip("the torch tile kernels are covered at this vocabulary by the fp32 case; saves ~8 s")
    hidden, weight, b, ids = _inputs(n, v, h, dtype, seed=n + h, bias=bias, ignore_every=6)
    _check(backend, hidden, weight, b, ids, temperature=0.8)


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_many_tiles(backend, dtype, small_tiles):
    if backend == "triton" and dtype != torch.float32:
        pytest.skip("interpreter time: one dtype covers the Triton tile kernels")
    n = 13 if backend == "triton" else 37
    hidden, weight, b, ids = _inputs(n, 300, 16, dtype, seed=3, bias=True, ignore_every=5)
    plan = TilePlan.for_shape(n, 300, dtype, "cpu")
    assert plan.tokens < n and plan.vocab < 300  # really chunked both ways
    _check(backend, hidden, weight, b, ids, temperature=1.3, what="/small tiles")


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton is not installed")
def test_triton_real_vocab():
    hidden, weight, b, ids = _inputs(3, QWEN_VOCAB, 32, torch.bfloat16, seed=5, ignore_every=3)
    _check("triton", hidden, weight, b, ids)


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_strided_inputs(backend, small_tiles):
    hidden_wide, weight_wide, _, ids = _inputs(22, 250, 40, torch.float32, seed=9)
    hidden = hidden_wide[::2, 3:35]  # every other token, a column window: strided both ways
    weight = weight_wide[:, 3:35]  # rows with stride 40
    ids = ids[::2]
    assert not hidden.is_contiguous() and not weight.is_contiguous() and not ids.is_contiguous()
    _check(backend, hidden, weight, None, ids, what="/strided")


class _CountingMM:
    """Records the shapes of every torch.mm call (the fused op's GEMMs go through torch.mm / addmm_)."""

    def __init__(self, monkeypatch):
        self.calls = []
        real_mm, real_addmm_ = torch.mm, torch.Tensor.addmm_

        def mm(a, b, *args, **kw):
            self.calls.append(("mm", tuple(a.shape), tuple(b.shape)))
            return real_mm(a, b, *args, **kw)

        def addmm_(acc, a, b, *args, **kw):
            self.calls.append(("addmm_", tuple(a.shape), tuple(b.shape)))
            return real_addmm_(acc, a, b, *args, **kw)

        monkeypatch.setattr(torch, "mm", mm)
        monkeypatch.setattr(torch.Tensor, "addmm_", addmm_)


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
@pytest.mark.parametrize("return_entropy", [False, True])
def test_frozen_weight_computes_no_weight_gradient(backend, return_entropy, monkeypatch):
    """weight.requires_grad=False: no grad_W GEMM. logp alone: E_p[W] is built in the forward and the
    backward runs no GEMM at all; with the entropy: the backward recomputes logits and grad_h only."""
    hidden, weight, _, ids = _inputs(9, 500, 24, torch.float32, seed=4, ignore_every=4)
    mm = _CountingMM(monkeypatch)
    h = hidden.clone().requires_grad_()
    out = fused_linear_logprob(h, weight, ids, backend=backend, return_entropy=return_entropy)
    loss = (out.logp + out.entropy).sum() if return_entropy else out.sum()
    forward_calls = list(mm.calls)
    mm.calls.clear()
    loss.backward()
    assert weight.grad is None and h.grad is not None
    if return_entropy:
        assert all(a[1] == 24 for _, a, _ in forward_calls)  # logits only
        # backward: logits recompute ([n, H] x [H, V]) and grad_h ([n, V] x [V, H]); never [V, n] x [n, H]
        assert mm.calls and all(a[0] != 500 for _, a, _ in mm.calls), mm.calls
    else:
        assert any(b[0] == 500 for _, _, b in forward_calls)  # the E_p[W] product: [n, V] x [V, H]
        assert mm.calls == [], mm.calls
    monkeypatch.undo()
    h64 = hidden.double().requires_grad_()
    lp, en = ref.fused_linear_logprob(h64, weight.double(), ids)
    ((lp + en).sum() if return_entropy else lp.sum()).backward()
    assert_elementwise_close(h.grad, h64.grad, rtol=1e-5, what=f"grad_h entropy={return_entropy}")


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frozen_weight_matches_reference(backend, dtype, small_tiles):
    """The E_p[W] path across several vocabulary and token chunks (the online rescale by alpha)."""
    n = 13 if backend == "triton" else 37
    hidden, weight, b, ids = _inputs(n, 300, 16, dtype, seed=12, bias=True, ignore_every=5)
    weight = weight * 3  # spread logits so the running max moves between chunks

    def op(h, w, bb, ids_, temperature):
        logp = fused_linear_logprob(h, w, ids_, bias=bb, temperature=temperature, backend=backend)
        return logp, torch.zeros_like(logp)

    def oracle(h, w, bb, ids_, temperature):
        logp, _ = ref.fused_linear_logprob(h, w, ids_, bb, temperature)
        return logp, torch.zeros_like(logp)

    need = (True, False, False)
    got = _run(op, hidden, weight, b, ids, 0.9, need)
    r64 = _run(oracle, hidden.double(), weight.double(), b.double(), ids, 0.9, need)
    same = _run(oracle, hidden, weight, b, ids, 0.9, need)
    assert got[2][1] is None and got[2][2] is None
    assert_close_to_reference(got[0], same[0], r64[0], floor=FLOOR, what=f"logp frozen {backend}/{dtype}")
    assert_close_to_reference(got[2][0], same[2][0], r64[2][0], floor=FLOOR, what=f"grad_h frozen {backend}/{dtype}")


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_frozen_weight_detached_entropy_keeps_two_gemms(backend, small_tiles, monkeypatch):
    """entropy_grad=False (the trainer logs entropy, never differentiates it): a frozen head keeps the
    E_p[W] forward and a GEMM-free backward, and the entropy (a fold by-product, across several
    vocabulary chunks and the alpha rescale) matches the oracle."""
    hidden, weight, _, ids = _inputs(11, 333, 16, torch.float32, seed=21, ignore_every=4)
    weight = weight * 3  # the running max moves between vocabulary chunks
    h = hidden.clone().requires_grad_()
    mm = _CountingMM(monkeypatch)
    out = fused_linear_logprob(h, weight, ids, backend=backend, return_entropy=True, entropy_grad=False)
    assert any(b[0] == 64 for _, _, b in mm.calls)  # E_p[W]: [n, vocab-chunk] x [vocab-chunk, H]
    assert not out.entropy.requires_grad and out.logp.requires_grad
    mm.calls.clear()
    out.logp.sum().backward()
    assert mm.calls == [], mm.calls
    monkeypatch.undo()
    h64 = hidden.double().requires_grad_()
    lp, en = ref.fused_linear_logprob(h64, weight.double(), ids)
    lp.sum().backward()
    assert_elementwise_close(out.entropy, en, rtol=1e-5, what=f"entropy {backend}")
    assert_elementwise_close(out.logp, lp, rtol=1e-5, what=f"logp {backend}")
    assert_elementwise_close(h.grad, h64.grad, rtol=1e-5, what=f"grad_h {backend}")


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_weight_only_gradient(backend):
    """Training the head alone (hidden detached): only grad_W and grad_b are produced."""
    hidden, weight, b, ids = _inputs(8, 400, 16, torch.float32, seed=6, bias=True)
    got = _run(_op(backend), hidden, weight, b, ids, 1.0, need=(False, True, True))
    r64 = _run(_ref, hidden.double(), weight.double(), b.double(), ids, 1.0, need=(False, True, True))
    assert got[2][0] is None
    # element-wise (tests/helpers.py): grad_b's entries are ~n/V = 0.02, its tail far smaller; an
    # absolute 1e-5 let a 10% error on every entry under 1e-4 through
    assert_elementwise_close(got[2][1], r64[2][1], rtol=1e-5, what=f"grad_W {backend}")
    assert_elementwise_close(got[2][2], r64[2][2], rtol=1e-5, what=f"grad_b {backend}")


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_ignored_and_all_masked_rows(backend):
    hidden, weight, b, ids = _inputs(6, 300, 16, torch.float32, seed=2, bias=True)
    ids[[0, 3]] = -100
    hidden[3] = float("nan")  # a padding row's hidden state is never used
    logp, entropy, (gh, gw, gb) = _run(_op(backend), hidden, weight, b, ids, 1.0)
    assert (logp[[0, 3]] == 0).all() and (entropy[[0, 3]] == 0).all() and (gh[[0, 3]] == 0).all()
    assert torch.isfinite(gw).all() and torch.isfinite(gb).all()
    keep = [1, 2, 4, 5]
    r_lp, _ = ref.fused_linear_logprob(hidden[keep].double(), weight.double(), ids[keep], b.double())
    torch.testing.assert_close(logp[keep].double(), r_lp, rtol=0, atol=1e-5)
    ids_all = torch.full((6,), -100)
    logp, entropy, (gh, gw, gb) = _run(_op(backend), hidden, weight, b, ids_all, 1.0)
    assert (logp == 0).all() and (entropy == 0).all() and (gh == 0).all() and (gw == 0).all() and (gb == 0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_non_finite_row_stays_in_its_row(backend):
    hidden, weight, _, ids = _inputs(5, 200, 8, torch.float32, seed=8)
    bad = hidden.clone()
    bad[2, 3] = float("nan")
    out_bad = fused_linear_logprob(bad, weight, ids, backend=backend)
    out = fused_linear_logprob(hidden, weight, ids, backend=backend)
    assert math.isnan(out_bad[2])
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(out_bad[keep], out[keep], rtol=0, atol=0)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"] + ["reference"])
def test_gradcheck_float64(backend, small_tiles):
    """Every perturbation re-runs the forward: the Triton interpreter would take minutes here."""
    hidden, weight, b, ids = _inputs(5, 40, 4, torch.float64, seed=1, bias=True)
    ids[1] = -100
    leaves = [x.requires_grad_() for x in (hidden, weight, b)]

    def f(h, w, bb):
        out = fused_linear_logprob(h, w, ids, bias=bb, temperature=0.7, return_entropy=True, backend=backend)
        return out.logp, out.entropy

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, fast_mode=True)


def test_returns_token_log_probs_and_plain_tensor():
    hidden, weight, _, ids = _inputs(4, 50, 8, torch.float32)
    assert isinstance(fused_linear_logprob(hidden, weight, ids, return_entropy=True), TokenLogProbs)
    out = fused_linear_logprob(hidden, weight, ids)
    assert isinstance(out, torch.Tensor) and out.shape == (4,)


def test_bad_inputs_are_named():
    hidden, weight, b, ids = _inputs(4, 50, 8, torch.float32, bias=True)
    with pytest.raises(ValueError, match=r"weight has shape \(8, 50\), expected \[vocab, 8\].*not its transpose"):
        fused_linear_logprob(hidden, weight.t(), ids)
    with pytest.raises(ValueError, match="hidden has 3 dims"):
        fused_linear_logprob(hidden[None], weight, ids)
    with pytest.raises(TypeError, match="hidden is torch.bfloat16 but weight is torch.float32"):
        fused_linear_logprob(hidden.bfloat16(), weight, ids)
    with pytest.raises(ValueError, match=r"bias has shape \(49,\), expected \[50\]"):
        fused_linear_logprob(hidden, weight, ids, bias=b[:49])
    with pytest.raises(ValueError, match=r"ids has shape \(5,\), expected \[4\] \(one id per row of hidden\)"):
        fused_linear_logprob(hidden, weight, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids out of range \[0, 50\) at positions \[2\]"):
        fused_linear_logprob(hidden, weight, torch.tensor([0, 1, 50, 3]))
    with pytest.raises(ValueError, match="weight is on meta but hidden on cpu"):
        fused_linear_logprob(hidden, weight.to("meta"), ids)
    with pytest.raises(ValueError, match="temperature"):
        fused_linear_logprob(hidden, weight, ids, temperature=-1.0)


def test_opcheck():
    hidden, weight, b, ids = _inputs(6, 90, 8, torch.float32, seed=3, bias=True, ignore_every=4)
    native = [x for x in CPU_BACKENDS if x != "triton"]
    combos = [("reference", b, False)] + [(x, bias, frozen) for x in native for bias, frozen in ((b, False), (None, True))]
    for backend, bias, frozen in combos:  # each opcheck traces several ways (~1 s): a few representative calls
        args = (hidden.clone().requires_grad_(), weight.clone().requires_grad_(not frozen), ids,
                bias.clone().requires_grad_(not frozen) if bias is not None else None, 0.9, -100,
                not frozen, frozen, backend)
        torch.library.opcheck(torch.ops.mpo_fast.fused_linear_logprob.default, args)
    for backend in ["reference"] + native:
        logp, ent = ref.fused_linear_logprob(hidden, weight, ids, b, 0.9)
        lse = torch.zeros(6)  # any finite statistics exercise the op's contract
        torch.library.opcheck(
            torch.ops.mpo_fast.fused_linear_logprob_backward.default,
            (torch.randn(6), torch.randn(6), hidden, weight, ids, b, lse, ent, 0.9, -100, True, False, True, backend),
        )


def test_torch_compile_traces_the_custom_op():
    hidden, weight, _, ids = _inputs(8, 64, 8, torch.float32)
    name = "cpu" if "cpu" in CPU_BACKENDS else "reference"

    def f(h):
        return fused_linear_logprob(h, weight, ids, backend=name, check_ids=False).sum() * 2

    h = hidden.clone().requires_grad_()
    compiled = torch.compile(f, backend="eager", fullgraph=False)
    torch.testing.assert_close(compiled(h), f(h))


def test_tile_plan_is_bounded():
    """The tile never grows with N x V: at the issue's GPU shape it is 256 MB, not 5 GB."""
    plan = TilePlan.for_shape(16384, QWEN_VOCAB, torch.bfloat16, "cuda")
    assert plan.tokens * plan.vocab * 2 <= fused.TILE_BYTES["cuda"]
    assert plan.tokens == 16384 and plan.vocab % 64 == 0
    small = TilePlan.for_shape(7, QWEN_VOCAB, torch.float32, "cpu")
    assert small.vocab == QWEN_VOCAB and small.tokens == 7  # one tile holds it all
    big = TilePlan.for_shape(1 << 20, QWEN_VOCAB, torch.float32, "cpu")
    assert big.tokens * big.vocab * 4 <= fused.TILE_BYTES["cpu"]


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="C++ extension not built")
def test_peak_memory_is_a_tile_not_the_logits():
    """Resident-set high-water mark of forward + backward (honest for every allocation: torch, C++, BLAS).

    N=1024, V=32768, fp32: materialised logits are 128 MB (and as much again for their
    log-softmax); the fused path must stay under a fifth of the logits alone.
    """
    from benchmarks.common import peak_memory_bytes

    n, v, h = 1024, 32768, 64
    hidden, weight, _, ids = _inputs(n, v, h, torch.float32, seed=1)
    hidden.requires_grad_()
    weight.requires_grad_()
    grads = [torch.zeros_like(hidden), torch.zeros_like(weight)]  # outputs the caller would own anyway

    def step():
        logp = fused_linear_logprob(hidden, weight, ids, backend="cpu")
        gh, gw = torch.autograd.grad(logp.sum(), (hidden, weight))
        grads[0].copy_(gh)
        grads[1].copy_(gw)

    step()  # warm-up: first-call allocations of the autograd engine and BLAS
    peak = peak_memory_bytes(step)
    if peak is None:
        pytest.skip("no /proc/self/clear_refs: cannot measure the resident-set peak here")
    logits_bytes = n * v * 4
    assert peak < logits_bytes / 5, f"peak {peak / 2**20:.1f} MB vs logits {logits_bytes / 2**20:.0f} MB"


# ---- GPU -------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
@pytest.mark.parametrize("n,v,h", [(1, 1000, 64), (7, QWEN_VOCAB, 64), (1025, 1000, 1536), (1025, QWEN_VOCAB, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_matches_reference(backend, n, v, h, dtype):
    hidden, weight, b, ids = _inputs(n, v, h, dtype, seed=n, bias=True, ignore_every=7)
    _check(backend, hidden.cuda(), weight.cuda(), b.cuda(), ids.cuda(), temperature=0.9)


@pytest.mark.gpu
def test_gpu_peak_memory_is_a_tile():
    n, v, h = 8192, QWEN_VOCAB, 1536
    hidden, weight, _, ids = _inputs(n, v, h, torch.bfloat16)
    hidden = hidden.cuda().requires_grad_()
    weight = weight.cuda().requires_grad_()
    ids = ids.cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    logp = fused_linear_logprob(hidden, weight, ids)
    gh, gw = torch.autograd.grad(logp.sum(), (hidden, weight))
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base - gh.numel() * 2 - gw.numel() * 2
    materialised = n * v * (2 + 4)  # bf16 logits + their fp32 log-softmax
    assert extra < materialised / 10, f"{extra / 2**20:.0f} MB extra vs {materialised / 2**20:.0f} MB materialised"
