import pytest
import torch

from mpo_fast.ops.gae import gae
from mpo_fast.reference import gae as ref
from tests.helpers import assert_close_to_reference, available_backends

BACKENDS = available_backends("cpu", "triton")  # CPU tensors; the GPU tests below cover cuda and triton
FLOOR = 1e-6


def _case(batch, steps, dtype, seed, *, holes=True, device="cpu"):
    """Random rewards and values, ragged right padding, a hole mid-row (multi-turn observation tokens),
    one fully masked row when batch > 2, and NaN in every padding slot."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(batch, steps, generator=g, dtype=torch.float64) * 0.5
    values = torch.randn(batch, steps, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, steps + 1, (batch,), generator=g)
    mask = torch.arange(steps)[None, :] < lengths[:, None]
    if holes and steps > 6:
        mask[0, 2:5] = False
    if batch > 2:
        mask[1] = False
    rewards = torch.where(mask, rewards, float("nan"))
    values = torch.where(mask, values, float("nan"))
    return rewards.to(dtype).to(device), values.to(dtype).to(device), mask.to(device)


def _check(backend, rewards, values, mask, gamma=0.99, lam=0.95):
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam, backend=backend)
    d = lambda t: t.detach().double().cpu()  # noqa: E731
    a64, r64 = ref.gae(d(rewards), d(values), mask.cpu(), gamma, lam)
    a_same, r_same = ref.gae(rewards, values, mask, gamma, lam)  # the plain loop in the input dtype
    acc = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    assert adv.dtype == acc and ret.dtype == acc and adv.shape == rewards.shape
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all(), "padding NaN leaked"
    valid = (mask != 0).to(adv.device)
    assert (adv[~valid] == 0).all() and (ret[~valid] == 0).all()
    assert_close_to_reference(adv, a_same, a64, floor=FLOOR, what=f"{backend} advantages")
    assert_close_to_reference(ret, r_same, r64, floor=FLOOR, what=f"{backend} returns")
    return adv, ret


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (1, 7), (5, 300), (3, 1025)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_matches_reference(backend, shape, dtype):
    if backend == "triton" and shape[1] > 300:
        pytest.skip("the interpreter runs the scan element by element in Python; long rows: test_long_rows_cross_blocks")
    _check(backend, *_case(*shape, dtype, seed=shape[0] * 1000 + shape[1]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 1.0), (1.0, 1.0), (0.9, 0.0), (0.0, 0.5)])
def test_gamma_lambda_edges(backend, gamma, lam):
    _check(backend, *_case(4, 67, torch.float32, seed=3), gamma=gamma, lam=lam)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_rows_cross_blocks(backend):
    # Several Triton blocks (1024) and C++ chunks (1024) per row; holes across block boundaries
    # (blocks are aligned to the row's end: boundaries at T - 1024 k).
    steps = 2100 if backend == "triton" else 4099
    rewards, values, mask = _case(1 if backend == "triton" else 16, steps, torch.float32, seed=4, holes=False)
    mask[0, :] = True
    rewards, values = (torch.nan_to_num(x, nan=0.25) for x in (rewards, values))
    mask[0, steps - 1024 - 5 : steps - 1024 + 5] = False
    mask[0, steps - 2048 - 1 : steps - 2048 + 1] = False
    _check(backend, rewards, values, mask)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_mixed_dtypes(backend):
    rewards, values, mask = _case(6, 41, torch.float32, seed=5)
    wide = torch.randn(6, 42, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    args = (rewards.t().contiguous().t(), wide[:, 1:], mask.float()[:, :].t().contiguous().t())
    assert not any(a.is_contiguous() for a in args)
    _check(backend, *args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_masked_rows_are_zero(backend):
    rewards, values, mask = _case(3, 9, torch.float32, seed=6)
    adv, ret = gae(rewards, values, torch.zeros_like(mask), backend=backend)
    assert (adv == 0).all() and (ret == 0).all()


def test_cpu_is_the_reference_loop_bit_for_bit():
    if "cpu" not in BACKENDS:
        pytest.skip("C++ extension not built")
    rewards, values, mask = _case(9, 777, torch.float32, seed=7)
    adv, ret = gae(rewards, values, mask, gamma=0.99, lam=0.95, backend="cpu")
    a_ref, r_ref = ref.gae(rewards, values, mask, 0.99, 0.95)
    assert torch.equal(adv, a_ref) and torch.equal(ret, r_ref)


def _trl_ppo_gae(rewards, values, padding_mask, gamma, lam):
    """TRL PPOTrainer's loop: values zeroed past the response, then the plain reverse recursion."""
    values = torch.masked_fill(values, padding_mask, 0)
    rewards = torch.masked_fill(rewards, padding_mask, 0)
    lastgaelam = 0
    advantages_reversed = []
    gen_length = rewards.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    return advantages, advantages + values


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_right_padding_matches_trl_ppo_loop(backend):
    rewards, values, mask = _case(5, 23, torch.float64, seed=8, holes=False)
    a_trl, r_trl = _trl_ppo_gae(rewards, values, ~mask, 0.99, 0.95)
    adv, ret = gae(rewards, values, mask, gamma=0.99, lam=0.95, backend=backend)
    torch.testing.assert_close(adv[mask], a_trl[mask], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ret[mask], r_trl[mask], rtol=1e-12, atol=1e-12)


