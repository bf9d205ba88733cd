"""FSDP2 (`train.distributed=fsdp2`, and `auto` for full fine-tuning under torchrun): the policy's
parameters, gradients and optimizer states sharded over the ranks with
`torch.distributed.fsdp.fully_shard`, one unit per decoder layer plus the root (embeddings,
final norm, LM head).

Memory per rank for P parameters, N ranks, fp32 master weights and AdamW:
    ddp:   4P (weights) + 4P (grads) + 8P (Adam)       = 16P   (7B: 112 GB: does not fit an 80 GB GPU)
    fsdp2: 16P / N + one layer unsharded (bf16) at a time (7B on 8 GPUs: 14 GB + ~0.4 GB)
Measured (2 gloo ranks, the tiny Llama at hidden 256, P = 1.23 M, fp32, tensor bytes per rank after
one AdamW step): shards 2.0P + gradients 2.0P + AdamW states 4.0P = 8P = 16P/2; inside `unsharded`
(the rollout) 4.0P more, the whole fp32 model (bf16 under the GPU policy: 2P).
What it costs, and what this module does about it:

- Every forward and backward of a sharded unit all-gathers its parameters: a collective, so every
  rank must run the same number of them. The update pads each rank to the same number of
  micro-batches (weight-0 copies give exact zero gradients); kl_in=reward's pass runs on every
  rank's full, equally sized batch.
- Generation is free-running (each rank's sequences end at different lengths), so it cannot
  all-gather per forward. `unsharded(model)` all-gathers every unit once before the rollout and
  keeps them (reshard_after_forward=False) until it ends. Honest memory: during the rollout each
  rank holds the whole model in param_dtype (bf16 on GPU: 2P; 7B: 14 GB, 70B: 140 GB - more than
  one GPU) on top of its shards, as DDP does. FSDP2 thus saves the gradient and optimizer memory
  (12P of the 16P above), not the rollout's weights; a model whose bf16 weights do not fit one
  GPU must generate elsewhere (rollout.backend=remote: no unshard, nothing gathered).
- The fused log-prob path runs the backbone and then reads the LM head's weight itself, outside
  the root module's forward: FSDP2's hooks would not see it, the weight would still be a sharded
  DTensor and its gradient would skip the reduce-scatter. It runs instead as a method registered
  with `register_fsdp_forward_method`, so the root unit's parameters (LM head included) are
  all-gathered for it and reduce-scattered after its backward, exactly as for `forward`: the
  [tokens, vocab] logits still never exist. The logits path needs nothing (it calls `forward`).
- FSDP2 reduce-scatters the *mean* of the ranks' gradients by default. Each rank's loss is
  already weighted by its share of the *global* token count (data_parallel.DataParallelUpdater),
  so the divide factor is set to 1 (a sum): N ranks x B rows give one process's update on N*B.
- Checkpoints: every rank writes its shards with `torch.distributed.checkpoint` (DCP) into the
  step's directory (output_dir must be on a file system every node sees, as DCP needs), rank 0
  the scheduler and trainer_state.json, then renames the directory into place. DCP reshards on
  load, so a run may resume on another number of ranks (the per-rank sampling RNG streams are
  then re-seeded: see data_parallel.py). Convert to a single file with
  `python -m torch.distributed.checkpoint.format_utils dcp_to_torch step-N/dcp model.pt` (its
  "model" entry is the transformers state dict).

On GPU the units compute in bf16 (`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`)
over fp32 shards when the model was loaded in fp32 (model.dtype=float32, the usual FSDP2 recipe).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from ..ops.fused_linear_logprob import fused_linear_logprob
from . import checkpoint as ckpt
from .data_parallel import DataParallelUpdater
from .distributed import DistContext, all_reduce_max, collective, run_on_main
from .logprobs import PolicyLogprobs, causal_lm_of

FUSED_METHOD = "mpo_fused_completion_logprobs"
SHARDED_FORMAT = "fsdp2-dcp"


def _fsdp_api():
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    return FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method


def fsdp_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
    FSDPModule = _fsdp_api()[0]
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def is_sharded(module: torch.nn.Module) -> bool:
    return bool(fsdp_modules(causal_lm_of(module)))


def decoder_layers(lm: torch.nn.Module) -> list[torch.nn.Module]:
    """The shard units: the blocks the model itself names as not to be split across devices
    (transformers' `_no_split_modules`: LlamaDecoderLayer, Qwen2DecoderLayer, ...)."""
    names = set(getattr(lm, "_no_split_modules", None) or ())
    layers = [m for m in lm.modules() if type(m).__name__ in names and m is not lm]
    if not layers:
        raise ValueError(
            f"train.distributed=fsdp2 found no decoder layers in {type(lm).__name__} (its _no_split_modules is "
            f"{sorted(names) or 'empty'}); use train.distributed=ddp for this model"
        )
    return layers


def _fused_completion_logprobs(lm, *, input_ids, attention_mask, rows, cols, ids, temperature: float,
                               entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PolicyLogprobs' fused path, as a method of the root unit (see the module docstring): the
    backbone's hidden states at the completion positions against the (all-gathered) LM head.
    (logp [N], entropy [N] detached or None): a plain tuple, so FSDP's post-forward sees the tensors."""
    backbone = getattr(lm, lm.base_model_prefix)
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    head = lm.get_output_embeddings()
    flat = fused_linear_logprob(hidden[rows, cols], head.weight, ids, bias=head.bias, temperature=temperature,
                                return_entropy=entropy, entropy_grad=False)
    return (flat.logp, flat.entropy.detach()) if entropy else (flat, None)


def shard_model(model: torch.nn.Module, ctx: DistContext) -> None:
    """fully_shard every decoder layer, then the root; in place. Call it after the ranks hold the
    same weights (broadcast_module) and before the optimizer is built (fully_shard replaces the
    parameters with DTensors)."""
    FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method = _fsdp_api()
    from torch.distributed.device_mesh import init_device_mesh

    lm = causal_lm_of(model)
    device = next(lm.parameters()).device
    mesh = init_device_mesh(device.type, (ctx.world_size,))
    kwargs: dict[str, Any] = {"mesh": mesh}
    if device.type == "cuda":
        # bf16 compute and all-gathers over the stored shards; gradients reduced in fp32.
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in decoder_layers(lm):
        fully_shard(layer, **kwargs)
    fully_shard(lm, **kwargs)
    for unit in fsdp_modules(lm):
        unit.set_gradient_divide_factor(1.0)  # a sum: the loss weights are already global shares
        if ctx.backend == "gloo":
            unit.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM (what factor 1 asks of NCCL)
    setattr(lm, FUSED_METHOD, lambda **kw: _fused_completion_logprobs(lm, **kw))
    register_fsdp_forward_method(lm, FUSED_METHOD)


@contextlib.contextmanager
def unsharded(model: torch.nn.Module) -> Iterator[None]:
    """Every unit all-gathered once and kept so (no collective per forward) for a free-running
    generate on each rank; resharded after. Every rank must enter it (the all-gathers)."""
    lm = causal_lm_of(model)
    units = fsdp_modules(lm)
    with collective("all-gathering the parameters for generation"):
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            # fully_shard's defaults: layers reshard after forward, the root (used by backward
            # right away) does not.
            unit.set_reshard_after_forward(unit is not lm, recurse=False)
            unit.reshard()


def full_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """name -> full tensor on every rank (all-gathers each sharded parameter): for tests and digests."""
    out = {}
    for name, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = full.detach().cpu().clone()
    return out


# -- the pieces the data-parallel trainer swaps in --------------------------------------------------


class ShardedPolicyLogprobs(PolicyLogprobs):
    """PolicyLogprobs whose fused log-prob path goes through the root unit's registered forward
    method. fused_linear_policy_loss stays off: `trainable_plain_head` is False for the LM head's
    DTensor weight, so policy_loss takes this path and then the loss op."""

    def _forward(self, model, batch, *, entropy: bool = False, value_head=None):
        lm = causal_lm_of(model)
        if self.impl != "fused" or value_head is not None or not hasattr(lm, FUSED_METHOD):
            return super()._forward(model, batch, entropy=entropy, value_head=value_head)
        ids = batch.completion_ids[batch.rows, batch.slots]
        logp, ent = getattr(lm, FUSED_METHOD)(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                              rows=batch.rows, cols=batch.cols, ids=ids, temperature=self.temperature,
                                              entropy=entropy)
        return self._scatter(batch, logp), (self._scatter(batch, ent) if entropy else None), None


class UnshardedRollout:
    """An in-process rollout (HF generate) on the sharded policy: generates inside `unsharded`."""

    def __init__(self, rollout, model) -> None:
        self.rollout = rollout
        self.model = model

    def generate(self, *args, **kwargs):
        with unsharded(self.model):
            return self.rollout.generate(*args, **kwargs)

    def sync_weights(self, model, version: int) -> None:
        self.rollout.sync_weights(model, version)

    def close(self) -> None:
        self.rollout.close()

    def __getattr__(self, name):
        return getattr(self.rollout, name)


class ShardedUpdater(DataParallelUpdater):
    """DataParallelUpdater for sharded parameters: the same global-share loss weights; every rank
    runs as many micro-batches as the busiest one; the gradient sum is FSDP2's reduce-scatter in
    each backward (divide factor 1), so there is nothing left to all-reduce."""

    def _micro_batches(self, batch):
        return equal_micro_batches(*super()._micro_batches(batch))

    def _sync_gradients(self) -> None:
        pass


def equal_micro_batches(micros: list, weights: list[float]) -> tuple[list, list[float]]:
    """Pad to the most micro-batches any rank has, with weight-0 copies of the first (their
    gradients are exact zeros): every rank then runs the same forwards and backwards, which
    FSDP2's all-gathers and reduce-scatters need."""
    most = int(all_reduce_max([len(micros)])[0])
    if most > len(micros):
        import dataclasses

        pad = dataclasses.replace(micros[0], behaviour_logp=None)  # out of the behaviour-gap metric
        micros = micros + [pad] * (most - len(micros))
        weights = list(weights) + [0.0] * (most - len(weights))
    return micros, weights


# -- checkpoints (DCP) ------------------------------------------------------------------------------


def _dcp():
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    return dcp, get_state_dict, set_state_dict


def save_sharded_checkpoint(ctx: DistContext, output_dir: Path, step: int, *, model, optimizer, scheduler,
                            state: dict[str, Any], keep: int | None) -> Path:
    """Every rank writes its shards (DCP) into a staging directory rank 0 made; rank 0 adds the
    scheduler and trainer_state.json and renames it into place (a step-* directory exists only
    complete, as for one process). Returns the checkpoint's path on every rank."""
    dcp, get_state_dict, _ = _dcp()
    root = ckpt.checkpoints_dir(output_dir)

    def make_staging() -> str:
        root.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix=f"{ckpt.TMP_PREFIX}step-{step:06d}-", dir=root)

    staging = Path(run_on_main(ctx, make_staging, f"creating the checkpoint directory of step {step}"))
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with collective(f"writing the sharded checkpoint of step {step}"):
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(staging / "dcp"))

    def finish() -> str:
        final = root / f"step-{step:06d}"
        try:
            torch.save(scheduler.state_dict(), staging / "scheduler.pt")
            rng_json, rng_tensors = ckpt.capture_rng()
            torch.save(rng_tensors, staging / "rng.pt")
            payload = {"format": ckpt.STATE_FORMAT, "step": step, "peft": False, "rng": rng_json,
                       "sharded": SHARDED_FORMAT, **state}
            ckpt.commit_staging(staging, final, payload)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        ckpt.prune_checkpoints(output_dir, keep)
        return str(final)

    return Path(run_on_main(ctx, finish, f"finishing the checkpoint of step {step}"))


def read_sharded_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ckpt.CheckpointError(f"{path}/trainer_state.json is unreadable ({exc}); resume from an earlier checkpoint") from exc
    if state.get("format") != ckpt.STATE_FORMAT:
        raise ckpt.CheckpointError(f"{path} is checkpoint format {state.get('format')}, this mpo_fast reads {ckpt.STATE_FORMAT}")
    if state.get("sharded") != SHARDED_FORMAT:
        raise ckpt.CheckpointError(
            f"{path} was written by a train.distributed=ddp (or single-process) run; resume it with "
            "train.distributed=ddp, or start a new run in another output_dir"
        )
    return state


def load_sharded_checkpoint(path: Path, *, model, optimizer, scheduler) -> dict[str, Any]:
    """Weights and optimizer states from the DCP shards (resharded to this run's world size),
    the scheduler; returns trainer_state (RNG streams are the caller's: they depend on the ranks)."""
    dcp, get_state_dict, set_state_dict = _dcp()
    state = read_sharded_state(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with collective(f"reading the sharded checkpoint {path.name}"):
        dcp.load({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path / "dcp"))
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    return state
