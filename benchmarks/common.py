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
from dataclasses import dataclass, field
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


def make_context(quick: bool, device: str | None = None, repeats: int | None = None) -> BenchContext:
    """The one source of run defaults for both front ends: cuda when available, 5 timed repeats and 1
    warm-up call in quick mode, 20 and 3 otherwise."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch sees no CUDA device; use cpu")
    return BenchContext(quick=quick, device=device, repeats=repeats or (5 if quick else 20), warmup=1 if quick else 3)


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


# ---- the provider table: what both front ends (benchmarks.run and pytest-benchmark) time ------------
@dataclass
class Case:
    """One op x shape x pass: every provider's zero-argument call over the same inputs.

    Op modules yield these from `cases(ctx)`; `run_cases` (python -m benchmarks.run) and
    benchmarks/test_providers.py (pytest benchmarks/ --benchmark-only) both time exactly these calls,
    so there is one provider table per op. Ratios are taken between providers of one Case, which
    were measured in the same run on the same inputs:
    - `reference`: our own oracle; every other provider of ours is compared to it.
    - `peers`: what users run without mpo_fast (TRL, Liger, plain torch, Python `re`); ours are
      compared to each of them, peers are never judged against ours (a slower TRL is no regression).
    - `floor_ms`: lazy (measured once per shape, only when something is timed, so that pytest can
      list the cases without measuring anything).
    - `extras(timings, peaks)`: the op's own per-provider fields for the JSON lines (speedups under
      the names BENCHMARKS.md uses, bandwidths, byte counts).
    - `unavailable`: provider -> why it is not measured here (import error, no GPU); reported by
      both front ends, never dropped silently.
    """

    shape: str
    pass_: str
    calls: dict[str, Callable[[], object]]
    reference: str | None = None
    peers: tuple[str, ...] = ()
    floor_ms: Callable[[], float | None] | None = None
    extras: Callable[[dict[str, "Timing"], dict[str, int | None]], dict[str, dict]] | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    timer: Callable[[Callable[[], object], "BenchContext"], "Timing"] | None = None
    measure_peak: bool = True
    info: dict = field(default_factory=dict)  # static facts about the case (bytes, threads) for extra_info

    @property
    def baselines(self) -> list[str]:
        return [b for b in ([self.reference] if self.reference else []) + list(self.peers) if b in self.calls]

    def role(self, provider: str) -> str:
        """reference | peer | ours: what benchmarks.compare takes ratios against (reference, peers)."""
        return "reference" if provider == self.reference else "peer" if provider in self.peers else "ours"

    def key(self) -> tuple[str, str]:
        return (self.shape, self.pass_)


def once(fn: Callable[[], object]) -> Callable[[], object]:
    """A zero-argument function evaluated at most once (lazy floors shared by a shape's passes)."""
    return functools.cache(fn)


def default_timer(fn: Callable[[], object], ctx: "BenchContext") -> "Timing":
    return time_fn(fn, device=ctx.device, repeats=ctx.repeats, warmup=ctx.warmup)


DELAY_ENV = "MPO_FAST_BENCH_DELAY_MS"


def _delays() -> dict[tuple[str, str], float]:
    """MPO_FAST_BENCH_DELAY_MS="op:provider=ms,..." adds a sleep to those providers' calls in both
    front ends: a deliberate, reproducible slowdown to check that benchmarks.compare flags it."""
    out = {}
    for item in filter(None, (s.strip() for s in os.environ.get(DELAY_ENV, "").split(","))):
        try:
            target, ms = item.split("=")
            op, provider = target.split(":")
            out[(op.strip(), provider.strip())] = float(ms)
        except ValueError:
            raise ValueError(f"{DELAY_ENV}={os.environ[DELAY_ENV]!r}: expected 'op:provider=ms[,...]'") from None
    return out


def provider_call(op: str, provider: str, fn: Callable[[], object]) -> Callable[[], object]:
    """The call both front ends time: `fn`, slowed when DELAY_ENV names it."""
    delay = _delays().get((op, provider))
    if not delay:
        return fn

    def slowed():
        time.sleep(delay / 1e3)
        return fn()

    slowed.__wrapped__ = fn
    return slowed


def report_unavailable(op: str, case: Case, stream=None) -> None:
    import sys

    for provider, why in case.unavailable.items():
        print(f"{op}: provider {provider} unavailable ({case.shape}, {case.pass_}): {why}", file=stream or sys.stderr, flush=True)


def run_cases(ctx: "BenchContext", cases, op: str):
    """python -m benchmarks.run's driver: time every provider of every case, then yield records."""
    seen_unavailable: set[str] = set()
    for case in cases:
        fresh = {k: v for k, v in case.unavailable.items() if k not in seen_unavailable}
        if fresh:
            report_unavailable(op, Case(case.shape, case.pass_, {}, unavailable=fresh))
            seen_unavailable |= fresh.keys()
        # A provider that cannot run here is a record too (no timing, its reason), so the JSON
        # lines say "TRL: unavailable: <import error>" instead of silently lacking a TRL column.
        for name, why in case.unavailable.items():
            yield measurement(name, case.shape, case.pass_, None, None, unavailable=why, role=case.role(name))
        timer = case.timer or default_timer
        calls = {name: provider_call(op, name, fn) for name, fn in case.calls.items()}
        timings = {name: timer(fn, ctx) for name, fn in calls.items()}
        peaks = {name: peak_memory_bytes(fn, device=ctx.device) if case.measure_peak else None for name, fn in calls.items()}
        extras = case.extras(timings, peaks) if case.extras else {}
        for name, t in timings.items():
            yield measurement(name, case.shape, case.pass_, t, peaks[name], **extras.get(name, {}), role=case.role(name))


def capped_timer(budget_s: float = 8.0):
    """time_fn with the repeats cut to fit ~budget_s per measurement on CPU, where one call of a slow
    peer (TRL's per-row loop, a materialised path) takes seconds; the first call doubles as warm-up."""

    def timer(fn: Callable[[], object], ctx: "BenchContext") -> "Timing":
        if ctx.device == "cuda":
            return time_fn(fn, device="cuda", repeats=ctx.repeats, warmup=ctx.warmup)
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        repeats = max(1, min(ctx.repeats, int(budget_s / max(first, 1e-6))))
        return time_fn(fn, device="cpu", repeats=repeats, warmup=0)

    return timer


def backend_providers(device: str, gpu: tuple[str, ...] = ("cuda", "triton"), cpu: tuple[str, ...] = ("cpu",)):
    """(mpo_fast backends to time on `device`, {backend: why not}). On a CPU run the GPU backends are
    reported unavailable with mpo_fast's reason (the Triton interpreter is a correctness tool, not a
    benchmark, so TRITON_INTERPRET=1 does not make Triton a CPU provider)."""
    from mpo_fast._backend import backends

    info = backends()
    if device.startswith("cuda"):
        return [b for b in gpu if info[b].available], {b: info[b].reason for b in gpu if not info[b].available}
    why = {b: f"GPU backend, not timed on a CPU run ({info[b].reason})" for b in gpu}
    return [b for b in cpu if info[b].available], {**why, **{b: info[b].reason for b in cpu if not info[b].available}}
