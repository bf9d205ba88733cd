"""selective_log_softmax: every backend against the fp64 reference, forward and gradients.

Criterion (tests/helpers.py): element-wise err(backend vs fp64) <= 2 * err(plain torch in the input
dtype vs fp64) + floor, where "plain torch" is the reference run on the same-dtype logits (fp32 math, as
the op promises). The Triton interpreter is slow (~15 ms a program), so Triton runs small shapes
plus one real-vocabulary shape; the C++ path runs everything.
"""
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mpo_fast._backend as backend_mod
from mpo_fast.ops.selective_log_softmax import TokenLogProbs, selective_log_softmax
from mpo_fast.reference import logprobs as ref
from tests.helpers import assert_close_to_reference, assert_elementwise_close, available_backends, has_module

CPU_BACKENDS = available_backends("cpu", "triton")
QWEN_VOCAB = 151936
FLOOR = 2e-6


def _logits(n, v, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, v, generator=g, dtype=torch.float64) * scale).to(dtype)


def _ids(n, v, seed=0, ignore_every=0):
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        ids[::ignore_every] = -100
    return ids


def _run(backend, logits, ids, temperature, grads=True, **kw):
    """(logp, entropy, grad) of the backend, with upstream grads gl, ge fixed by seed."""
    x = logits.detach().requires_grad_(grads)  # detach keeps the strides (clone would compact a slice)
    out = selective_log_softmax(x, ids, temperature=temperature, return_entropy=True, backend=backend, **kw)
    if not grads:
        return out.logp, out.entropy, None
    g = torch.Generator().manual_seed(7)
    gl = torch.randn(ids.shape[0], generator=g, dtype=torch.float64).to(out.logp.dtype)
    ge = torch.randn(ids.shape[0], generator=g, dtype=torch.float64).to(out.logp.dtype)
    (out.logp * gl + out.entropy * ge).sum().backward()
    return out.logp.detach(), out.entropy.detach(), x.grad


def _oracle(logits, ids, temperature, dtype):
    """Reference in fp64 and in `dtype` (the 'plain torch' yardstick), each with its gradient."""
    results = []
    for x0 in (logits.detach().double(), logits.detach().to(dtype)):
        x = x0.clone().requires_grad_()
        logp, entropy = ref.selective_log_softmax(x, ids, temperature)
        g = torch.Generator().manual_seed(7)
        gl = torch.randn(ids.shape[0], generator=g, dtype=torch.float64).to(logp.dtype)
        ge = torch.randn(ids.shape[0], generator=g, dtype=torch.float64).to(logp.dtype)
        (logp * gl + entropy * ge).sum().backward()
        results.append((logp.detach(), entropy.detach(), x.grad))
    return results


def _check(backend, logits, ids, temperature=1.0, what=""):
    logp, entropy, grad = _run(backend, logits, ids, temperature)
    (r_lp, r_en, r_g), (s_lp, s_en, s_g) = _oracle(logits, ids, temperature, logits.dtype)
    assert logp.dtype == (torch.float64 if logits.dtype == torch.float64 else torch.float32)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    tag = f"{backend}/{logits.dtype}/{tuple(logits.shape)}/T={temperature}{what}"
    assert_close_to_reference(logp, s_lp, r_lp, floor=FLOOR, what=f"logp {tag}")
    assert_close_to_reference(entropy, s_en, r_en, floor=FLOOR, what=f"entropy {tag}")
    assert_close_to_reference(grad, s_g, r_g, floor=FLOOR, what=f"grad {tag}")
    return logp, entropy, grad


SHAPES = [(1, 1000), (7, 1000), (1025, 1000), (7, QWEN_VOCAB), (1, QWEN_VOCAB)]


