"""Backend availability and per-op backend resolution.

Backends: `reference` (pure torch, always there), `cpu` (C++ extension mpo_fast._C), `triton`
(Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1), `cuda` (mpo_fast._cuda).
`auto` picks cuda, then triton, for CUDA tensors and cpu for CPU tensors, falling back to reference
with a one-time debug log. `MPO_FAST_BACKEND` sets what `auto` means for every op.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass

import torch

from . import _native

log = logging.getLogger("mpo_fast")

BACKENDS = ("reference", "cpu", "triton", "cuda")
_REBUILD_HINT = (
    "reinstall from source so the extension builds: `pip install --no-build-isolation -e .` "
    "(needs cmake and a C++17 compiler; nvcc for CUDA)"
)


class BackendUnavailableError(RuntimeError):
    """A backend was named explicitly but cannot run here; the message says why and how to get it."""


@dataclass(frozen=True)
class BackendInfo:
    available: bool
    reason: str
    built: bool | None = None  # native backends: whether the extension module exists at all
    driver_problem: bool = False  # cuda: built, but the CUDA driver refused it (too old, missing, no device)

    def __str__(self) -> str:  # readable in `print(mpo_fast.backends())`
        return f"{'available' if self.available else 'unavailable'}: {self.reason}"


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_installed() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed: pip install triton (Linux, with a CUDA GPU)"
    return True, ""


def _info_reference() -> BackendInfo:
    return BackendInfo(True, f"pure torch {torch.__version__}")


@functools.lru_cache(maxsize=None)  # the extension and its device count do not change in a process
def _info_cpu() -> BackendInfo:
    ext = _native.cpu_ext
    if ext is None:
        return BackendInfo(False, f"mpo_fast._C is not built ({_native.cpu_ext_error}); {_REBUILD_HINT}", built=False)
    omp = "OpenMP" if ext.has_openmp else "no OpenMP (single-threaded ops)"
    return BackendInfo(True, f"C++ extension built ({omp}, {ext.hardware_threads} hardware threads)", built=True)


def _info_triton() -> BackendInfo:
    ok, why = _triton_installed()
    if not ok:
        return BackendInfo(False, why)
    if torch.cuda.is_available():
        return BackendInfo(True, f"Triton on {torch.cuda.get_device_name()}")
    if triton_interpreting():
        return BackendInfo(True, "Triton CPU interpreter (TRITON_INTERPRET=1): correct but slow, for tests")
    return BackendInfo(False, "no CUDA device: Triton kernels need a GPU (or TRITON_INTERPRET=1 to interpret them on CPU)")


@functools.lru_cache(maxsize=None)
def _info_cuda() -> BackendInfo:
    ext = _native.cuda_ext
    if ext is None:
        return BackendInfo(
            False,
            f"mpo_fast._cuda is not built ({_native.cuda_ext_error}); nvcc was missing at install time or "
            f"MPO_FAST_SKIP_CUDA was set: install the CUDA toolkit and {_REBUILD_HINT}",
            built=False,
        )
    count, err = ext.device_count()
    archs = ext.cuda_archs
    if count == 0:
        return BackendInfo(
            False,
            f"CUDA extension built (archs {archs}) but the CUDA driver reports no usable GPU: {err or 'no devices'}; "
            "if torch sees a GPU, the driver is older than the toolkit the extension was built with: update the "
            "driver or rebuild with the toolkit that matches it",
            built=True,
            driver_problem=True,
        )
    if not torch.cuda.is_available():
        return BackendInfo(False, f"CUDA extension built (archs {archs}) but this torch has no CUDA support: install a CUDA build of torch", built=True)
    return BackendInfo(True, f"CUDA extension built (archs {archs}), {count} device(s)", built=True)


_INFO = {"reference": _info_reference, "cpu": _info_cpu, "triton": _info_triton, "cuda": _info_cuda}


def backend_info(name: str) -> BackendInfo:
    if name not in _INFO:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS} or 'auto'")
    return _INFO[name]()


def backends() -> dict[str, BackendInfo]:
    """Every backend with whether it is available here and, if not, why."""
    return {name: backend_info(name) for name in BACKENDS}


_logged_fallbacks: set[tuple[str, str]] = set()
_warned_cuda_driver = False


def _warn_cuda_driver_once(reason: str) -> None:
    """`auto` on CUDA tensors skipping the built CUDA backend because of the driver is worth a warning
    (the run is slower than it should be and nothing else says so), once per process (issue 18)."""
    global _warned_cuda_driver
    if not _warned_cuda_driver:
        _warned_cuda_driver = True
        log.warning("mpo_fast: the CUDA backend is unavailable, `auto` uses Triton or the reference instead: %s", reason)


def _log_fallback_once(op: str, device_type: str, reason: str) -> None:
    key = (op, device_type)
    if key not in _logged_fallbacks:
        _logged_fallbacks.add(key)
        log.debug("mpo_fast.%s on %s tensors: using the reference backend (%s)", op, device_type, reason)


def _runs_on(name: str, device: torch.device) -> bool:
    if name == "reference":
        return True
    if name == "cpu":
        return device.type == "cpu"
    if name == "cuda":
        return device.type == "cuda"
    if name == "triton":
        return device.type == "cuda" or (device.type == "cpu" and triton_interpreting())
    return False


@torch.compiler.disable  # plain Python bookkeeping: never traced, never a source of recompiles
def resolve(op: str, requested: str | None, device: torch.device, supported: tuple[str, ...]) -> str:
    """The concrete backend `op` should run with for tensors on `device`.

    `supported` lists the backends this op implements (always including "reference").
    """
    device = torch.device(device)
    named = requested if requested not in (None, "auto") else None
    env = os.environ.get("MPO_FAST_BACKEND", "").strip().lower()
    if named is None and env and env != "auto":
        if env not in BACKENDS:
            raise ValueError(f"MPO_FAST_BACKEND={env!r} is not a backend; expected one of {BACKENDS} or 'auto'")
        if env in supported and _runs_on(env, device):
            named = env  # the environment's choice is honoured wherever this op and device allow it
    if named is not None:
        if named not in BACKENDS:
            raise ValueError(f"unknown backend {named!r} for mpo_fast.{op}; expected one of {BACKENDS} or 'auto'")
        if named not in supported:
            raise ValueError(f"mpo_fast.{op} has no {named!r} backend; it has {supported}")
        if not _runs_on(named, device):
            raise ValueError(
                f"backend {named!r} cannot run mpo_fast.{op} on {device.type} tensors; "
                f"move the tensors (.to('cuda') / .cpu()) or use backend='auto'"
            )
        info = backend_info(named)
        if not info.available:
            raise BackendUnavailableError(f"mpo_fast.{op}: backend {named!r} is unavailable: {info.reason}")
        return named
    order = ("cuda", "triton") if device.type == "cuda" else ("cpu",)
    reasons = []
    for name in order:
        if name not in supported:
            reasons.append(f"{name}: not implemented for this op")
            continue
        info = backend_info(name)
        if info.available and _runs_on(name, device):
            return name
        if name == "cuda" and info.driver_problem:
            _warn_cuda_driver_once(info.reason)
        reasons.append(f"{name}: {info.reason}")
    _log_fallback_once(op, device.type, "; ".join(reasons) or "no fast path for this device")
    return "reference"
