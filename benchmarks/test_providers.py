"""One pytest-benchmark measurement per op x shape x pass x provider (see benchmarks/conftest.py).

Rounds: one untimed warm-up call (compilation, first-touch allocations, thread-pool start), then
pytest-benchmark's own calibration, so its options hold: rounds until --benchmark-max-time (default
1 s) is spent, at least --benchmark-min-rounds (default 5). A 10 us kernel thus gets thousands of
rounds (a stable median on a shared machine), a slow peer (TRL's per-row loop on CPU) five; the CI
smoke pass uses --benchmark-max-time=0.05 --benchmark-min-rounds=1.
"""
from __future__ import annotations

import math

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


def test_provider(benchmark, bench_param, bench_case: common.Case, bench_ctx: common.BenchContext):
    op, provider, case = bench_param.op, bench_param.provider, bench_case
    fn = _synced(common.provider_call(op, provider, case.calls[provider]), bench_ctx.device)
    benchmark.group = f"{op} | {case.shape} | {case.pass_}"

    fn()  # warm-up
    benchmark(fn)

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
