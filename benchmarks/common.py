"""Timing, peak memory and record stamping shared by every benchmark module.

Timing: warm-up calls, then `repeats` timed calls; CUDA is timed with events around each call
(synchronised), CPU with perf_counter. Reported: median, 20th and 80th percentiles in ms.

Peak memory (extra bytes a call allocates above what was live before it):
- CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats (the caching allocator's
  own high-water mark).
- CPU: the process's resident-set high-water mark. We reset it by writing "5" to
  /proc/self/clear_refs (Linux), run the call, and read VmHWM - VmRSS-before from /proc/self/status.
  This counts every allocation (torch's allocator, malloc inside native code, temporaries),
  not only torch tensors, so it is honest for C++ paths too. Large buffers come from mmap and go
  back to the OS when freed, so the baseline is stable. None where /proc is unavailable.
  glibc would otherwise raise its mmap threshold after the first large free and keep later
  buffers in the heap, hiding them from RSS: `pin_malloc_thresholds()` fixes the threshold at
  128 KiB (mallopt) before anything is measured.
"""
from __future__ import annotations

import functools
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent


def pin_malloc_thresholds() -> bool:
    """Every allocation over 128 KiB is mmap'd and unmapped on free (glibc only), so RSS is honest."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 128 * 1024)) and bool(libc.mallopt(m_trim_threshold, 128 * 1024))
    except (OSError, AttributeError):
        return False


pin_malloc_thresholds()


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    repeats: int


@dataclass(frozen=True)
class BenchContext:
    quick: bool
    device: str
    repeats: int
    warmup: int


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _percentile(sorted_vals: list[float], q: float) -> float:
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = q * (len(sorted_vals) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def time_fn(fn: Callable[[], object], *, device: str = "cpu", repeats: int = 20, warmup: int = 3) -> Timing:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    if device.startswith("cuda"):
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return Timing(statistics.median(times), _percentile(times, 0.2), _percentile(times, 0.8), repeats)


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_bytes(fn: Callable[[], object], *, device: str = "cpu") -> int | None:
    """Extra bytes at the peak of one call of `fn` (see the module docstring for how)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    base = _proc_status_kb("VmRSS")
    result = fn()
    peak = _proc_status_kb("VmHWM")
    del result
    if base is None or peak is None:
        return None
    return max(0, (peak - base) * 1024)


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=None)
def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def measurement(provider: str, shape: str, pass_: str, timing: Timing | None, peak: int | None, **extra) -> dict:
    """A record in the common schema (op, device, device_name and commit are stamped by run.py)."""
    rec = {
        "provider": provider,
        "shape": shape,
        "pass": pass_,
        "median_ms": round(timing.median_ms, 6) if timing else None,
        "p20_ms": round(timing.p20_ms, 6) if timing else None,
        "p80_ms": round(timing.p80_ms, 6) if timing else None,
        "peak_mem_bytes": peak,
    }
    rec.update(extra)
    return rec
