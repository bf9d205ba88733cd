"""The process group of a torchrun job, and the collectives the data-parallel trainer uses.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` joins
(gloo on CPU, nccl on CUDA with one GPU per LOCAL_RANK) with a timeout on every collective
(train.dist_timeout_s), so a rank that dies or hangs stops the others within it. Every collective
here goes through `collective(...)`, which turns a dead peer or a timeout into DistributedError
naming what this rank was doing (the CLI's exit status 5). The trainer itself is in data_parallel.py.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

MODES = ("auto", "ddp", "fsdp2")


class DistributedError(RuntimeError):
    """Another rank failed, or the ranks disagree (rubric hash, checkpoint world size)."""


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def torchrun_world_size() -> int:
    """WORLD_SIZE as torchrun (or torch.multiprocessing launchers) set it; 1 when absent."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_distributed(timeout_s: float = 600.0, *, device: str = "auto") -> DistContext | None:
    """Join the process group torchrun described in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); None for a single process. Idempotent.

    device: where the model trains (model.device): nccl for CUDA ("auto" with a GPU present), gloo
    otherwise - a CPU run on a machine that has a GPU must not pick nccl, which reduces CUDA
    tensors only."""
    world = torchrun_world_size()
    if world <= 1:
        return None
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        on_gpu = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
        backend = "nccl" if on_gpu else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)  # before any CUDA allocation: one GPU per rank
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def current() -> DistContext | None:
    """The running process group as a DistContext; None when single-process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return None
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())), backend=dist.get_backend())


def is_main_process() -> bool:
    ctx = current()
    return ctx is None or ctx.is_main


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_mode(mode: str, *, lora: bool) -> str:
    """train.distributed -> the strategy used under torchrun. auto: ddp with LoRA (the adapters are
    MBs: replicating them costs nothing, and the frozen base is needed whole by every rank's
    generate anyway), fsdp2 for full fine-tuning (gradients and AdamW states, 12 of a replica's 16
    bytes per parameter, sharded over the ranks: trainer/fsdp.py)."""
    if mode not in MODES:
        raise ValueError(f"train.distributed is {mode!r}; use one of {list(MODES)}")
    if mode == "auto":
        return "ddp" if lora else "fsdp2"
    if mode == "fsdp2" and lora:
        raise ValueError(
            "train.distributed=fsdp2 with LoRA is not supported: the adapters are small enough to replicate and "
            "the sharded frozen base would be all-gathered for every generate anyway; use train.distributed=ddp (or auto)"
        )
    return mode


def shard_range(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of `rank`'s contiguous share of `count` prompts; count must divide evenly so
    every rank trains on the same number of groups."""
    if count % world_size:
        raise ValueError(
            f"rollout.prompts_per_step={count} (the global prompts per step) does not divide over {world_size} ranks; "
            f"use a multiple of {world_size}"
        )
    per = count // world_size
    return rank * per, (rank + 1) * per


# -- collectives (objects) ------------------------------------------------------------------------


@contextlib.contextmanager
def collective(what: str):
    """Name a failed collective: gloo reports a dead peer as a plain RuntimeError ("Connection
    closed by peer"), NCCL as DistBackendError, a hung one as a timeout; all become DistributedError
    (the CLI's exit status 5) saying what this rank was doing."""
    try:
        yield
    except RuntimeError as exc:
        if isinstance(exc, DistributedError):
            raise
        raise DistributedError(
            f"{what} failed on rank {dist.get_rank()}: another rank stopped or did not answer within "
            f"train.dist_timeout_s ({type(exc).__name__}: {str(exc)[:300]})"
        ) from exc



def all_gather(obj: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    with collective("gathering step data"):
        dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, src: int = 0) -> Any:
    box = [obj]
    with collective("a broadcast from rank 0"):
        dist.broadcast_object_list(box, src=src)
    return box[0]


def run_on_main(ctx: DistContext, fn: Callable[[], Any], what: str) -> Any:
    """fn() on rank 0, its result broadcast to every rank. If it raises on rank 0, every rank
    raises (rank 0 the original error) instead of the others waiting on a broadcast that never comes."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except BaseException as exc:  # re-raised below, after the others were told
            error = exc
    payload = broadcast((result, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    if payload[1] is not None:
        raise DistributedError(f"rank 0 failed while {what}: {payload[1]}")
    return payload[0]


def comm_device() -> torch.device:
    """Where small collective tensors live: NCCL reduces GPU tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=comm_device())
    with collective("summing step counts"):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(values: Sequence[float]) -> list[float]:
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=comm_device())
    with collective("agreeing on step sizes"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def broadcast_module(module: torch.nn.Module) -> None:
    """Every parameter and buffer from rank 0 (what DDP does at construction): random LoRA
    initialisations or a model loaded differently on one node cannot make the ranks diverge."""
    with torch.no_grad(), collective("broadcasting the initial weights"):
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def parameters_digest(params: Sequence[torch.Tensor]) -> str:
    """A hash of the parameters' bytes (tests compare it across ranks after every step)."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
