"""KL to the reference: in the reward (kl_in=reward) by hand, through the trainer, and the
config refusing k1 as a loss term."""
import copy

import pytest
import torch

from mpo_fast.rollout import Rollout
from mpo_fast.trainer import MPOConfig, MPOTrainer
from mpo_fast.trainer.batch import build_train_batch
from mpo_fast.trainer.config import ConfigError
from mpo_fast.trainer.kl_reward import kl_penalised_rewards, sequence_k1
from mpo_fast.trainer.logprobs import PolicyLogprobs
from mpo_fast.trainer.run_log import read_jsonl
from tests.tiny_models import tiny_causal_lm
from tests.trainer.conftest import PROMPTS, tiny_config
from tests.trainer.fakes import ShortEssayTask, SyntheticJudge


def test_kl_penalised_rewards_by_hand():
    rewards = torch.tensor([0.5, 0.8, 0.1])
    valid = torch.tensor([True, True, False])
    kl = torch.tensor([2.0, -1.0, 7.0])
    out = kl_penalised_rewards(rewards, valid, kl, 0.1)
    assert out.tolist() == pytest.approx([0.5 - 0.2, 0.8 + 0.1, 0.1])  # the failed one is untouched
    with pytest.raises(ValueError, match="same shape"):
        kl_penalised_rewards(rewards, valid, kl[:2], 0.1)


def test_sequence_k1_matches_a_hand_computation(tokenizer):
    policy = tiny_causal_lm(tokenizer, seed=0)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rollouts = [Rollout(prompt_index=0, sample_index=i, prompt_ids=[5, 6, 7][: 2 + i], completion_ids=c, text="",
                        behaviour_logprobs=None, finished=True, policy_version=0)
                for i, c in enumerate([[8, 9, 10], [11, 12]])]
    batch = build_train_batch(rollouts, torch.zeros(2), pad_token_id=0)
    lp = PolicyLogprobs(policy, temperature=1.0, impl="logits", ref_model=ref)
    got = sequence_k1(lp, batch, micro_batch_size=1, device=torch.device("cpu"))

    def logp(model, r):  # log softmax of the full logits, token by token
        ids = torch.tensor([r.prompt_ids + r.completion_ids])
        logits = model(input_ids=ids).logits[0].double().log_softmax(-1)
        start = len(r.prompt_ids)
        return sum(float(logits[start - 1 + t, tok]) for t, tok in enumerate(r.completion_ids))

    policy.eval()
    want = [logp(policy, r) - logp(ref, r) for r in rollouts]
    assert got.tolist() == pytest.approx(want, abs=1e-4) and abs(want[0]) > 1e-3


def test_k1_in_the_loss_is_refused_naming_the_fix():
    with pytest.raises(ConfigError, match=r"zero expected gradient.*kl_estimator: k3.*kl_in: reward"):
        MPOConfig.from_dict({"train": {"kl_estimator": "k1", "kl_coef": 0.02}})
    MPOConfig.from_dict({"train": {"kl_estimator": "k1", "kl_coef": 0.02, "kl_in": "reward"}})
    MPOConfig.from_dict({"train": {"kl_estimator": "k1", "kl_coef": 0.0}})  # no KL at all: nothing to refuse
    # one step path: KL in the reward on the overlapped schedule too (tests/trainer/test_schedules_agree.py)
    MPOConfig.from_dict({"judge": {"model": "embedded"}, "train": {"kl_in": "reward"}, "pipeline": {"mode": "overlapped"}})


def test_shipped_gpu_config_has_no_k1_loss():
    from importlib.resources import files

    cfg = MPOConfig.from_yaml(str(files("mpo_fast") / "configs" / "gpu_7b_lora.yaml"))
    assert not (cfg.train.kl_in == "loss" and cfg.train.kl_estimator == "k1")


def test_kl_in_reward_through_the_trainer(tmp_path, tokenizer):
    trainer = MPOTrainer(
        tiny_causal_lm(tokenizer, seed=0), args=tiny_config(tmp_path, train={"max_steps": 2, "kl_coef": 0.5, "kl_in": "reward",
                                                                             "learning_rate": 1e-2}),
        train_dataset=PROMPTS, judge=SyntheticJudge(), processing_class=tokenizer, task=ShortEssayTask(),
    )
    trainer.train()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    # step 1: the policy is the reference (KL 0); step 2: it moved, and the loss carried no KL term
    assert rows[0]["kl_reward_mean"] == pytest.approx(0.0, abs=1e-5)
    assert abs(rows[1]["kl_reward_mean"]) > 1e-4
    assert all(r["kl"] == 0.0 for r in rows)
