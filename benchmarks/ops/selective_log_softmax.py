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

from typing import Callable, Iterator

import torch

from benchmarks.common import BenchContext, Case, backend_providers, capped_timer, once, run_cases
from mpo_fast.ops.selective_log_softmax import selective_log_softmax

H100_BYTES_PER_S = 3.0e12


def _trl():
    """(TRL's selective_log_softmax, None) or (None, why it is unavailable)."""
    try:
        from trl.trainer.utils import selective_log_softmax as trl_sls
    except Exception as exc:  # noqa: BLE001 - TRL missing or failing to import for any reason: no peer
        return None, f"trl.trainer.utils.selective_log_softmax does not import: {type(exc).__name__}: {exc}"
    return trl_sls, None


def _torch_sls(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return logits.float().log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def _providers(device: str) -> tuple[dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]], dict[str, str]]:
    fns: dict[str, Callable] = {"torch_log_softmax_gather": _torch_sls}
    unavailable: dict[str, str] = {}
    trl_sls, why = _trl()
    if trl_sls is not None:
        fns["trl_selective_log_softmax"] = lambda x, ids: trl_sls(x, ids)
    else:
        unavailable["trl_selective_log_softmax"] = why
    fast, why_not = backend_providers(device)
    for b in fast:
        fns[f"mpo_{b}"] = (lambda x, ids, b=b: selective_log_softmax(x, ids, backend=b, check_ids=False))
    unavailable.update({f"mpo_{b}": why for b, why in why_not.items()})
    return fns, unavailable


def _shapes(ctx: BenchContext) -> list[tuple[int, int, torch.dtype]]:
    if ctx.device == "cuda":
        return [(2048, 151936, torch.bfloat16)] if ctx.quick else [
            (16384, 151936, torch.bfloat16), (4096, 151936, torch.bfloat16), (16384, 151936, torch.float32)]
    return [(256, 32000, torch.float32)] if ctx.quick else [(2048, 151936, torch.float32), (2048, 151936, torch.bfloat16)]


_timing = capped_timer(8.0)
PEERS = ("torch_log_softmax_gather", "trl_selective_log_softmax")


def cases(ctx: BenchContext) -> Iterator[Case]:
    fns, unavailable = _providers(ctx.device)
    for n, v, dtype in _shapes(ctx):
        yield from _cases(ctx, n, v, dtype, fns, unavailable)


def _cases(ctx: BenchContext, n: int, v: int, dtype: torch.dtype, fns: dict, unavailable: dict) -> Iterator[Case]:
    device = ctx.device
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(n, v, generator=g) * 3).to(dtype).to(device)
    ids = torch.randint(0, v, (n,), generator=g).to(device)
    shape = f"N={n},V={v},{str(dtype).removeprefix('torch.')}"
    nbytes = logits.numel() * logits.element_size()
    read_once = once(lambda: _timing(lambda: logits.sum(), ctx).median_ms)

    def floors(pass_):
        if device == "cuda":
            return {"fwd": nbytes / H100_BYTES_PER_S * 1e3, "fwd_bwd": 3 * nbytes / H100_BYTES_PER_S * 1e3}[pass_]
        return {"fwd": read_once(), "fwd_bwd": 3 * read_once()}[pass_]

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
        floor_ms = once(lambda pass_=pass_: floors(pass_))

        def extras(timings, peaks, pass_=pass_, floor_ms=floor_ms):
            torch_ms = timings["torch_log_softmax_gather"].median_ms
            trl_ms = timings["trl_selective_log_softmax"].median_ms if "trl_selective_log_softmax" in timings else None
            return {
                name: dict(
                    floor_ms=round(floor_ms(), 4),
                    ratio_to_floor=round(t.median_ms / floor_ms(), 3),
                    speedup_vs_torch=round(torch_ms / t.median_ms, 3),
                    speedup_vs_trl=round(trl_ms / t.median_ms, 3) if trl_ms else None,
                    measured_read_once_ms=round(read_once(), 4),
                    logits_bytes=nbytes,
                )
                for name, t in timings.items()
            }

        yield Case(shape, pass_, calls, peers=PEERS, floor_ms=floor_ms, extras=extras, unavailable=unavailable,
                   timer=_timing, info={"logits_bytes": nbytes})


def run(ctx: BenchContext) -> Iterator[dict]:
    return run_cases(ctx, cases(ctx), "selective_log_softmax")
