"""CPU threads per training stage.

Serial schedule: one stage computes at a time, so it gets every core (torch's default). Measured
on the idle 2-core machine (issue 15): a step of the e2e workload took ~32 s with 2 threads and
~44 s with 1, TRL ~18 s and ~30 s.
Overlapped schedule: rollout, judge and trainer compute at once, each issuing torch ops from its
own Python thread; with torch's default every one of them asks OpenMP for all cores, so 3 stages
on 2 cores run 6 spinning threads. Measured on this 2-core machine under load (pipeline
benchmark): SmolLM2-135M generating 4 x 64 tokens took 16 s with one thread and 251 s with two.
So each stage gets cores // 3 (at least 1) unless OMP_NUM_THREADS says otherwise.
"""
from __future__ import annotations

import contextlib
import os

COMPUTING_STAGES = 3  # rollout, judge, trainer (the meta-judge is rare and waits on the judge's model)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def stage_threads(mode: str, device: str | None, *, cores: int | None = None) -> int | None:
    """torch threads for a run of `mode` on `device`; None keeps torch's setting (the user's
    OMP_NUM_THREADS, a GPU run, or the serial schedule)."""
    if os.environ.get("OMP_NUM_THREADS") or (device is not None and not str(device).startswith("cpu")):
        return None
    if mode != "overlapped":
        return None
    return max(1, (cores or available_cores()) // COMPUTING_STAGES)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch.set_num_threads(n) for the block (n None: unchanged)."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
