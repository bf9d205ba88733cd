"""Fixtures for trainer tests: a tiny random Llama, a char tokenizer, a small config."""
from __future__ import annotations

import pytest
import torch

from mpo_fast.trainer import (
    JudgeSettings,
    LogSettings,
    LoraSettings,
    MetaSettings,
    MPOConfig,
    PipelineConfig,
    RolloutSettings,
    TaskSettings,
    TrainSettings,
)
from tests.tiny_models import char_tokenizer, tiny_causal_lm

PROMPTS = ["cats", "rain at night", "a door", "the sea", "old maps", "bread"]


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models' matmuls are ~30 us on one thread; with two threads on a loaded 2-core
    machine each one waits on the other core (measured 3.4 ms, 100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer()


@pytest.fixture
def model(tokenizer):
    return tiny_causal_lm(tokenizer, seed=0)


def tiny_config(tmp_path, *, train=None, rollout=None, meta=None, log=None, judge=None, pipeline=None, **top) -> MPOConfig:
    """A config that runs in well under a second per step on the tiny model."""
    return MPOConfig(
        output_dir=str(tmp_path / "run"),
        seed=0,
        lora=LoraSettings(enabled=False),
        task=TaskSettings(name="essay", max_prompt_tokens=4096),
        rollout=RolloutSettings(**{"prompts_per_step": 2, "num_generations": 4, "max_new_tokens": 12,
                                   "temperature": 1.0, **(rollout or {})}),
        judge=JudgeSettings(**{"model": "embedded", "min_judged": 8, **(judge or {})}),
        meta=MetaSettings(**{"interval": 2, "num_samples": 4, "min_steps_between": 1, **(meta or {})}),
        train=TrainSettings(**{"max_steps": 4, "learning_rate": 1e-3, "micro_batch_size": 4, "kl_coef": 0.0,
                               "lr_scheduler": "constant", **(train or {})}),
        log=LogSettings(**{"save_steps": 2, "report_to": ["none"], "progress": False, **(log or {})}),
        pipeline=PipelineConfig(**(pipeline or {})),
        **top,
    )
