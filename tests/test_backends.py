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


def test_auto_warns_once_when_the_cuda_driver_refuses_the_extension(monkeypatch, caplog):
    """Issue 18: a built CUDA extension that the driver cannot run (driver older than the toolkit)
    made `auto` fall back silently; it now says so once per process, at warning level."""
    import logging

    import mpo_fast._backend as b
    import mpo_fast._native as native

    class FakeCudaExt:
        cuda_archs = "80;90"

        @staticmethod
        def device_count():
            return 0, "CUDA driver version is insufficient for CUDA runtime version"

    monkeypatch.setattr(native, "cuda_ext", FakeCudaExt())
    monkeypatch.setattr(b, "_warned_cuda_driver", False)
    b._info_cuda.cache_clear()
    try:
        info = b.backend_info("cuda")
        assert not info.available and info.driver_problem and "driver" in info.reason
        with caplog.at_level(logging.WARNING, logger="mpo_fast"):
            for op in ("gae", "group_advantages", "gae"):
                chosen = b.resolve(op, "auto", torch.device("cuda"), ("reference", "cuda"))
                assert chosen == "reference"
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "CUDA driver version is insufficient" in warnings[0].getMessage()
        # a named cuda backend still raises with the same reason
        with pytest.raises(b.BackendUnavailableError, match="driver"):
            b.resolve("gae", "cuda", torch.device("cuda"), ("reference", "cuda"))
    finally:
        b._info_cuda.cache_clear()


def test_no_driver_warning_when_the_extension_is_just_not_built(monkeypatch, caplog):
    import logging

    import mpo_fast._backend as b
    import mpo_fast._native as native

    monkeypatch.setattr(native, "cuda_ext", None)
    monkeypatch.setattr(b, "_warned_cuda_driver", False)
    b._info_cuda.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="mpo_fast"):
            assert b.resolve("gae", "auto", torch.device("cuda"), ("reference", "cuda")) == "reference"
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    finally:
        b._info_cuda.cache_clear()
