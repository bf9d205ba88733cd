"""The single-process parts of the overlapped pipeline under torchrun: the lock-step rubric board,
the fsdp2 refusal, the CLI's exit status when a peer stopped the pipeline."""
from __future__ import annotations

import pytest

from mpo_fast.trainer.distributed import DistributedError
from mpo_fast.trainer.pipeline.rubric_board import RubricBoard


def test_as_of_ignores_swaps_after_the_boundary_and_install_only_moves_forward():
    board = RubricBoard("r1", version=1)
    assert board.as_of(-1) == board.as_of(5) == (1, "r1")
    board.stage("r2")
    board.swap_at_boundary(2)  # rank 0's swap after update 3
    board.install(3, "r3", 4)  # rank 0's broadcast, installed as is on another rank
    assert [board.as_of(b) for b in (1, 2, 3, 4, 9)] == [(1, "r1"), (2, "r2"), (2, "r2"), (3, "r3"), (3, "r3")]
    assert board.current() == (3, "r3")
    with pytest.raises(ValueError, match="v3 installed after v3"):
        board.install(3, "again", 5)


def test_fsdp2_with_the_overlapped_pipeline_is_refused(tmp_path, monkeypatch):
    import torch.distributed as dist

    from mpo_fast.trainer import data_parallel
    from mpo_fast.trainer.distributed import DistContext
    from tests.tiny_models import char_tokenizer, tiny_causal_lm
    from tests.trainer.conftest import PROMPTS, tiny_config
    from tests.trainer.fakes import ShortEssayTask, SyntheticJudge

    tokenizer = char_tokenizer()
    monkeypatch.setattr(data_parallel, "current", lambda: DistContext(0, 1, 0, "gloo"))
    config = tiny_config(tmp_path, train={"distributed": "fsdp2"}, pipeline={"mode": "overlapped", "max_staleness": 1})
    with pytest.raises(ValueError, match="pipeline.mode=overlapped runs under torchrun with train.distributed=ddp"):
        data_parallel.distributed_trainer(tiny_causal_lm(tokenizer, seed=0), args=config, train_dataset=PROMPTS,
                                          judge=SyntheticJudge(), processing_class=tokenizer, task=ShortEssayTask())
    assert not dist.is_initialized()  # refused before anything joined a process group


def test_cli_exit_status_5_when_a_peer_stopped_the_pipeline(monkeypatch, capsys):
    from mpo_fast import cli
    from mpo_fast.trainer.pipeline import PipelineError

    def broken(config, *, started):
        err = PipelineError("trainer", "DistributedError: gathering step data failed on rank 0")
        raise err from DistributedError("gathering step data failed on rank 0: another rank stopped")

    monkeypatch.setattr(cli, "run_config", broken)
    assert cli.main(["demo", "train.max_steps=1"]) == cli.EXIT_PEER_FAILED == 5
    assert "distributed run stopped" in capsys.readouterr().err
