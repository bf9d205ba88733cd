"""Every C-ABI CUDA launch runs with its tensors' device current and that device's stream (issue 18).

No GPU here: torch.cuda.device / current_stream and mpo_fast._cuda are replaced by fakes that record
which device was current when each native function was called. Tensors are CPU tensors that the
fakes treat as living on cuda:1 while cuda:0 is current, the case that failed before the guard.
A launch that bypasses mpo_fast._native.cuda_launches records device None and fails the test.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

import mpo_fast._native as native

GUARDED = torch.device("cuda", 1)


class _Fakes:
    def __init__(self):
        self.current = torch.device("cuda", 0)  # the process default
        self.calls: list[tuple[str, torch.device | None, int]] = []

    @contextlib.contextmanager
    def device(self, d):
        prev, self.current = self.current, torch.device(d)
        try:
            yield
        finally:
            self.current = prev

    def current_stream(self, d=None):
        d = torch.device(d) if d is not None else self.current

        class S:
            cuda_stream = 7000 + d.index  # a distinct handle per device

        return S()


class _FakeExt:
    def __init__(self, fakes):
        self._fakes = fakes

    def __getattr__(self, name):
        def fn(*args):
            self._fakes.calls.append((name, self._fakes.current, args[-1]))

        return fn


@pytest.fixture
def fakes(monkeypatch):
    f = _Fakes()
    monkeypatch.setattr(torch.cuda, "device", f.device)
    monkeypatch.setattr(torch.cuda, "current_stream", f.current_stream)
    monkeypatch.setattr(native, "cuda_ext", _FakeExt(f))
    seen = []

    def launches(device):  # the ops pass their tensors' device (CPU here): pretend it is cuda:1
        seen.append(torch.device(device))
        return native.CudaLaunches(GUARDED)

    monkeypatch.setattr(native, "cuda_launches", launches)
    f.seen = seen
    return f


def _assert_guarded(fakes, names):
    assert [c[0] for c in fakes.calls] == names, fakes.calls
    for name, current, stream in fakes.calls:
        assert current == GUARDED, f"{name} launched with {current} current, not its tensors' {GUARDED}"
        assert stream == 7000 + GUARDED.index, f"{name} got stream {stream}, not cuda:1's"
    assert fakes.current == torch.device("cuda", 0), "the guard must restore the caller's device"
    assert all(d == torch.device("cpu") for d in fakes.seen), "the op must guard with its tensors' device"


def test_cuda_launches_sets_device_and_appends_stream(fakes):
    native.CudaLaunches(GUARDED).anything(1, 2)
    _assert_guarded(fakes, ["anything"])


def test_cuda_launches_refuses_cpu_devices():
    with pytest.raises(ValueError, match="need CUDA tensors"):
        native.CudaLaunches(torch.device("cpu"))


def test_gae(fakes):
    from mpo_fast.ops.gae import _gae_op

    r = torch.randn(2, 5)
    _gae_op(r, r.clone(), torch.ones(2, 5, dtype=torch.bool), 1.0, 0.95, "cuda")
    _assert_guarded(fakes, ["gae"])


def test_group_advantages(fakes):
    from mpo_fast.ops.advantages import _group_advantages_op

    _group_advantages_op(torch.randn(8), None, 4, "grpo", 1e-6, "cuda")
    _assert_guarded(fakes, ["group_advantages"])


def test_selective_log_softmax(fakes):
    from mpo_fast.ops.selective_log_softmax import _backward_op, _forward_op

    x = torch.randn(3, 10)
    ids = torch.tensor([1, 2, 3])
    _forward_op(x, ids, 1.0, -100, True, "cuda")
    stats = torch.zeros(3)
    _backward_op(torch.ones(3), None, x, ids, stats, stats, 1.0, -100, "cuda")
    _assert_guarded(fakes, ["selective_log_softmax_forward", "selective_log_softmax_backward"])


def test_fused_linear_logprob_tiles(fakes):
    from mpo_fast.ops.fused_linear_logprob import _tile_kernels

    fold, grad_ = _tile_kernels("cuda", torch.device("cpu"))
    tile, ids, z = torch.randn(3, 10), torch.tensor([1, 2, 3]), torch.zeros(3)
    fold(tile, ids, 0, 1.0, -100, True, z, z, z, z)
    grad_(tile, ids, 0, 1.0, -100, z, z, torch.ones(3), None)
    _assert_guarded(fakes, ["selective_log_softmax_fold", "selective_log_softmax_backward"])


# ---- Triton launches: the same guard (Triton launches on the current device, not the tensors') ----
@pytest.fixture
def triton_fakes(monkeypatch):
    f = _Fakes()
    monkeypatch.setattr(torch.cuda, "device", f.device)
    seen = []

    def on_device(device):  # the ops pass their tensors' device (CPU here): pretend it is cuda:1
        seen.append(torch.device(device))
        return f.device(GUARDED)

    monkeypatch.setattr(native, "on_device", on_device)
    f.seen = seen
    return f


def _recording(fakes, name):
    def kernel(*args, **kwargs):
        fakes.calls.append((name, fakes.current, 7001))
        raise _Launched  # stop the op here: the launch site is what is under test

    return kernel


class _Launched(Exception):
    pass


@pytest.mark.parametrize("module, fn, call", [
    ("gae", "gae", lambda: __import__("mpo_fast.ops.gae", fromlist=["_gae_op"])._gae_op(
        torch.randn(2, 5), torch.randn(2, 5), torch.ones(2, 5, dtype=torch.bool), 1.0, 0.95, "triton")),
    ("group_advantages", "group_advantages", lambda: __import__(
        "mpo_fast.ops.advantages", fromlist=["x"])._group_advantages_op(torch.randn(8), None, 4, "grpo", 1e-6, "triton")),
    ("selective_log_softmax", "forward", lambda: __import__(
        "mpo_fast.ops.selective_log_softmax", fromlist=["x"])._forward_op(torch.randn(3, 10), torch.tensor([1, 2, 3]),
                                                                          1.0, -100, True, "triton")),
    ("selective_log_softmax", "fold", lambda: __import__("mpo_fast.ops.fused_linear_logprob", fromlist=["x"])
     ._triton_fold(torch.randn(3, 10), torch.tensor([1, 2, 3]), 0, 1.0, -100, False, *[torch.zeros(3)] * 4)),
    ("policy_loss", "policy_loss_forward", lambda: __import__("mpo_fast.ops.policy_loss", fromlist=["x"])
     ._policy_loss_op(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2), torch.ones(2, 3, dtype=torch.bool), None,
                      0.2, 0.2, 0.0, "k3", "token_mean", 3, True, "triton")),
    ("expected_score", "expected_score", lambda: __import__("mpo_fast.ops.expected_score", fromlist=["x"])
     ._expected_score_op(torch.randn(4, 20), torch.tensor([1, 2]), torch.tensor([1.0, 2.0]), "triton")),
])
def test_triton_launches_are_guarded(triton_fakes, monkeypatch, module, fn, call):
    pytest.importorskip("triton")
    import importlib

    kernels = importlib.import_module(f"mpo_fast.kernels.{module}")
    monkeypatch.setattr(kernels, fn, _recording(triton_fakes, fn))
    with pytest.raises(_Launched):
        call()
    assert [c[:2] for c in triton_fakes.calls] == [(fn, GUARDED)], triton_fakes.calls
    assert triton_fakes.current == torch.device("cuda", 0)
    assert triton_fakes.seen and all(d == torch.device("cpu") for d in triton_fakes.seen)
