"""selective_log_softmax: mpo_fast's backends against plain torch and TRL, forward and forward+backward.

Providers (each where available, all in one run):
- torch_log_softmax_gather: `logits.float().log_softmax(-1).gather(...)`, what a user writes.
- trl_selective_log_softmax: trl.trainer.utils.selective_log_softmax (a Triton kernel on GPU in
  recent TRL; on CPU a Python loop of per-row logsumexp).
- mpo_cpu / mpo_cuda / mpo_triton: this op, return_entropy=False (the log-prob the loss needs).
Floor: the logits read once (forward) or read twice + the gradient written (forward+backward).
On CPU it is measured in the same run as `logits.sum()` (one streaming read); on GPU it is the
nominal N x V x bytes / 3.0 TB/s of an H100 (PERF_FLOORS.md) and the measured sum is reported too.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

import torch

import mpo_fast
from benchmarks.common import BenchContext, measurement, peak_memory_bytes, time_fn
from mpo_fast.ops.selective_log_softmax import selective_log_softmax

H100_BYTES_PER_S = 3.0e12


def _trl():
    try:
        from trl.trainer.utils import selective_log_softmax as trl_sls
    except Exception:  # noqa: BLE001 - TRL missing or failing to import for any reason: no peer
        return None
    return trl_sls


def _torch_sls(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return logits.float().log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def _providers(device: str) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    fns: dict[str, Callable] = {"torch_log_softmax_gather": _torch_sls}
    trl_sls = _trl()
    if trl_sls is not None:
        fns["trl_selective_log_softmax"] = lambda x, ids: trl_sls(x, ids)
    info = mpo_fast.backends()
    for b in ("cuda", "triton") if device == "cuda" else ("cpu",):
        if info[b].available:
            fns[f"mpo_{b}"] = (lambda x, ids, b=b: selective_log_softmax(x, ids, backend=b, check_ids=False))
    return fns


def _shapes(ctx: BenchContext) -> list[tuple[int, int, torch.dtype]]:
    if ctx.device == "cuda":
        return [(2048, 151936, torch.bfloat16)] if ctx.quick else [
            (16384, 151936, torch.bfloat16), (4096, 151936, torch.bfloat16), (16384, 151936, torch.float32)]
    return [(256, 32000, torch.float32)] if ctx.quick else [(2048, 151936, torch.float32), (2048, 151936, torch.bfloat16)]



def _timing(fn: Callable[[], object], ctx: BenchContext):
    """time_fn with the repeats cut to fit ~8 s per measurement on CPU, where one call of a slow peer
    (TRL's per-row loop, the materialised path) takes seconds; the first call doubles as warm-up."""
    if ctx.device == "cuda":
        return time_fn(fn, device="cuda", repeats=ctx.repeats, warmup=ctx.warmup)
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    repeats = max(1, min(ctx.repeats, int(8.0 / max(first, 1e-6))))
    return time_fn(fn, device="cpu", repeats=repeats, warmup=0)

def run(ctx: BenchContext) -> Iterator[dict]:
    device = ctx.device
    for n, v, dtype in _shapes(ctx):
        g = torch.Generator().manual_seed(0)
        logits = (torch.randn(n, v, generator=g) * 3).to(dtype).to(device)
        ids = torch.randint(0, v, (n,), generator=g).to(device)
        shape = f"N={n},V={v},{str(dtype).removeprefix('torch.')}"
        nbytes = logits.numel() * logits.element_size()
        read_once = _timing(lambda: logits.sum(), ctx).median_ms
        floors = {"fwd": read_once, "fwd_bwd": 3 * read_once}
        if device == "cuda":
            floors = {"fwd": nbytes / H100_BYTES_PER_S * 1e3, "fwd_bwd": 3 * nbytes / H100_BYTES_PER_S * 1e3}
        fns = _providers(device)
        grad_out = torch.randn(n, generator=g).to(device)

        def fwd(fn):
            return lambda: fn(logits, ids)

        def fwd_bwd(fn):
            def step():
                x = logits.detach().requires_grad_()
                out = fn(x, ids)
                (grad,) = torch.autograd.grad(out, x, grad_out.to(out.dtype))
                return grad
            return step

        for pass_, wrap in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
            calls = {name: wrap(fn) for name, fn in fns.items()}
            timings = {name: _timing(c, ctx) for name, c in calls.items()}
            torch_ms = timings["torch_log_softmax_gather"].median_ms
            trl_ms = timings["trl_selective_log_softmax"].median_ms if "trl_selective_log_softmax" in timings else None
            for name, t in timings.items():
                yield measurement(
                    name, shape, pass_, t, peak_memory_bytes(calls[name], device=device),
                    floor_ms=round(floors[pass_], 4),
                    ratio_to_floor=round(t.median_ms / floors[pass_], 3),
                    speedup_vs_torch=round(torch_ms / t.median_ms, 3),
                    speedup_vs_trl=round(trl_ms / t.median_ms, 3) if trl_ms else None,
                    measured_read_once_ms=round(read_once, 4),
                    logits_bytes=nbytes,
                )
        del logits
