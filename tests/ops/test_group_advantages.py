import pytest
import torch

import mpo_fast
from mpo_fast.reference import advantages as ref
from tests.helpers import assert_close_to_reference, available_backends

BACKENDS = available_backends("cpu", "triton")  # CPU tensors; cuda is covered by the gpu tests below
MODES = ("grpo", "dr_grpo", "rloo")


def _rewards(n, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=torch.float64) * 3 + 1).to(dtype).to(device)


def _check(backend, rewards, group_size, mode, valid=None, device="cpu"):
    out = mpo_fast.group_advantages(rewards, group_size, mode=mode, valid=valid, backend=backend)
    ref64, counts64 = ref.group_advantages(rewards.double(), group_size, mode, 1e-6, valid)
    same, _ = ref.group_advantages(rewards, group_size, mode, 1e-6, valid)  # torch in the input dtype
    assert out.advantages.shape == rewards.shape
    assert out.advantages.dtype == (torch.float64 if rewards.dtype == torch.float64 else torch.float32)
    assert_close_to_reference(out.advantages, same, ref64, floor=2e-6, what=f"{backend}/{mode}")
    assert torch.equal(out.group_valid_counts.cpu(), counts64.cpu())
    return out


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("group_size", [1, 2, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_matches_reference(backend, mode, group_size, dtype):
    num_groups = 5 if backend == "triton" else 37
    _check(backend, _rewards(num_groups * group_size, dtype, seed=group_size), group_size, mode)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_masked_members(backend, mode):
    g, s = 9, 7
    r = _rewards(g * s, torch.float32, seed=3)
    valid = torch.rand(g * s, generator=torch.Generator().manual_seed(4)) > 0.3
    valid[:s] = False  # a group with no valid member
    valid[s : 2 * s] = False
    valid[s] = True  # a group with one valid member
    r[~valid] = float("nan")  # failed judgements may carry NaN: they must not leak
    out = _check(backend, r, s, mode, valid)
    assert torch.isfinite(out.advantages).all()
    assert (out.advantages[~valid] == 0).all()
    assert (out.advantages[: 2 * s] == 0).all()
    assert int(out.masked_members) == int((~valid).sum())
    assert int(out.degenerate_groups) == int((valid.view(g, s).sum(1) < 2).sum())


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_equal_groups_give_zero(backend):
    r = torch.full((4 * 8,), 0.7)
    for mode in MODES:
        out = mpo_fast.group_advantages(r, 8, mode=mode, backend=backend)
        assert torch.allclose(out.advantages, torch.zeros_like(out.advantages), atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    base = _rewards(2 * 6 * 8, torch.float32, seed=9)
    r = base[::2]
    assert not r.is_contiguous()
    _check(backend, r, 8, "grpo")


def test_known_values():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0])
    out = mpo_fast.group_advantages(r, 3, mode="grpo", eps=0.0)
    torch.testing.assert_close(out.advantages[:3], torch.tensor([-1.0, 0.0, 1.0]))
    out = mpo_fast.group_advantages(r, 3, mode="rloo")
    # leave-one-out: 1 - mean(2,3) = -1.5, 2 - 2 = 0, 3 - 1.5 = 1.5
    torch.testing.assert_close(out.advantages[:3], torch.tensor([-1.5, 0.0, 1.5]))
    out = mpo_fast.group_advantages(r, 3, mode="dr_grpo")
    torch.testing.assert_close(out.advantages[3:], torch.tensor([-2 / 3, 1 / 3, 1 / 3]))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="not a multiple of group_size=4"):
        mpo_fast.group_advantages(torch.randn(10), 4)
    with pytest.raises(ValueError, match=r"indices \[2\]"):
        mpo_fast.group_advantages(torch.tensor([1.0, 2.0, float("nan"), 1.0]), 2)
    with pytest.raises(TypeError, match="floating dtype"):
        mpo_fast.group_advantages(torch.arange(4), 2)
    with pytest.raises(ValueError, match="expected 1-D"):
        mpo_fast.group_advantages(torch.randn(2, 4), 4)
    with pytest.raises(TypeError, match="bool tensor"):
        mpo_fast.group_advantages(torch.randn(4), 2, valid=torch.ones(4))
    with pytest.raises(ValueError, match="mode"):
        mpo_fast.group_advantages(torch.randn(4), 2, mode="ppo")
    # a NaN on a masked member is fine
    mpo_fast.group_advantages(torch.tensor([1.0, float("nan"), 1.0, 2.0, 3.0, 4.0]), 3, valid=torch.tensor([True, False, True, True, True, True]))


def test_opcheck():
    r = _rewards(6 * 5, torch.float32)
    v = torch.rand(30, generator=torch.Generator().manual_seed(1)) > 0.2
    for backend in ["reference"] + [b for b in BACKENDS if b != "triton"]:
        torch.library.opcheck(torch.ops.mpo_fast.group_advantages.default, (r, v, 5, "grpo", 1e-6, backend))
        torch.library.opcheck(torch.ops.mpo_fast.group_advantages.default, (r, None, 5, "rloo", 1e-6, backend))


def test_torch_compile_traces_the_custom_op():
    r = _rewards(8 * 4, torch.float32)

    def f(x):
        return mpo_fast.group_advantages(x, 4, backend="cpu" if "cpu" in BACKENDS else "reference", check_finite=False).advantages * 2

    compiled = torch.compile(f, backend="eager", fullgraph=False)
    torch.testing.assert_close(compiled(r), f(r))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("group_size", [1, 2, 7, 64, 1000])
def test_gpu_matches_reference(backend, mode, dtype, group_size):
    r = _rewards(33 * group_size, dtype, seed=group_size, device="cuda")
    valid = torch.rand(r.shape, device="cuda") > 0.2
    _check(backend, r, group_size, mode, valid, device="cuda")
