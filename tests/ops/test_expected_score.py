import math

import pytest
import torch

from mpo_fast.ops.expected_score import expected_score, expected_score_advantages
from mpo_fast.reference import expected_score as ref
from tests.helpers import assert_close_to_reference, available_backends

BACKENDS = available_backends("triton") + ["reference"]
QWEN_VOCAB = 151936


def _dev(backend: str) -> str:
    # Triton runs CUDA tensors on a GPU machine, CPU tensors only under the interpreter (conftest).
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _case(rows, vocab, k, dtype, seed, per_row=True, pad=True):
    g = torch.Generator().manual_seed(seed)
    logits64 = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 4
    # Make the allowed tokens matter: push them up so the expectation is not ~uniform noise.
    shape = (rows, k) if per_row else (k,)
    ids = torch.stack([torch.randperm(vocab, generator=g)[:k] for _ in range(shape[0])]) if per_row else torch.randperm(vocab, generator=g)[:k]
    bump = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 8
    rows_idx = torch.arange(rows)[:, None].expand(rows, k) if per_row else torch.arange(rows)[:, None].expand(rows, k)
    cols = ids if per_row else ids.expand(rows, k)
    logits64[rows_idx, cols] += bump if per_row else bump.expand(rows, k)
    values = torch.rand(shape, generator=g, dtype=torch.float64) * 10
    if pad and per_row and k > 1:
        ids[0, -1] = -1  # a row with fewer choices
    return logits64.to(dtype), ids, values


def _check(backend, logits, ids, values):
    dev = _dev(backend)
    out = expected_score(logits.to(dev), ids.to(dev), values.to(dev), backend=backend)
    out = type(out)(*(t.cpu() for t in out))
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    e64, m64, lp64 = ref.expected_score(logits.double(), ids, values.double())
    e_same, m_same, lp_same = ref.expected_score(logits, ids, values.to(acc))
    assert out.expected.dtype == acc and out.mass.dtype == acc and out.logp.dtype == acc
    assert out.logp.shape == (logits.shape[0], ids.shape[-1])
    assert_close_to_reference(out.expected, e_same, e64, floor=1e-6, what=f"{backend} expected")
    assert_close_to_reference(out.mass, m_same, m64, floor=1e-6, what=f"{backend} mass")
    finite = torch.isfinite(lp64)
    assert torch.equal(torch.isfinite(out.logp), finite), "padding must be -inf and only padding"
    assert_close_to_reference(out.logp[finite], lp_same[finite], lp64[finite], floor=1e-6, what=f"{backend} logp")
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows,vocab,k", [(1, 7, 3), (7, 769, 11), (3, 1025, 1), (5, 2049, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_matches_reference(backend, rows, vocab, k, dtype):
    _check(backend, *_case(rows, vocab, k, dtype, seed=rows * 100 + k))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_vocab_shared_ids(backend, dtype):
    _check(backend, *_case(3, QWEN_VOCAB, 11, dtype, seed=7, per_row=False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_rows(backend):
    logits, ids, values = _case(10, 769, 5, torch.float32, seed=3)
    _check(backend, logits[::2], ids[::2], values[::2])
    wide = torch.randn(4, 1600)[:, :769]  # rows strided, vocab contiguous
    assert not wide.is_contiguous()
    _check(backend, wide, ids[:4], values[:4])


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_values(backend):
    # Allowed tokens 0,1,2 with values 0,5,10 and logits log(1), log(3), log(0)=-inf -> p = .25,.75,0
    logits = torch.full((1, 6), -1e4)
    logits[0, 0] = 0.0
    logits[0, 1] = math.log(3.0)
    logits[0, 5] = math.log(4.0)  # off the allowed set: lowers the mass, not the expectation
    dev = _dev(backend)
    out = expected_score(logits.to(dev), torch.tensor([0, 1, 2], device=dev), torch.tensor([0.0, 5.0, 10.0], device=dev), backend=backend)
    assert out.expected.item() == pytest.approx(3.75, rel=1e-6)
    assert out.mass.item() == pytest.approx(0.5, rel=1e-6)
    # argmax token and expected score agree on ordering for two rows
    two = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]], device=dev)
    out = expected_score(two, torch.tensor([0, 1, 2], device=dev), torch.tensor([0.0, 1.0, 2.0], device=dev), backend=backend)
    assert out.expected[0] < out.expected[1]


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide")  # the interpreter's 0/0 = NaN
@pytest.mark.parametrize("backend", BACKENDS)
def test_row_without_choices_is_nan(backend):
    dev = _dev(backend)
    logits = torch.randn(2, 50, device=dev)
    ids = torch.tensor([[-1, -1], [3, 4]], device=dev)
    out = expected_score(logits, ids, torch.tensor([1.0, 2.0], device=dev).expand(2, 2), backend=backend)
    assert math.isnan(out.expected[0].item()) and out.mass[0].item() == 0.0
    assert math.isfinite(out.expected[1].item())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("group_size", [1, 4, 7])
