"""The update's forward passes (issue 15): on-policy with one PPO epoch the ratio is 1 and the old
log-probs are the current ones detached (as TRL does), so one forward per micro-batch; the frozen
reference runs only when the KL coefficient is above 0."""
import copy

import pytest
import torch

from mpo_fast.rollout import Rollout
from mpo_fast.trainer.batch import build_train_batch
from mpo_fast.trainer.config import TrainSettings
from mpo_fast.trainer.logprobs import PolicyLogprobs
from mpo_fast.trainer.update import PolicyUpdater


def _batch(rows=4):
    g = torch.Generator().manual_seed(0)
    rollouts = [Rollout(i // 2, i % 2, torch.randint(4, 90, (5,), generator=g).tolist(),
                        torch.randint(4, 90, (4,), generator=g).tolist(), "", None, True, 0) for i in range(rows)]
    return build_train_batch(rollouts, torch.randn(rows, generator=g), pad_token_id=0)


def _counting(module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _run(model, *, kl_coef, ppo_epochs, micro_batch_size=4):
    ref = copy.deepcopy(model).requires_grad_(False) if kl_coef > 0 else None
    policy_calls = _counting(model.model)  # the decoder backbone: both log-prob paths call it once a pass
    ref_calls = _counting(ref.model) if ref is not None else [0]
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    upd = PolicyUpdater(PolicyLogprobs(model, temperature=1.0, ref_model=ref), opt, sched, params,
                        TrainSettings(kl_coef=kl_coef, ppo_epochs=ppo_epochs, micro_batch_size=micro_batch_size),
                        max_tokens=4, device=torch.device("cpu"))
    upd.update(_batch())
    return policy_calls[0], ref_calls[0]


def test_on_policy_one_epoch_without_kl_is_one_forward_per_micro_batch(model):
    assert _run(model, kl_coef=0.0, ppo_epochs=1) == (1, 0)
    assert _run(copy.deepcopy(model), kl_coef=0.0, ppo_epochs=1, micro_batch_size=2) == (2, 0)


def test_the_reference_runs_only_with_kl(model):
    assert _run(model, kl_coef=0.1, ppo_epochs=1) == (1, 1)


@pytest.mark.parametrize("epochs", [2, 3])
def test_several_epochs_freeze_the_old_logprobs_once(model, epochs):
    # one no-grad pass for the old log-probs, then one pass per epoch
    assert _run(model, kl_coef=0.0, ppo_epochs=epochs) == (1 + epochs, 0)


def test_the_trainer_uses_the_fused_adamw_kernel():
    # transformers' Trainer (so TRL) defaults to it; the per-parameter loop cost ~5x more a step.
    from mpo_fast.trainer.trainer import _adamw

    params = [torch.nn.Parameter(torch.randn(4, 4))]
    assert _adamw(params, lr=1e-3).defaults["fused"] is True
