import math

import pytest
import torch

from mpo_fast.ops.policy_loss import METRICS, policy_loss
from mpo_fast.reference import policy_loss as ref
from tests.helpers import assert_close_to_reference, available_backends

BACKENDS = available_backends("cpu", "triton")  # CPU tensors; the GPU tests below cover CUDA tensors
CPU = [b for b in BACKENDS if b == "cpu"]
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")
ESTIMATORS = ("k1", "k2", "k3")
CLIPS = [(0.2, 0.2), (0.2, 0.28), (0.0, 0.0)]  # symmetric PPO, DAPO clip-higher, no trust region
FLOOR = {torch.float32: 1e-6, torch.float64: 1e-9, torch.bfloat16: 1e-6, torch.float16: 1e-6}


def _case(batch, steps, dtype, seed, *, adv_per_token=False, with_ref=True, float_mask=False, device="cpu"):
    """Random log-probs with ratios spread over ~[0.5, 2] (both clip sides hit), ragged right padding,
    one fully masked row when batch > 2, a hole mid-row, and NaN in every padding slot."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch, steps, generator=g, dtype=torch.float64) * 4 - 0.05
    old = logp + torch.randn(batch, steps, generator=g, dtype=torch.float64) * 0.35
    ref_lp = logp + torch.randn(batch, steps, generator=g, dtype=torch.float64) * 0.35
    adv = torch.randn((batch, steps) if adv_per_token else (batch,), generator=g, dtype=torch.float64)
    lengths = torch.randint(1, steps + 1, (batch,), generator=g)
    mask = torch.arange(steps)[None, :] < lengths[:, None]
    if batch > 2:
        mask[1] = False
    if steps > 4:
        mask[0, 2] = False
    if float_mask:
        mask = mask.to(dtype)
    nan = float("nan")
    valid = mask != 0
    logp, old, ref_lp = (torch.where(valid, x, nan) for x in (logp, old, ref_lp))
    if adv_per_token:
        adv = torch.where(valid, adv, nan)
    cast = lambda x: x.to(dtype).to(device)  # noqa: E731
    return cast(logp), cast(old), cast(adv), mask.to(device), cast(ref_lp) if with_ref else None


def _check(backend, logp, old, adv, mask, ref_lp, grad_scale=1.0, **kw):
    x = logp.detach().clone().requires_grad_()
    out = policy_loss(x, old, adv, mask, ref_logp=ref_lp, backend=backend, **kw)
    (out.loss * grad_scale).backward()
    d = lambda t: None if t is None else t.detach().double().cpu()  # noqa: E731
    x64 = d(logp).requires_grad_()
    l64, m64 = ref.policy_loss(x64, d(old), d(adv), mask.cpu(), ref_logp=d(ref_lp), **kw)
    (l64 * grad_scale).backward()
    xs = logp.detach().clone().requires_grad_()  # plain torch in the input dtype (fp32 math for bf16)
    ls, ms = ref.policy_loss(xs, old, adv, mask, ref_logp=ref_lp, **kw)
    (ls * grad_scale).backward()
    acc = torch.float64 if logp.dtype == torch.float64 else torch.float32
    assert out.loss.dtype == acc and out.loss.dim() == 0
    assert x.grad.dtype == logp.dtype and x.grad.shape == logp.shape
    assert torch.isfinite(out.loss) and torch.isfinite(x.grad).all(), "padding NaN leaked"
    floor = FLOOR[logp.dtype]
    tag = f"{backend}/{kw}"
    assert_close_to_reference(out.loss, ls, l64, floor=floor, what=f"{tag} loss")
    assert_close_to_reference(x.grad, xs.grad, x64.grad, floor=floor, what=f"{tag} grad")
    assert set(out.metrics) == set(METRICS)
    for k in METRICS:
        assert out.metrics[k].dim() == 0 and not out.metrics[k].requires_grad
        assert_close_to_reference(out.metrics[k], ms[k], m64[k], floor=floor, what=f"{tag} {k}")
    return out, x.grad


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("kl_estimator", ESTIMATORS)
@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_every_combination_cpu(backend, aggregation, kl_estimator, clip, dtype):
    seed = AGGREGATIONS.index(aggregation) * 100 + ESTIMATORS.index(kl_estimator) * 10 + CLIPS.index(clip)
    case = _case(9, 97, dtype, seed=seed)
    _check(backend, *case, clip_low=clip[0], clip_high=clip[1], kl_coef=0.05, kl_estimator=kl_estimator,
           aggregation=aggregation)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("kl_estimator", ESTIMATORS)
def test_every_aggregation_and_estimator(backend, aggregation, kl_estimator):
    case = _case(5, 37, torch.float32, seed=11)
    _check(backend, *case, clip_low=0.2, clip_high=0.28, kl_coef=0.1, kl_estimator=kl_estimator, aggregation=aggregation)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (1, 7), (3, 1025)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_odd_sizes(backend, shape, dtype):
    _check(backend, *_case(*shape, dtype, seed=shape[0] * 31 + shape[1]), kl_coef=0.02, aggregation="seq_mean_token_mean")


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_rows_many_tiles(backend):
    # T = 4099 spans several Triton tiles and C++ chunks per row: the per-row partials must add up.
    case = _case(3 if backend == "triton" else 33, 4099, torch.float32, seed=5)
    _check(backend, *case, kl_coef=0.02, aggregation="seq_mean_token_mean")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_advantages_per_token_and_no_ref(backend, aggregation):
    out, _ = _check(backend, *_case(6, 41, torch.float32, seed=2, adv_per_token=True, with_ref=False),
                    aggregation=aggregation, max_tokens=64)
    assert float(out.metrics["kl"]) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_mask_weights_and_mixed_dtypes(backend):
    logp, old, adv, mask, ref_lp = _case(5, 33, torch.float32, seed=8, float_mask=True)
    mask = mask * torch.rand(mask.shape, generator=torch.Generator().manual_seed(1))  # fractional weights
    _check(backend, logp, old.bfloat16(), adv.double(), mask, ref_lp.half(), kl_coef=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    batch, steps = 6, 29
    logp, old, adv, mask, ref_lp = _case(batch, steps + 1, torch.float32, seed=4)
    wide_adv = torch.randn(batch * 2, generator=torch.Generator().manual_seed(3))
    args = (
        logp[:, 1:],  # the usual shift: row stride steps + 1
        old[:, :-1].t().contiguous().t(),  # column-major
        wide_adv[::2],  # stride 2
        mask[:, 1:],
        ref_lp[:, 1:],
    )
    assert not any(a.is_contiguous() for a in args)
    _check(backend, *args, kl_coef=0.1, aggregation="seq_mean_token_sum")


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_output_scale(backend):
    _check(backend, *_case(4, 19, torch.float32, seed=6), grad_scale=-3.5, kl_coef=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_all_masked(backend, aggregation):
    logp, old, adv, mask, ref_lp = _case(4, 9, torch.float32, seed=7)
    # all-masked rows inside a batch: finite loss, zero gradient on them
    mask[2] = False
    out, grad = _check(backend, logp, old, adv, mask, ref_lp, kl_coef=0.1, aggregation=aggregation)
    assert (grad[1:3] == 0).all()
    # a fully masked batch: loss 0, zero gradient, tokens 0, ratio min/max NaN (there is no ratio)
    x = logp.detach().clone().requires_grad_()
    out = policy_loss(x, old, adv, torch.zeros_like(mask), ref_logp=ref_lp, kl_coef=0.1, aggregation=aggregation, backend=backend)
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0 and (x.grad == 0).all()
    assert float(out.metrics["tokens"]) == 0.0 and float(out.metrics["clip_fraction"]) == 0.0
    assert math.isnan(float(out.metrics["ratio_min"])) and math.isnan(float(out.metrics["ratio_max"]))


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_known_values(backend):
    # token 1: r = 1.5, A = 1 -> clipped at 1.2 (gradient 0); token 2: r = 0.5, A = 1 -> unclipped.
    old = torch.tensor([[-1.0, -2.0]])
    logp = (old + torch.log(torch.tensor([[1.5, 0.5]]))).requires_grad_()
    out = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool), backend=backend)
    out.loss.backward()
    torch.testing.assert_close(out.loss, torch.tensor(-(1.2 + 0.5) / 2))
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.25]]))
    assert float(out.metrics["clip_fraction"]) == 0.5
    torch.testing.assert_close(out.metrics["ratio_mean"], torch.tensor(1.0))
    torch.testing.assert_close(out.metrics["ratio_min"], torch.tensor(0.5))
    torch.testing.assert_close(out.metrics["ratio_max"], torch.tensor(1.5))
    # approx_kl = mean of 1/r + log r - 1
    expected = ((1 / 1.5 + math.log(1.5) - 1) + (2 + math.log(0.5) - 1)) / 2
    torch.testing.assert_close(out.metrics["approx_kl"], torch.tensor(expected))


def _trl_grpo_loss(logp, old, adv, mask, ref_lp, beta, eps_low, eps_high, loss_type, max_len):
    """TRL GRPOTrainer._compute_loss (token-level importance sampling), as TRL writes it."""
    coef_1 = torch.exp(logp - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(coef_1 * adv.unsqueeze(1), coef_2 * adv.unsqueeze(1))
    per_token_loss = per_token_loss + beta * (torch.exp(ref_lp - logp) - (ref_lp - logp) - 1)
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    return (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_len)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_type,aggregation", [("grpo", "seq_mean_token_mean"), ("bnpo", "token_mean"), ("dr_grpo", "seq_mean_token_sum")])
def test_matches_trl_formula(backend, loss_type, aggregation):
    g = torch.Generator().manual_seed(12)
    logp = (-torch.rand(6, 21, generator=g, dtype=torch.float64) * 3).requires_grad_()
    old = logp.detach() + torch.randn(6, 21, generator=g, dtype=torch.float64) * 0.3
    ref_lp = logp.detach() + torch.randn(6, 21, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(6, generator=g, dtype=torch.float64)
    mask = (torch.arange(21)[None] < torch.randint(1, 22, (6,), generator=g)[:, None]).double()  # no empty row
    trl = _trl_grpo_loss(logp, old, adv, mask, ref_lp, 0.04, 0.2, 0.28, loss_type, 32)
    (trl_grad,) = torch.autograd.grad(trl, logp)
    x = logp.detach().clone().requires_grad_()
    out = policy_loss(x, old, adv, mask, ref_logp=ref_lp, clip_low=0.2, clip_high=0.28, kl_coef=0.04,
                      aggregation=aggregation, max_tokens=32, backend=backend)
    out.loss.backward()
    torch.testing.assert_close(out.loss, trl.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(x.grad, trl_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_forward_matches(backend):
    case = _case(4, 17, torch.float32, seed=9)
    with torch.no_grad():
        a = policy_loss(*case[:4], ref_logp=case[4], kl_coef=0.1, backend=backend)
    b = policy_loss(case[0].clone().requires_grad_(), *case[1:4], ref_logp=case[4], kl_coef=0.1, backend=backend)
    torch.testing.assert_close(a.loss, b.loss.detach())
    assert not a.loss.requires_grad and b.loss.requires_grad


def test_bad_inputs_are_named():
    lp, old, adv, mask, rl = _case(3, 5, torch.float32, seed=1)
    with pytest.raises(ValueError, match=r"logp has 3 dims .*\[batch, tokens\]"):
        policy_loss(lp[None], old, adv, mask)
    with pytest.raises(ValueError, match=r"old_logp has shape \(3, 4\), expected \(3, 5\)"):
        policy_loss(lp, old[:, :4], adv, mask)
    with pytest.raises(ValueError, match=r"advantages has shape \(2,\), expected \(3,\) .* or \(3, 5\)"):
        policy_loss(lp, old, adv[:2], mask)
    with pytest.raises(TypeError, match="mask has dtype torch.int64, expected bool"):
        policy_loss(lp, old, adv, mask.long())
    with pytest.raises(ValueError, match=r"mask has shape \(3, 4\)"):
        policy_loss(lp, old, adv, mask[:, :4])
    with pytest.raises(TypeError, match="logp has dtype torch.int64"):
        policy_loss(lp.long(), old, adv, mask)
    with pytest.raises(TypeError, match="ref_logp must be a torch.Tensor"):
        policy_loss(lp, old, adv, mask, ref_logp=[1.0])
    with pytest.raises(ValueError, match="kl_coef=0.1 needs ref_logp"):
        policy_loss(lp, old, adv, mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="clip_low=1.0 must be in"):
        policy_loss(lp, old, adv, mask, clip_low=1.0)
    with pytest.raises(ValueError, match="clip_high=-0.1 must be >= 0"):
        policy_loss(lp, old, adv, mask, clip_high=-0.1)
    with pytest.raises(ValueError, match="kl_estimator 'k4' unknown"):
        policy_loss(lp, old, adv, mask, kl_estimator="k4")
    with pytest.raises(ValueError, match="aggregation 'seq_mean' unknown"):
        policy_loss(lp, old, adv, mask, aggregation="seq_mean")
    with pytest.raises(ValueError, match="max_tokens must be a positive int"):
        policy_loss(lp, old, adv, mask, max_tokens=0)
    with pytest.raises(ValueError, match="logp is empty"):
        policy_loss(lp[:, :0], old[:, :0], adv, mask[:, :0])
    with pytest.raises(ValueError, match="has no 'cuda' backend"):
        policy_loss(lp, old, adv, mask, backend="cuda")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="old_logp is on cuda"):
            policy_loss(lp, old.cuda(), adv, mask)


def test_opcheck():
    lp, old, adv, mask, rl = _case(4, 9, torch.float32, seed=3)
    lp = lp.requires_grad_()
    for backend in CPU:
        for args in [
            (lp, old, adv, mask, rl, 0.2, 0.28, 0.1, "k3", "seq_mean_token_mean", 9, True, backend),
            (lp.detach(), old, adv, mask, None, 0.2, 0.2, 0.0, "k1", "token_mean", 16, False, backend),
        ]:
            torch.library.opcheck(torch.ops.mpo_fast.policy_loss.default, args)


def test_torch_compile_traces_the_custom_op():
    backend = CPU[0] if CPU else "reference"
    lp, old, adv, mask, rl = _case(4, 9, torch.float32, seed=3)

    def f(x):
        return policy_loss(x, old, adv, mask, ref_logp=rl, kl_coef=0.1, backend=backend).loss * 2

    x1 = lp.clone().requires_grad_()
    x2 = lp.clone().requires_grad_()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=False)
    y1, y2 = compiled(x1), f(x2)
    y1.backward()
    y2.backward()
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.gpu
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("kl_estimator", ESTIMATORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 1025), (64, 4099)])
def test_gpu_matches_reference(aggregation, kl_estimator, dtype, shape):
    case = _case(*shape, dtype, seed=shape[1], device="cuda")
    out, _ = _check("triton", *case, clip_low=0.2, clip_high=0.28, kl_coef=0.05, kl_estimator=kl_estimator,
                    aggregation=aggregation)
    assert out.loss.device.type == "cuda"


@pytest.mark.gpu
def test_gpu_auto_picks_triton_and_strided_inputs_work():
    logp, old, adv, mask, ref_lp = _case(8, 513, torch.bfloat16, seed=2, adv_per_token=True, device="cuda")
    _check("auto", logp[:, 1:], old[:, :-1], adv[:, 1:], mask[:, 1:], ref_lp[:, 1:], kl_coef=0.1)
