import os

import pytest
import torch

import mpo_fast
from mpo_fast import _backend


def test_backends_lists_all_four_with_reasons():
    info = mpo_fast.backends()
    assert set(info) == {"reference", "cpu", "triton", "cuda"}
    assert info["reference"].available
    for name, b in info.items():
        assert isinstance(b.reason, str) and b.reason, name


def test_cpu_extension_built_here():
    # The C++ extension is always built; CI proves it on every push.
    info = mpo_fast.backends()["cpu"]
    assert info.available and info.built, info.reason


def test_cuda_extension_built_when_nvcc_present():
    import shutil

    if shutil.which("nvcc") is None or os.environ.get("MPO_FAST_SKIP_CUDA", "0") not in ("", "0"):
        pytest.skip("nvcc not on PATH (or MPO_FAST_SKIP_CUDA set): the CUDA extension is not expected")
    info = mpo_fast.backends()["cuda"]
    assert info.built, info.reason
    if not torch.cuda.is_available():
        assert not info.available and "no usable GPU" in info.reason


def test_auto_resolves_cpu_tensors_to_cpp():
    assert _backend.resolve("group_advantages", "auto", torch.device("cpu"), ("reference", "cpu")) == "cpu"


def test_auto_falls_back_to_reference_when_op_has_no_fast_path():
    assert _backend.resolve("x", "auto", torch.device("cpu"), ("reference", "cuda")) == "reference"


def test_named_unavailable_backend_says_why():
    if torch.cuda.is_available():
        pytest.skip("cuda is available here")
    with pytest.raises(ValueError, match="cannot run"):
        _backend.resolve("group_advantages", "cuda", torch.device("cpu"), ("reference", "cuda"))


def test_named_backend_the_op_lacks():
    with pytest.raises(ValueError, match="has no 'triton' backend"):
        _backend.resolve("x", "triton", torch.device("cpu"), ("reference",))


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend"):
        _backend.resolve("x", "tpu", torch.device("cpu"), ("reference",))


def test_env_var_sets_auto(monkeypatch):
    monkeypatch.setenv("MPO_FAST_BACKEND", "reference")
    assert _backend.resolve("group_advantages", "auto", torch.device("cpu"), ("reference", "cpu")) == "reference"
    monkeypatch.setenv("MPO_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="MPO_FAST_BACKEND"):
        _backend.resolve("group_advantages", "auto", torch.device("cpu"), ("reference", "cpu"))


def test_unavailable_named_backend_raises_backend_unavailable(monkeypatch):
    monkeypatch.setattr(_backend, "backend_info", lambda name: _backend.BackendInfo(False, "not built here"))
    with pytest.raises(_backend.BackendUnavailableError, match="not built here"):
        _backend.resolve("group_advantages", "cpu", torch.device("cpu"), ("reference", "cpu"))
