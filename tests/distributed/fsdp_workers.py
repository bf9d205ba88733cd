"""What each rank runs in the FSDP2 tests (importable: spawned workers import it)."""
from __future__ import annotations

from pathlib import Path

from tests.distributed.workers import _record_steps, failing, make_trainer, scripted_meta_judge


def full_weights(trainer):
    from mpo_fast.trainer.fsdp import full_parameters

    return full_parameters(trainer.model)  # all-gathered when sharded


def sharded_steps_stay_identical(rank, world, tmp, cfg):
    """train() with HF generate on the sharded policy; after every step a digest of every full
    parameter (all-gathered) and of this rank's own shards, and the rubric hash, from each rank."""
    from mpo_fast.trainer.distributed import all_gather, parameters_digest
    from mpo_fast.trainer.fsdp import ShardedPolicyLogprobs

    from mpo_fast.trainer.fsdp import is_sharded

    trainer = make_trainer(Path(tmp), scripted=False, world=world, meta_judge=scripted_meta_judge(), **cfg)
    assert is_sharded(trainer.model)
    assert isinstance(trainer.logprobs, ShardedPolicyLogprobs) and trainer.logprobs.impl == "fused"
    digests, shards, hashes = [], [], []

    def record(n):
        full = full_weights(trainer)
        digests.append(all_gather(parameters_digest(list(full.values()))))
        shards.append((all_gather([tuple(p.to_local().shape) for p in trainer.model.parameters()]),
                       [tuple(p.shape) for p in trainer.model.parameters()]))
        hashes.append(all_gather((trainer.rubric_version.version, trainer.rubric_version.hash)))

    _record_steps(trainer, record)
    trainer.train()
    trainer.close()
    return {"digests": digests, "shards": shards, "rubrics": hashes}


def train_and_report(rank, world, tmp, cfg, scripted=True, crash_rank=None, crash_on_call=None, fail=None,
                     weights_at_start=False):
    """train(); the full weights at the end (and, weights_at_start, before the first step the run
    takes: after a resume, the checkpoint's), the rubric, the log-prob path, whether it sharded."""
    from mpo_fast.trainer.fsdp import is_sharded
    from tests.trainer.fakes import AppendingMetaJudge, SyntheticJudge

    rm = SyntheticJudge(crash_on_call=crash_on_call if rank == crash_rank else None,
                        fail_when=failing(fail) if fail is not None else None)
    trainer = make_trainer(Path(tmp), scripted=scripted, world=world, rm=rm, meta_judge=AppendingMetaJudge(), **cfg)
    start = {}
    if weights_at_start:  # the weights the run continues from (after a resume), before its first step
        step = trainer.train_step

        def first(n):
            if not start:
                start.update(full_weights(trainer))
            return step(n)

        trainer.train_step = first
    result = trainer.train()
    trainer.close()
    return {"weights": full_weights(trainer), "steps": result.steps, "rubric": trainer.rubric_version.hash,
            "start": start, "impl": trainer.logprobs.impl, "sharded": is_sharded(trainer.model)}


def single_rank_sharded_pass(rank, world, device):
    """One process, a world-size-1 group (gloo on CPU, nccl on CUDA): the sharded policy's fused
    log-probs and gradients against the plain model's, then a generate inside `unsharded`. On CUDA
    the units compute in bf16 (MixedPrecisionPolicy), so the plain model runs in bf16 too."""
    import copy
    import os

    if device == "cuda":
        os.environ.pop("TRITON_INTERPRET", None)  # launch.py sets it for CPU runs; real kernels on a GPU
    import torch
    import torch.distributed as dist

    from mpo_fast.trainer.batch import build_train_batch
    from mpo_fast.trainer.distributed import DistContext
    from mpo_fast.trainer.fsdp import ShardedPolicyLogprobs, full_parameters, shard_model, unsharded
    from mpo_fast.trainer.logprobs import PolicyLogprobs
    from tests.distributed.workers import PROMPTS8, ScriptedRollout
    from tests.tiny_models import char_tokenizer, tiny_causal_lm

    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(backend)
    tok = char_tokenizer()
    plain = tiny_causal_lm(tok, seed=0).to(device)
    sharded = copy.deepcopy(plain)
    shard_model(sharded, DistContext(rank=0, world_size=1, local_rank=0, backend=backend))
    if device == "cuda":
        plain = plain.to(torch.bfloat16)  # what MixedPrecisionPolicy(param_dtype=bf16) computes in
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS8[:3]]
    rollouts = ScriptedRollout(tok).generate(prompts, n=2, sampling=None, policy_version=0)
    batch = build_train_batch(rollouts, torch.ones(len(rollouts)), pad_token_id=tok.pad_token_id).to(torch.device(device))
    got = ShardedPolicyLogprobs(sharded, temperature=0.7, impl="fused")
    want = PolicyLogprobs(plain, temperature=0.7, impl="fused")
    lp_got, lp_want = got.policy(batch), want.policy(batch)
    (lp_got * batch.completion_mask).sum().backward()
    (lp_want * batch.completion_mask).sum().backward()
    grads_got = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).float().cpu()
                 for n, p in sharded.named_parameters()}
    grads_want = {n: p.grad.float().cpu() for n, p in plain.named_parameters()}
    with unsharded(sharded), torch.no_grad():
        out = sharded.generate(batch.input_ids[:1, :5], max_new_tokens=4, do_sample=False)
    return {"lp": (lp_got.detach().float().cpu(), lp_want.detach().float().cpu()), "grads": (grads_got, grads_want),
            "generated": tuple(out.shape), "weights": {k: v.dtype for k, v in full_parameters(sharded).items()}}
