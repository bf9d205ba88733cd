"""A profiler trace of the pipeline's stages, and how long they ran at the same time.

    with profile_stages("trace.json", device="cuda"):
        report = train_pipelined(trainer, settings)
    trace_overlap("trace.json")   # {"generate_s": ..., "update_s": ..., "overlap_s": ...}

Every stage marks its work with torch.profiler.record_function ranges (mpo.rollout.generate,
mpo.rollout.sync_weights, mpo.judge.advantages, mpo.trainer.update, mpo.trainer.publish_weights), on
its own thread. The trace (chrome://tracing or https://ui.perfetto.dev) shows them side by side; on
CUDA it also shows the kernels on the rollout stream, the trainer's default stream and the side
stream. `trace_overlap` measures, from the trace alone, the seconds during which a generate range and
an update range were open at once: zero for the serial schedule, most of the shorter stage's time at
max_staleness >= 1.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import torch

GENERATE = "mpo.rollout.generate"
UPDATE = "mpo.trainer.update"


@contextlib.contextmanager
def profile_stages(path: str | Path, *, device: str | torch.device | None = None) -> Iterator[object]:
    """torch.profiler over the block, every thread recorded, written to `path` (chrome trace JSON)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda" if device is not None else False
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:  # the stages run on their own threads; by default only the starting thread is recorded
        every_thread = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    except (AttributeError, TypeError):  # torch before 2.7: only the calling thread is recorded
        every_thread = None
    with profile(activities=activities, experimental_config=every_thread) as prof:
        yield prof
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))


def _spans(events: list[dict], name: str) -> list[tuple[float, float]]:
    return sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in events
                  if e.get("ph") == "X" and e.get("name") == name and "dur" in e)


def _union_length(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in spans:  # sorted by start
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def trace_overlap(path: str | Path) -> dict:
    """Seconds of generation, of updates, and of both at once, read from a chrome trace."""
    events = json.loads(Path(path).read_text())["traceEvents"]
    gen, upd = _spans(events, GENERATE), _spans(events, UPDATE)
    # |gen ∩ upd| = |gen| + |upd| - |gen ∪ upd| (each as a union of intervals: nested ranges count once)
    both = _union_length(gen) + _union_length(upd) - _union_length(sorted(gen + upd))
    threads = {e.get("tid") for e in events if e.get("ph") == "X" and e.get("name") in (GENERATE, UPDATE)}
    return {"generate_ranges": len(gen), "update_ranges": len(upd), "threads": len(threads),
            "generate_s": round(_union_length(gen) / 1e6, 6), "update_s": round(_union_length(upd) / 1e6, 6),
            "overlap_s": round(max(both, 0.0) / 1e6, 6)}
