"""What each rank runs in the overlapped-pipeline distributed tests (importable: spawned workers import it)."""
from __future__ import annotations

from pathlib import Path

import torch

from tests.distributed import workers


def _record_batches(seen: list):
    """Record, on this rank, the rubric (version, hash, recomputed hash) every trained batch was scored with."""
    from mpo_fast.trainer.pipeline import trainer_stages

    update = trainer_stages.TrainerStages.update

    def recording(self, batch):
        rubric = batch.rubric
        seen.append((batch.step + 1, batch.rubric_version, rubric.version, rubric.hash, rubric.rubric.content_hash,
                     sorted({s.rubric_version for s in batch.samples})))
        return update(self, batch)

    trainer_stages.TrainerStages.update = recording


def overlapped_with_meta(rank, world, tmp, cfg):
    """train() on the overlapped schedule with a real MetaJudge on rank 0; what each rank scored with,
    its parameters' digest, and (rank 0) the rubric store's versions."""
    from mpo_fast.trainer.distributed import parameters_digest

    seen: list = []
    _record_batches(seen)
    trainer = workers.make_trainer(Path(tmp), scripted=False, world=world, meta_judge=workers.scripted_meta_judge(), **cfg)
    result = trainer.train()
    trainer.close()
    store = {}
    if rank == 0:
        for v in range(1, trainer.rubric_version.version + 1):
            version = trainer.store.get(v)
            store[v] = (version.hash, version.rubric.content_hash)
    return {"batches": seen, "digest": parameters_digest(list(trainer.model.parameters())), "store": store,
            "steps": result.steps, "pipeline": result.pipeline}


def overlapped_and_serial(rank, world, tmp, cfg):
    """The same run twice on these ranks: the serial data-parallel loop and the overlapped schedule
    (pipeline.max_staleness=0), scripted rollouts; both runs' weights."""
    out = {}
    for name, pipeline in (("serial", {"mode": "serial"}), ("overlapped", {"mode": "overlapped", "max_staleness": 0})):
        trainer = workers.make_trainer(Path(tmp) / name, scripted=True, world=world, **{**cfg, "pipeline": pipeline})
        out.setdefault("start", workers.trained_weights(trainer))
        trainer.train()
        trainer.close()
        out[name] = workers.trained_weights(trainer)
    return out


def run_overlapped_and_serial(tmp_path, cfg: dict) -> None:
    """Run `overlapped_and_serial` on 2 ranks and check that the overlapped pipeline (max_staleness 0)
    trained every parameter as the serial data-parallel loop did, identically on both ranks."""
    from .launch import all_ok, run_ranks

    r0, r1 = all_ok(run_ranks(overlapped_and_serial, 2, tmp_path / "ranks", str(tmp_path), cfg))
    moved = 0
    for name, serial in r0["serial"].items():
        overlapped = r0["overlapped"][name]
        assert torch.equal(overlapped, r1["overlapped"][name]), name
        torch.testing.assert_close(overlapped, serial, rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.equal(serial, r0["start"][name]))
    assert moved == len(r0["serial"])  # every parameter trained, so the comparison means something
