"""Run a function on N local processes joined in a gloo process group, with a hard deadline.

Every worker gets the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and
joins through mpo_fast's own init_distributed, so the code under test is the code torchrun runs.
A worker that is still alive at the deadline is killed and the test fails: a hang never blocks.
"""
from __future__ import annotations

import os
import pickle
import socket
import time
import traceback
from pathlib import Path

import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank: int, world: int, port: int, out: str, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1", TRITON_INTERPRET="1")
    import torch

    torch.set_num_threads(1)
    from mpo_fast.trainer.distributed import init_distributed, shutdown

    path = Path(out) / f"rank{rank}.pkl"
    try:
        if world > 1:
            init_distributed(COLLECTIVE_TIMEOUT_S, device="cpu")  # the tiny models train on CPU, GPU or not
        result = fn(rank, world, *args)
        path.write_bytes(pickle.dumps(("ok", result)))
    except BaseException as exc:  # reported to the test through the file and the exit code
        path.write_bytes(pickle.dumps(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")))
        raise SystemExit(1)
    finally:
        shutdown()


def run_ranks(fn, world: int, out: Path, *args, timeout_s: float = 240.0) -> list[tuple[str, object, int]]:
    """[(status, result-or-traceback, exitcode)] per rank; raises AssertionError on a hang."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, str(out), args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(10)
    assert not hung, f"ranks {hung} still running after {timeout_s} s (a hang)"
    results = []
    for r, p in enumerate(procs):
        file = out / f"rank{r}.pkl"
        status, value = pickle.loads(file.read_bytes()) if file.exists() else ("missing", None)
        results.append((status, value, p.exitcode))
    return results


def all_ok(results) -> list:
    bad = [(r, v) for r, (status, v, _) in enumerate(results) if status != "ok"]
    assert not bad, "\n".join(f"rank {r}: {v}" for r, v in bad)
    return [v for _, v, _ in results]