def test_known_values():
    # one row, rewards only at the end, gamma = 1, lam = 0.5: A_t = sum_k lam^k delta_{t+k}
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.25, 0.0]])
    m = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = gae(r, v, m, gamma=1.0, lam=0.5)
    # deltas: 0 + 0.25 - 0.5 = -0.25, 0 + 0 - 0.25 = -0.25, 1 - 0 = 1
    torch.testing.assert_close(adv, torch.tensor([[-0.25 - 0.125 + 0.25, -0.25 + 0.5, 1.0]]))
    torch.testing.assert_close(ret, adv + v)


def test_bad_inputs_are_named():
    r, v, m = _case(2, 5, torch.float32, seed=1)
    with pytest.raises(ValueError, match=r"rewards has 1 dims .*\[batch, steps\]"):
        gae(r[0], v, m)
    with pytest.raises(ValueError, match=r"values has shape \(2, 5, 1\), expected \(2, 5\) .*squeeze"):
        gae(r, v[..., None], m)
    with pytest.raises(TypeError, match="mask has dtype torch.int64, expected bool"):
        gae(r, v, m.long())
    with pytest.raises(TypeError, match="values has dtype torch.int32"):
        gae(r, v.int(), m)
    with pytest.raises(ValueError, match="gamma must be a number in"):
        gae(r, v, m, gamma=1.5)
    with pytest.raises(ValueError, match="lam must be a number in"):
        gae(r, v, m, lam=float("nan"))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        gae(r, v, [[True] * 5] * 2)


def test_opcheck():
    r, v, m = _case(3, 11, torch.float32, seed=2)
    for backend in ["reference"] + [b for b in BACKENDS if b != "triton"]:
        torch.library.opcheck(torch.ops.mpo_fast.gae.default, (r, v, m, 0.99, 0.95, backend))
        torch.library.opcheck(torch.ops.mpo_fast.gae.default, (r.double(), v, m.float(), 1.0, 0.9, backend))


def test_torch_compile_traces_the_custom_op():
    r, v, m = _case(3, 11, torch.float32, seed=2)
    backend = "cpu" if "cpu" in BACKENDS else "reference"

    def f(x):
        return gae(x, v, m, backend=backend).advantages * 2

    compiled = torch.compile(f, backend="eager", fullgraph=False)
    torch.testing.assert_close(compiled(r), f(r))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (5, 255), (3, 257), (64, 1025), (33, 4099)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_gpu_matches_reference(backend, shape, dtype):
    _check(backend, *_case(*shape, dtype, seed=shape[1], device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_strided_mixed_inputs(backend):
    rewards, values, mask = _case(8, 600, torch.float32, seed=9, device="cuda")
    _check(backend, rewards.t().contiguous().t(), values.bfloat16(), mask.float())


@pytest.mark.gpu
def test_gpu_auto_picks_cuda():
    rewards, values, mask = _case(4, 100, torch.float32, seed=10, device="cuda")
    a_auto, _ = gae(rewards, values, mask)
    a_cuda, _ = gae(rewards, values, mask, backend="cuda")
    assert torch.equal(a_auto, a_cuda)