@pytest.mark.parametrize("backend", ["reference"] + [b for b in CPU_BACKENDS if b != "triton"])
@pytest.mark.parametrize("n,v", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(backend, n, v, dtype):
    _check(backend, _logits(n, v, dtype, seed=n), _ids(n, v, seed=n, ignore_every=5), temperature=0.7)


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton is not installed")
@pytest.mark.parametrize("n,v,dtype", [(1, 1000, torch.float32), (7, 1000, torch.bfloat16), (7, 1000, torch.float64)])
def test_triton_matches_reference(n, v, dtype):
    _check("triton", _logits(n, v, dtype, seed=n), _ids(n, v, seed=n, ignore_every=3), temperature=1.3)


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton is not installed")
def test_triton_real_vocab():
    _check("triton", _logits(7, QWEN_VOCAB, torch.bfloat16, seed=3), _ids(7, QWEN_VOCAB, seed=3, ignore_every=4))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float16_and_float64(backend):
    for dtype in (torch.float16, torch.float64):
        _check(backend, _logits(5, 777, dtype, seed=11, scale=2.0), _ids(5, 777, seed=11), temperature=0.9)


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_strided_inputs(backend):
    wide = _logits(6, 1100, torch.float32, seed=5)
    cols = wide[:, 37:1037]  # a column slice: row stride 1100, read in place
    assert not cols.is_contiguous() and cols.stride(1) == 1
    ids = _ids(12, 1000, seed=5)[::2]  # non-contiguous ids
    _check(backend, cols, ids, temperature=0.8, what="/column slice")
    # the op really reads the slice in place: a change outside it makes no difference
    wide[:, :37] = float("nan")
    wide[:, 1037:] = float("nan")
    _check(backend, cols, ids, temperature=0.8, what="/column slice, NaN around it")
    transposed = _logits(1000, 6, torch.bfloat16, seed=6).t()  # unit row stride: copied once
    _check(backend, transposed, ids.int(), what="/transposed, int32 ids")
    expanded = _logits(1, 1000, torch.float32, seed=7).expand(6, 1000)  # row stride 0: copied once
    _check(backend, expanded, ids, what="/expanded")


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_ignore_index_rows_are_zero_and_unread(backend):
    x = _logits(6, 500, torch.float32, seed=8)
    ids = _ids(6, 500, seed=8)
    ids[[1, 4]] = -1
    x[1] = float("nan")  # padding rows may hold anything
    x[4, 3] = float("inf")
    logp, entropy, grad = _run(backend, x, ids, 1.0, ignore_index=-1)
    assert (logp[[1, 4]] == 0).all() and (entropy[[1, 4]] == 0).all()
    assert (grad[[1, 4]] == 0).all()
    keep = [0, 2, 3, 5]
    r_lp, r_en = ref.selective_log_softmax(x[keep].double(), ids[keep], 1.0)
    torch.testing.assert_close(logp[keep].double(), r_lp, rtol=0, atol=1e-5)
    assert torch.isfinite(grad[keep]).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_all_rows_masked(backend):
    x = _logits(4, 300, torch.bfloat16, seed=2)
    ids = torch.full((4,), -100)
    logp, entropy, grad = _run(backend, x, ids, 1.0)
    assert (logp == 0).all() and (entropy == 0).all() and (grad == 0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_non_finite_logits_stay_in_their_row(backend):
    v = 2048
    clean = _logits(7, v, torch.float32, seed=4)
    ids = _ids(7, v, seed=4)
    x = clean.clone()
    x[1, 100] = float("nan")
    x[3, 7] = float("inf")
    x[5] = float("-inf")  # no distribution at all
    x[6, : v // 2] = float("-inf")  # vocabulary masking: half the entries have probability 0
    ids[6] = v - 1
    logp, entropy, grad = _run(backend, x, ids, 1.0)
    c_lp, c_en, c_g = _run(backend, clean, ids, 1.0)
    for r in (1, 3, 5):
        assert math.isnan(logp[r]) and math.isnan(entropy[r]), f"row {r} should be NaN"
    for r in (0, 2, 4):  # untouched rows: bit-identical to the clean run
        assert torch.equal(logp[r], c_lp[r]) and torch.equal(entropy[r], c_en[r]) and torch.equal(grad[r], c_g[r])
    r_lp, r_en = ref.selective_log_softmax(x[6:].double(), ids[6:], 1.0)
    torch.testing.assert_close(logp[6:].double(), r_lp, rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy[6:].double(), r_en, rtol=0, atol=1e-5)
    assert torch.isfinite(grad[6]).all() and (grad[6, : v // 2] == 0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_large_jumps_of_the_running_max(backend):
    """A max found late, far above everything before it (the online rescale and the C++ path's
    redo of a block whose max jumps by more than 64), and a slowly rising row."""
    v = 5000
    x = _logits(4, v, torch.float32, seed=12, scale=1.0)
    x[0, -3] = 200.0  # last block, 200 above the rest
    x[1, 2500] = 90.0
    x[1, 4000] = 180.0
    x[2] = torch.linspace(-50.0, 50.0, v)  # the max rises in every block
    x[3, 0] = -300.0  # a tiny first element, then ordinary values
    ids = torch.tensor([v - 3, 17, v - 1, 0])
    _check(backend, x, ids, what="/late maxima")


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_single_output_gradients(backend):
    """Only logp used, or only entropy used: the other gradient is absent, not zero-filled and wrong.

    Element-wise criterion against fp64 with plain fp32 torch as the yardstick (tests/helpers.py): the
    entropy gradient p_j (log p_j + H) crosses zero, where fp32 torch itself is ~1e-5 off relative to
    the mean entry, so no fixed rtol suits both it and the logp gradient (~1e-7). The former
    absolute atol=2e-6 was ~0.2% of a typical entry (~1/900) and looser still for small ones.
    """
    x0 = _logits(5, 900, torch.float32, seed=9)
    ids = _ids(5, 900, seed=9)

    def ref_grad(dtype, use):
        x = x0.detach().to(dtype, copy=True).requires_grad_()
        r = dict(zip(("logp", "entropy"), ref.selective_log_softmax(x, ids)))
        (r[use] if use else r["logp"]).sum().backward()
        return x.grad

    for use in ("logp", "entropy"):
        x = x0.clone().requires_grad_()
        out = selective_log_softmax(x, ids, return_entropy=True, backend=backend)
        getattr(out, use).sum().backward()
        assert_close_to_reference(x.grad, ref_grad(torch.float32, use), ref_grad(torch.float64, use), floor=FLOOR,
                                  what=f"{backend} grad via {use} alone")
    x = x0.clone().requires_grad_()
    selective_log_softmax(x, ids, backend=backend).sum().backward()  # no entropy requested at all
    assert_close_to_reference(x.grad, ref_grad(torch.float32, None), ref_grad(torch.float64, None), floor=FLOOR,
                              what=f"{backend} grad without entropy")
    # and the yardstick is tight where no cancellation is: the logp gradient within 1e-6 element-wise
    assert_elementwise_close(x.grad, ref_grad(torch.float64, None), rtol=1e-6, what=f"{backend} logp grad")


def test_known_values():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    out = selective_log_softmax(logits, torch.tensor([1, 0]), return_entropy=True)
    assert isinstance(out, TokenLogProbs)
    torch.testing.assert_close(out.logp, torch.tensor([math.log(0.75), math.log(0.5)]))
    h0 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    torch.testing.assert_close(out.entropy, torch.tensor([h0, math.log(2.0)]))
    # temperature 2 on [0, log 9]: probabilities 1/4, 3/4 again
    out = selective_log_softmax(torch.tensor([[0.0, math.log(9.0)]]), torch.tensor([1]), temperature=2.0)
    torch.testing.assert_close(out, torch.tensor([math.log(0.75)]))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_float64(backend):
    x = _logits(3, 17, torch.float64, seed=1).requires_grad_()
    ids = torch.tensor([4, -100, 16])

    def f(z):
        out = selective_log_softmax(z, ids, temperature=0.6, return_entropy=True, backend=backend)
        return out.logp, out.entropy

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6)


def test_bad_inputs_are_named():
    x = torch.randn(4, 10)
    ids = torch.tensor([1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"logits has 3 dims .* flatten batch and sequence"):
        selective_log_softmax(torch.randn(2, 2, 10), ids)
    with pytest.raises(ValueError, match=r"ids has shape \(3,\), expected \[4\]"):
        selective_log_softmax(x, ids[:3])
    with pytest.raises(ValueError, match=r"ids out of range \[0, 10\) at positions \[1, 3\].*values \[10, -5\]"):
        selective_log_softmax(x, torch.tensor([0, 10, 3, -5]))
    with pytest.raises(TypeError, match="ids has dtype torch.float32, expected an integer dtype"):
        selective_log_softmax(x, ids.float())
    with pytest.raises(TypeError, match="logits has dtype torch.int64"):
        selective_log_softmax(torch.ones(4, 10, dtype=torch.long), ids)
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        selective_log_softmax(x, ids, temperature=0.0)
    with pytest.raises(ValueError, match="ids is on meta but logits is on cpu"):
        selective_log_softmax(x, ids.to("meta"))
    with pytest.raises(ValueError, match="has no 'nonesuch'|unknown backend"):
        selective_log_softmax(x, ids, backend="nonesuch")
    selective_log_softmax(x, torch.tensor([0, -100, 9, -100]))  # ignore_index is not out of range


def test_unchecked_bad_id_gives_nan_not_a_wild_read():
    x = torch.randn(3, 10)
    for backend in CPU_BACKENDS:
        out = selective_log_softmax(x, torch.tensor([1, 10_000_000, 2]), backend=backend, check_ids=False)
        assert math.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()


def test_opcheck():
    x = _logits(6, 130, torch.float32, seed=3)
    ids = _ids(6, 130, seed=3, ignore_every=4)
    for backend in ["reference"] + [b for b in CPU_BACKENDS if b != "triton"]:
        for with_entropy in (True, False):
            torch.library.opcheck(
                torch.ops.mpo_fast.selective_log_softmax.default,
                (x.clone().requires_grad_(), ids, 0.9, -100, with_entropy, backend),
            )
        lse = ref.logsumexp_rows(x, ids, 0.9)
        _, ent = ref.selective_log_softmax(x, ids, 0.9)
        gl, ge = torch.randn(6), torch.randn(6)
        torch.library.opcheck(
            torch.ops.mpo_fast.selective_log_softmax_backward.default,
            (gl, ge, x, ids, lse, ent, 0.9, -100, backend),
        )


def test_torch_compile_traces_the_custom_op():
    x = _logits(8, 64, torch.float32).requires_grad_()
    ids = _ids(8, 64)
    name = "cpu" if "cpu" in CPU_BACKENDS else "reference"

    def f(z):
        out = selective_log_softmax(z, ids, return_entropy=True, backend=name, check_ids=False)
        return (out.logp * 2 + out.entropy).sum()

    compiled = torch.compile(f, backend="eager", fullgraph=False)
    torch.testing.assert_close(compiled(x), f(x))


def test_auto_backend_on_cpu_is_the_cpp_path():
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("C++ extension not built")
    assert backend_mod.resolve("selective_log_softmax", "auto", torch.device("cpu"), ("reference", "cpu", "triton", "cuda")) == "cpu"


def compile_triton_kernels(arch: int, every_variant: bool = True) -> None:
    """Lower the Triton kernels of this op to cubins for sm_<arch> (no GPU needed: ptxas ships with triton).

    every_variant=False: only the bf16 training path (forward with entropy, fold, both-gradient backward).

    Needs real JIT functions, so it runs in a process without TRITON_INTERPRET (see the test below).
    """
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mpo_fast.kernels import selective_log_softmax as k

    target = GPUTarget("cuda", arch, 32)

    def compile_(fn, sig, consts, warps):
        src = ASTSource(fn=fn, signature={**sig, **{c: "constexpr" for c in consts}}, constexprs=consts)
        return triton.compile(src, target=target, options={"num_warps": warps})

    stats = {"n_cols": "i32", "row_stride": "i64", "ignore_index": "i64", "inv_t": "fp32"}
    dtypes = (("bf16", tl.float32), ("fp32", tl.float32), ("fp16", tl.float32), ("fp64", tl.float64))
    for dt, acc in dtypes if every_variant else dtypes[:1]:
        st = "fp64" if dt == "fp64" else "fp32"
        for ent in (True, False) if every_variant else (True,):
            compile_(k._forward_kernel, {"logits_ptr": f"*{dt}", "ids_ptr": "*i64", "logp_ptr": f"*{st}",
                                         "entropy_ptr": f"*{st}", "lse_ptr": f"*{st}", **stats},
                     {"ENTROPY": ent, "ACC": acc, "BLOCK": k.FWD_BLOCK}, k.FWD_WARPS)
    for write_exp in (True, False):
        compile_(k._fold_kernel, {"tile_ptr": "*bf16", "ids_ptr": "*i64", "m_ptr": "*fp32", "s_ptr": "*fp32",
                                  "t_ptr": "*fp32", "zt_ptr": "*fp32", "alpha_ptr": "*fp32", "n_cols": "i32",
                                  "row_stride": "i64", "vocab_start": "i64", "ignore_index": "i64", "inv_t": "fp32"},
                 {"ENTROPY": not write_exp, "WRITE_EXP": write_exp, "ACC": tl.float32, "BLOCK": k.FWD_BLOCK},
                 k.FWD_WARPS)
    for has_logp, has_ent in ((True, True), (True, False), (False, True)) if every_variant else ((True, True),):
        compile_(k._backward_kernel, {"logits_ptr": "*bf16", "ids_ptr": "*i64", "lse_ptr": "*fp32",
                                      "entropy_ptr": "*fp32", "grad_logp_ptr": "*fp32", "grad_entropy_ptr": "*fp32",
                                      "grad_ptr": "*bf16", "n_cols": "i32", "row_stride": "i64",
                                      "grad_row_stride": "i64", "vocab_start": "i64", "ignore_index": "i64",
                                      "inv_t": "fp32"},
                 {"HAS_LOGP": has_logp, "HAS_ENTROPY": has_ent, "ACC": tl.float32, "BLOCK": k.BWD_BLOCK},
                 k.BWD_WARPS)


@pytest.mark.skipif(not has_module("triton"), reason="triton is not installed")
def test_triton_kernels_compile_for_gpus():
    """sm_90 cubins for every kernel variant and sm_80 for the bf16 path, in a fresh process without the interpreter."""
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    code = "from tests.ops.test_selective_log_softmax import compile_triton_kernels as c; c(90); c(80, every_variant=False)"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


# ---- GPU -------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("n,v", [(1, 1000), (7, 1000), (1025, 1000), (7, QWEN_VOCAB), (1025, QWEN_VOCAB), (33, 1001)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_matches_reference(backend, n, v, dtype):
    x = _logits(n, v, dtype, seed=n).cuda()
    ids = _ids(n, v, seed=n, ignore_every=5).cuda()
    _check(backend, x, ids, temperature=0.7)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_strided_and_non_finite(backend):
    wide = _logits(9, 1003, torch.bfloat16, seed=5).cuda()
    cols = wide[:, 1:1001]  # misaligned rows: the scalar (1-element vector) kernels
    ids = _ids(9, 1000, seed=5).cuda()
    _check(backend, cols, ids, what="/misaligned slice")
    x = cols.clone()
    x[2, 5] = float("nan")
    x[4] = float("-inf")
    logp, entropy, grad = _run(backend, x, ids, 1.0)
    c_lp, _, c_g = _run(backend, cols, ids, 1.0)
    assert math.isnan(logp[2]) and math.isnan(logp[4])
    keep = [0, 1, 3, 5, 6, 7, 8]
    assert torch.equal(logp[keep], c_lp[keep]) and torch.equal(grad[keep], c_g[keep])
