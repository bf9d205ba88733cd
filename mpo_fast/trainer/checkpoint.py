"""Checkpoints that survive a crash at any instant and resume a run exactly.

Layout: <output_dir>/checkpoints/step-000012/
    model/              save_pretrained: the LoRA adapter, or the full model (safetensors)
    optimizer.pt        optimizer.state_dict()
    scheduler.pt        scheduler.state_dict()
    rng.pt              torch CPU (and CUDA) generator states
    trainer_state.json  step, data position, rubric version, counters, Python/NumPy RNG states,
                        the meta-judge's sample buffer: plain JSON, readable by a person

A checkpoint is written into a `.tmp-` directory, every file fsynced, then renamed into place
and the parent directory fsynced: a `step-*` directory exists only complete. Loading uses
torch.load(weights_only=True) and safetensors only: a checkpoint never runs code when read.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..rubrics.atomic_file import fsync_directory
from .logprobs import is_peft_model

STATE_FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the run being resumed."""


def checkpoints_dir(output_dir: str | os.PathLike[str]) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


# -- RNG --------------------------------------------------------------------------------------


def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON-able Python/NumPy states, tensors for torch.save)."""
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    json_state = {
        "python": [version, list(state), gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    return json_state, tensors


def restore_rng(json_state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, state, gauss = json_state["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = json_state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


# -- save -------------------------------------------------------------------------------------


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(Path(folder))


def commit_staging(staging: Path, final: Path, payload: dict[str, Any]) -> None:
    """Write trainer_state.json into the complete staging directory, make it durable and rename it
    to `final`: a step-* directory exists only complete (one process and the sharded FSDP2 save)."""
    (staging / "trainer_state.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    _fsync_tree(staging)
    if final.exists():  # a re-run of the same step (resumed from an earlier checkpoint)
        shutil.rmtree(final)
    os.rename(staging, final)
    fsync_directory(final.parent)


def prune_checkpoints(output_dir: str | os.PathLike[str], keep: int | None) -> None:
    """Delete all but the newest `keep` checkpoints (None keeps every one)."""
    if keep is not None:
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    output_dir: str | os.PathLike[str],
    step: int,
    *,
    model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: dict[str, Any],
    keep: int | None = None,
) -> Path:
    """Write the checkpoint of `step` atomically; prune to the newest `keep`. Returns its path."""
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}step-{step:06d}-", dir=root))
    try:
        # Adapter-only for LoRA (MBs), the full model otherwise; safetensors either way.
        model.save_pretrained(staging / "model", safe_serialization=True)
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        rng_json, rng_tensors = capture_rng()
        torch.save(rng_tensors, staging / "rng.pt")
        payload = {"format": STATE_FORMAT, "step": step, "peft": is_peft_model(model), "rng": rng_json, **state}
        commit_staging(staging, final, payload)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    prune_checkpoints(output_dir, keep)
    return final


def sweep_partial_checkpoints(output_dir: str | os.PathLike[str]) -> None:
    """Remove `.tmp-` leftovers of a save that crashed (only one trainer writes a run dir)."""
    root = checkpoints_dir(output_dir)
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(TMP_PREFIX):
                shutil.rmtree(child, ignore_errors=True)


# -- load -------------------------------------------------------------------------------------


def _load_safetensors_dir(folder: Path, stem: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return load_file(single)
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(load_file(folder / shard))
        return out
    raise CheckpointError(f"{folder} holds no {stem}.safetensors (or its index); the checkpoint is incomplete")


def _load_model_weights(model, folder: Path) -> None:
    if is_peft_model(model):
        from peft import set_peft_model_state_dict

        weights = _load_safetensors_dir(folder, "adapter_model")
        result = set_peft_model_state_dict(model, weights)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise CheckpointError(f"{folder}: adapter weights {unexpected[:5]} do not fit this model's LoRA config")
        return
    weights = _load_safetensors_dir(folder, "model")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise CheckpointError(f"{folder}: weights {unexpected[:5]} do not belong to {type(model).__name__}")
    # Tied weights (lm_head = embeddings) are saved once; a missing key is fine only if it shares
    # storage with a loaded parameter.
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {params[k].data_ptr() for k in weights if k in params}
    really_missing = [k for k in missing if k not in params or params[k].data_ptr() not in loaded]
    if really_missing:
        raise CheckpointError(f"{folder}: weights {really_missing[:5]} are missing; the checkpoint is from another model")


def load_checkpoint(path: Path, *, model, optimizer: torch.optim.Optimizer, scheduler,
                    world_size: int | None = 1) -> dict[str, Any]:
    """Restore model/adapter, optimizer, scheduler and RNG from `path`; return trainer_state.
    world_size: processes of the resuming run; it must be the one that wrote the checkpoint
    (per-rank RNG streams and data shares), checked before any weight is read. None: any (a
    torchrun run, which re-seeds its ranks when the world size changed: data_parallel.py)."""
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}/trainer_state.json is unreadable ({exc}); resume from an earlier checkpoint") from exc
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is checkpoint format {state.get('format')}, this mpo_fast reads {STATE_FORMAT}")
    needed = int(state.get("world_size", 1))
    if world_size is not None and needed != world_size:
        raise CheckpointError(
            f"{path} was written by a run of world size {needed}, this run has {world_size}: resume it with {needed} "
            f"process(es) ({'torchrun --nproc-per-node=' + str(needed) + ' ... ' if needed > 1 else 'no torchrun, '}"
            "resume=true), or start a new run in another output_dir"
        )
    if state.get("sharded"):
        raise CheckpointError(
            f"{path} holds sharded weights (train.distributed=fsdp2, torch.distributed.checkpoint); resume it under "
            "torchrun with train.distributed=fsdp2 (any world size), or start a new run in another output_dir"
        )
    if bool(state.get("peft")) != is_peft_model(model):
        kind = "a LoRA adapter" if state.get("peft") else "a full model"
        raise CheckpointError(
            f"{path} holds {kind}, but the run's model is {'LoRA' if is_peft_model(model) else 'fully fine-tuned'}; "
            "resume with the same lora settings the run started with"
        )
    _load_model_weights(model, path / "model")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    restore_rng(state["rng"], torch.load(path / "rng.pt", weights_only=True))
    return state
