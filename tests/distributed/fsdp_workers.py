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