def test_fused_advantages_match_composition(backend, mode, group_size):
    rows = group_size * 3
    logits, ids, values = _case(rows, 1025, 11, torch.float32, seed=group_size)
    e64, m64, _ = ref.expected_score(logits.double(), ids, values.double())
    # Mask about half the rows, with the threshold halfway between two masses so rounding in
    # any dtype cannot flip a row: masks must then agree exactly.
    sorted_mass = m64.sort().values
    mid = rows // 2
    min_mass = float(sorted_mass[mid - 1] + sorted_mass[mid]) / 2 if rows > 1 else float(sorted_mass[0]) / 2
    dev = _dev(backend)
    out = expected_score_advantages(
        logits.to(dev), ids.to(dev), values.to(dev), group_size, scale=0.1, min_mass=min_mass, mode=mode, backend=backend
    )
    out = type(out)(*(t.cpu() for t in out))
    r64 = ref.expected_score_advantages(logits.double(), ids, values.double(), group_size, scale=0.1, min_mass=min_mass, mode=mode)
    rs = ref.expected_score_advantages(logits, ids, values.float(), group_size, scale=0.1, min_mass=min_mass, mode=mode)
    assert torch.equal(out.group_valid_counts, r64[3])
    assert_close_to_reference(out.expected, rs[0], r64[0], what="fused expected")
    assert_close_to_reference(out.advantages, rs[2], r64[2], floor=2e-6, what="fused advantages")
    assert (out.advantages[out.mass < min_mass] == 0).all()


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton is not available")
@pytest.mark.parametrize("mode", ["grpo", "rloo"])
@pytest.mark.parametrize("group_size", [1, 5])
def test_split_form_matches_fused_and_reference(mode, group_size):
    """Large B: one program per row, then one per group (issue 18). The split and fused forms do the
    same arithmetic per row and per group, so they agree bit for bit; both match the fp64 reference."""
    from mpo_fast.kernels import expected_score as tk

    rows = group_size * 3
    logits, ids, values = _case(rows, 3000, 6, torch.bfloat16, seed=40 + group_size)
    dev = _dev("triton")
    x, i, v = logits.to(dev), ids.to(dev), values.float().to(dev)
    min_mass = 0.5
    fused = tk.expected_score_advantages(x, i, v, group_size, 0.1, min_mass, mode, 1e-6, split=False)
    split = tk.expected_score_advantages(x, i, v, group_size, 0.1, min_mass, mode, 1e-6, split=True)
    for a, b, name in zip(fused, split, ("expected", "mass", "advantages", "counts")):
        assert torch.equal(a.cpu(), b.cpu()), f"{name}: split form differs from fused"
    r64 = ref.expected_score_advantages(logits.double(), ids, values.double(), group_size, scale=0.1,
                                        min_mass=min_mass, mode=mode)
    rs = ref.expected_score_advantages(logits, ids, values.float(), group_size, scale=0.1, min_mass=min_mass,
                                       mode=mode)
    assert torch.equal(split[3].cpu(), r64[3])
    assert_close_to_reference(split[2].cpu(), rs[2], r64[2], floor=2e-6, what="split advantages")
    # auto picks the split form from SPLIT_MIN_ELEMENTS logits on
    assert rows * 3000 < tk.SPLIT_MIN_ELEMENTS


def test_opcheck():
    logits, ids, values = _case(3, 97, 4, torch.float32, seed=1)
    torch.library.opcheck(torch.ops.mpo_fast.expected_score.default, (logits, ids, values.float(), "reference"))
    torch.library.opcheck(
        torch.ops.mpo_fast.expected_score_advantages.default,
        (logits, ids, values.float(), 3, 0.1, 0.0, "grpo", 1e-6, "reference"),
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(logits=torch.randn(2, 3, 5)), "expected \\[rows, vocab\\]"),
        (dict(token_ids=torch.tensor([0, 9])), "outside \\[-1, vocab=5\\)"),
        (dict(token_ids=torch.tensor([0.0, 1.0])), "int32/int64"),
        (dict(values=torch.tensor([1.0, 2.0, 3.0])), "one value per allowed token"),
        (dict(token_ids=torch.zeros(3, 2, dtype=torch.long)), "give one row per logits row"),
    ],
)
def test_bad_input_names_the_field(kwargs, match):
    args = dict(logits=torch.randn(2, 5), token_ids=torch.tensor([0, 1]), values=torch.tensor([0.0, 1.0]))
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        expected_score(args["logits"], args["token_ids"], args["values"])
