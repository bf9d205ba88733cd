import copy

import pytest
import torch

from mpo_fast.rollout import Rollout
from mpo_fast.trainer.batch import build_train_batch
from mpo_fast.trainer.config import TrainSettings
from mpo_fast.trainer.logprobs import PolicyLogprobs, resolve_logprob_impl
from mpo_fast.trainer.update import PolicyUpdater
from tests.tiny_models import tiny_causal_lm


def _batch(seed=0, rows=5):
    g = torch.Generator().manual_seed(seed)
    rollouts = []
    for i in range(rows):
        p = torch.randint(4, 90, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
        c = torch.randint(4, 90, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
        rollouts.append(Rollout(i // 2, i % 2, p, c, "", None, True, 0))
    adv = torch.randn(rows, generator=g)
    return build_train_batch(rollouts, adv, pad_token_id=0)


def _manual_logp(model, batch, temperature):
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float() / temperature
    logp = torch.log_softmax(logits, -1)
    out = torch.zeros(batch.completion_mask.shape)
    out[batch.rows, batch.slots] = logp[batch.rows, batch.cols, batch.completion_ids[batch.rows, batch.slots]]
    return out


@pytest.mark.parametrize("tie", [False, True])
def test_fused_and_logits_paths_match_the_model(tokenizer, tie):
    model = tiny_causal_lm(tokenizer, tie=tie, arch="qwen2" if tie else "llama")
    batch = _batch()
    expected = _manual_logp(model, batch, 0.7)
    for impl in ("fused", "logits"):
        got = PolicyLogprobs(model, temperature=0.7, impl=impl).policy(batch)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), impl
        assert (got[~batch.completion_mask] == 0).all()
    assert resolve_logprob_impl(model, "auto") == "fused"


def test_soft_capped_models_refuse_the_fused_path(tokenizer, model):
    model.config.final_logit_softcapping = 30.0
    assert resolve_logprob_impl(model, "auto") == "logits"
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        resolve_logprob_impl(model, "fused")


def test_lora_reference_is_the_base_model(tokenizer, model):
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(model)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # make the adapters matter (B is initialised to 0)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    batch = _batch(1)
    lp = PolicyLogprobs(peft_model, temperature=1.0)
    ref = lp.reference(batch)
    assert torch.allclose(ref, _manual_logp(base, batch, 1.0), atol=1e-5)
    assert not torch.allclose(lp.policy(batch), ref, atol=1e-3)


def test_full_finetune_reference_needs_a_copy(model):
    with pytest.raises(RuntimeError, match="no reference model"):
        PolicyLogprobs(model, temperature=1.0).reference(_batch())


def _grads_after_update(model, batch, micro, aggregation, kl):
    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)  # lr 0: the step leaves weights, we read gradients
    grads = {}
    for name, p in model.named_parameters():
        p.register_post_accumulate_grad_hook(lambda t, n=name: grads.__setitem__(n, t.grad.clone()))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    settings = TrainSettings(micro_batch_size=micro, loss_aggregation=aggregation, kl_coef=kl, max_grad_norm=0.0)
    ref = copy.deepcopy(model).requires_grad_(False) if kl else None
    lp = PolicyLogprobs(model, temperature=1.0, ref_model=ref)
    result = PolicyUpdater(lp, opt, sched, params, settings, max_tokens=8, device=torch.device("cpu")).update(batch)
    return grads, result


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_micro_batching_does_not_change_the_update(model, aggregation):
    batch = _batch(2, rows=6)
    full, r_full = _grads_after_update(model, batch, 6, aggregation, 0.0)
    micro, r_micro = _grads_after_update(model, batch, 2, aggregation, 0.0)
    assert full.keys() == micro.keys() and full
    for name in full:
        assert torch.allclose(full[name], micro[name], atol=1e-6, rtol=1e-4), name
    assert r_full.loss == pytest.approx(r_micro.loss, rel=1e-5, abs=1e-7)


def test_update_reports_kl_and_skips_nonfinite_gradients(model):
    batch = _batch(3)
    _, result = _grads_after_update(model, batch, 3, "token_mean", 0.1)
    assert result.metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before any step
    assert result.metrics["clip_fraction"] == 0.0 and result.metrics["ratio_mean"] == pytest.approx(1.0)

    model = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    params[0].register_hook(lambda g: torch.full_like(g, float("nan")))
    upd = PolicyUpdater(PolicyLogprobs(model, temperature=1.0), opt, sched, params,
                        TrainSettings(micro_batch_size=8, kl_coef=0.0), max_tokens=8, device=torch.device("cpu"))
    result = upd.update(batch)
    assert result.skipped_steps == 1
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in params)  # nothing left to leak into the next step


def _updater(model, **settings):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)  # lr 0: only the loss and its metrics are read
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return PolicyUpdater(PolicyLogprobs(model, temperature=1.0), opt, sched, params,
                         TrainSettings(kl_coef=0.0, max_grad_norm=0.0, **settings), max_tokens=8,
                         device=torch.device("cpu"))


@pytest.mark.parametrize("ppo_epochs", [1, 2])
def test_behaviour_old_logp_takes_the_ratio_against_the_sampling_policy(model, ppo_epochs):
    """A stale batch: the ratio must be pi_theta / pi_behaviour, not 1 as on-policy."""
    import dataclasses

    batch = _batch(4, rows=6)
    current = _manual_logp(model, batch, 1.0)
    g = torch.Generator().manual_seed(7)
    shift = (torch.rand(current.shape, generator=g) - 0.5) * 0.6  # log-ratio in [-0.3, 0.3]
    stale = dataclasses.replace(batch, behaviour_logp=torch.where(batch.completion_mask, current - shift, 0.0))
    on_policy = _updater(copy.deepcopy(model), ppo_epochs=ppo_epochs).update(stale)
    assert on_policy.metrics["ratio_min"] == pytest.approx(1.0, abs=1e-5)
    off = _updater(copy.deepcopy(model), ppo_epochs=ppo_epochs).update(stale, behaviour_old_logp=True)
    expected = torch.exp(shift[batch.completion_mask])
    assert off.metrics["ratio_min"] == pytest.approx(float(expected.min()), rel=1e-4)
    assert off.metrics["ratio_max"] == pytest.approx(float(expected.max()), rel=1e-4)
    assert off.metrics["clip_fraction"] > 0  # some |log-ratio| > log(1.2): the clip now bounds the step
    assert off.metrics["behaviour_logp_gap"] == pytest.approx(float(shift[batch.completion_mask].abs().mean()), rel=1e-4)


def test_behaviour_old_logp_without_recorded_logprobs_names_the_fix(model):
    with pytest.raises(ValueError, match="record_logprobs=True.*max_staleness=0"):
        _updater(copy.deepcopy(model)).update(_batch(1), behaviour_old_logp=True)
