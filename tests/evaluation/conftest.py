"""A real (tiny) run directory to evaluate and report on: 4 steps of the trainer on a random
2-layer Llama with a synthetic judge and a meta-judge that adds an item every 2 steps."""
from __future__ import annotations

import pytest
import torch

from mpo_fast.trainer import MPOTrainer
from tests.tiny_models import char_tokenizer, tiny_causal_lm
from tests.trainer.conftest import PROMPTS, tiny_config
from tests.trainer.fakes import AppendingMetaJudge, ShortEssayTask, SyntheticJudge


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only waits on the shared 2-core machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tokenizer):
    """(run dir, tokenizer). Checkpoints at steps 2 and 4; rubric versions 1..3."""
    tmp = tmp_path_factory.mktemp("evalrun")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = tiny_config(tmp, train={"max_steps": 4, "learning_rate": 5e-3},
                             log={"save_steps": 2, "save_total_limit": None})
        trainer = MPOTrainer(tiny_causal_lm(tokenizer, seed=0), args=config, train_dataset=PROMPTS,
                             judge=SyntheticJudge(), meta_judge=AppendingMetaJudge(), processing_class=tokenizer,
                             task=ShortEssayTask())
        trainer.train()
        trainer.close()
    finally:
        torch.set_num_threads(before)
    return tmp / "run"
