"""One pytest-benchmark measurement per op x shape x pass x provider (see benchmarks/conftest.py).

Rounds: the first call is an untimed warm-up that also sizes the run: as many rounds as fit in
--benchmark-max-time (pytest-benchmark's option, default 1 s), at least 1 and at most 10,000. A
10 us kernel thus gets thousands of rounds (its median is stable on a shared machine, where 5
rounds of benchmarks.run --quick swing by 2x), and a slow peer (TRL's per-row loop: seconds a call
on CPU) one, so a quick pass stays within minutes.
"""
from __future__ import annotations

import math
import time

import pytest
import torch

from benchmarks import common

pytestmark = pytest.mark.bench


def _synced(fn, device: str):
    if not device.startswith("cuda"):
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize()
        return out

    return call


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def test_provider(benchmark, request, bench_param, bench_case: common.Case, bench_ctx: common.BenchContext):
    op, provider, case = bench_param.op, bench_param.provider, bench_case
    fn = _synced(common.provider_call(op, provider, case.calls[provider]), bench_ctx.device)
    benchmark.group = f"{op} | {case.shape} | {case.pass_}"

    budget_s = float(request.config.getoption("benchmark_max_time"))
    call_s = _seconds(fn)  # warm-up: compilation, first-touch allocations, thread-pool start
    if call_s < budget_s / 10:  # cheap enough to size the run on a warm call instead
        call_s = min(call_s, _seconds(fn))
    rounds = max(1, min(10_000, int(budget_s / max(call_s, 1e-9))))
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=max(0, bench_ctx.warmup - 1), iterations=1)

    floor_ms = case.floor_ms() if case.floor_ms else None
    median_ms = benchmark.stats.stats.median * 1e3 if benchmark.stats else None
    benchmark.extra_info.update(
        op=op, provider=provider, shape=case.shape, **{"pass": case.pass_},
        role=case.role(provider),
        baselines=case.baselines,
        floor_ms=floor_ms,
        ratio_to_floor=round(median_ms / floor_ms, 4) if floor_ms and median_ms else None,
        peak_mem_bytes=common.peak_memory_bytes(fn, device=bench_ctx.device) if case.measure_peak else None,
        device=bench_ctx.device, device_name=common.device_name(bench_ctx.device), commit=common.git_commit(),
        quick=bench_ctx.quick, **case.info,
    )
    if median_ms is not None:
        assert math.isfinite(median_ms) and median_ms > 0, f"{op}/{provider}: median {median_ms} ms"
