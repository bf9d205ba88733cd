"""The update's fused policy loss (issue 18): with a trained plain LM head the trainer runs
fused_linear_policy_loss (3 GEMMs, gradients formed in the forward) instead of logp then
policy_loss. Same update: weights and every logged metric, tied and untied heads, with gradient
accumulation, clipping, KL to the reference and PPO epochs (frozen old log-probs).

Tolerance: the two paths differ in summation order (the op accumulates grad_W chunk by chunk;
autograd sums the gather backward) and in where logp is rounded to fp32 (the trainer keeps [B, T]
log-probs in fp32: ~6e-8 relative, measured 4e-9 on the loss, 1e-7 on gradients). The updates run
in float64 so that what is compared is the paths, not fp32's rounding of the weights themselves (a
clipped step moves an entry by ~1e-6 and fp32 rounds a 0.02 weight to ~2e-9: 2e-3 relative). After
two SGD steps every weight change agrees to RTOL = 1e-4 element-wise (tests/helpers.py:
|a - b| <= RTOL * (|b| + mean |b|); measured <= 2e-5, on near-zero embedding entries), the loss,
grad norm and metrics to RTOL relative. An fp32 run without clipping checks the same at 1e-4 (measured 5e-6).
"""
import copy
import math

import pytest
import torch

import mpo_fast.trainer.logprobs as logprobs_mod
from mpo_fast.rollout import Rollout
from mpo_fast.trainer.batch import build_train_batch
from mpo_fast.trainer.config import TrainSettings
from mpo_fast.trainer.logprobs import PolicyLogprobs
from mpo_fast.trainer.update import PolicyUpdater
from tests.helpers import assert_elementwise_close
from tests.tiny_models import tiny_causal_lm

RTOL = 1e-4


def _batch(seed=0, rows=6):
    g = torch.Generator().manual_seed(seed)
    rollouts = []
    for i in range(rows):
        p = torch.randint(4, 90, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
        c = torch.randint(4, 90, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        rollouts.append(Rollout(i // 2, i % 2, p, c, "", None, True, 0))
    return build_train_batch(rollouts, torch.randn(rows, generator=g), pad_token_id=0)


def _update(model, batch, *, fused_loss, steps=2, **settings):
    """(weights after `steps` updates, the UpdateResults, number of fused-loss calls)."""
    model = copy.deepcopy(model)
    calls = [0]
    real = logprobs_mod.fused_linear_policy_loss

    def counting(*a, **kw):
        calls[0] += 1
        return real(*a, **kw)

    logprobs_mod.fused_linear_policy_loss = counting
    try:
        settings.setdefault("kl_coef", 0.0)
        kl = settings["kl_coef"]
        ref = copy.deepcopy(model).requires_grad_(False) if kl else None
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        lp = PolicyLogprobs(model, temperature=0.8, ref_model=ref, fused_loss=fused_loss)
        assert lp.fused_loss is (fused_loss is not False)
        upd = PolicyUpdater(lp, opt, sched, params, TrainSettings(**settings), max_tokens=8,
                            device=torch.device("cpu"))
        results = [upd.update(batch) for _ in range(steps)]
    finally:
        logprobs_mod.fused_linear_policy_loss = real
    return {n: p.detach().clone() for n, p in model.named_parameters()}, results, calls[0]


def _assert_same_update(model, batch, rtol=RTOL, **settings):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    w_fused, r_fused, calls = _update(model, batch, fused_loss=None, **settings)  # auto picks the fused loss
    w_plain, r_plain, plain_calls = _update(model, batch, fused_loss=False, **settings)
    assert calls > 0 and plain_calls == 0
    assert w_fused.keys() == w_plain.keys()
    moved = 0
    for name in w_fused:
        d_fused, d_plain = w_fused[name] - before[name], w_plain[name] - before[name]
        moved += int(d_plain.abs().max() > 0)
        assert_elementwise_close(d_fused, d_plain, rtol=rtol, what=f"weight change {name}")
    assert moved >= len(w_fused) - 1  # every parameter trained (a norm may stay put), so the test can fail
    for a, b in zip(r_fused, r_plain):
        assert a.loss == pytest.approx(b.loss, rel=rtol, abs=1e-9)
        assert a.grad_norm == pytest.approx(b.grad_norm, rel=rtol)
        assert a.skipped_steps == b.skipped_steps == 0
        assert a.metrics.keys() == b.metrics.keys() and "entropy" in a.metrics
        for k in a.metrics:
            assert a.metrics[k] == pytest.approx(b.metrics[k], rel=rtol, abs=1e-9), k


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("case", [
    dict(micro_batch_size=2, max_grad_norm=0.0, kl_coef=0.0),  # gradient accumulation over 3 micro-batches
    dict(micro_batch_size=4, max_grad_norm=1e-3, kl_coef=0.1, kl_estimator="k3"),  # clipping always bites; KL
    dict(micro_batch_size=3, max_grad_norm=0.0, kl_coef=0.05, ppo_epochs=2, loss_aggregation="seq_mean_token_mean"),
    dict(micro_batch_size=6, max_grad_norm=1.0, kl_coef=0.0, ppo_epochs=2, loss_aggregation="seq_mean_token_sum",
         clip_low=0.01, clip_high=0.01),  # second epoch's ratios leave the clip range
], ids=["accumulate", "clip+kl", "epochs+kl", "epochs+clip"])
def test_fused_policy_loss_gives_the_same_update(tokenizer, tie, case):
    model = tiny_causal_lm(tokenizer, tie=tie, arch="qwen2" if tie else "llama").double()
    if tie:  # SmolLM2's layout: one Parameter for the embedding and the head
        assert model.lm_head.weight is model.model.embed_tokens.weight
    _assert_same_update(model, _batch(1), **case)


@pytest.mark.parametrize("tie", [False, True])
def test_fused_policy_loss_same_update_in_fp32(tokenizer, tie):
    model = tiny_causal_lm(tokenizer, tie=tie, arch="qwen2" if tie else "llama")
    _assert_same_update(model, _batch(5), rtol=1e-4, micro_batch_size=2, max_grad_norm=0.0, kl_coef=0.1)


def test_tied_head_gradient_reaches_the_shared_parameter(tokenizer):
    """The op's weight gradient and the embedding's lookup gradient add up in the one Parameter."""
    model = tiny_causal_lm(tokenizer, tie=True, arch="qwen2")
    weights, _, _ = _update(model, _batch(2), fused_loss=True, steps=1, micro_batch_size=6, max_grad_norm=0.0)
    assert "lm_head.weight" not in weights  # named once, as the embedding
    changed = (weights["model.embed_tokens.weight"] - model.model.embed_tokens.weight).abs().sum(1) > 0
    used = torch.zeros(len(tokenizer), dtype=torch.bool)
    used[_batch(2).input_ids.unique()] = True
    assert changed[~used].any(), "rows of unused tokens move only through the head's softmax gradient"


def test_entropy_is_the_mean_over_completion_tokens(tokenizer, model):
    batch = _batch(3)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double() / 0.8
    ent = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)[batch.rows, batch.cols]
    for fused_loss in (None, False):
        _, (result,), _ = _update(model, batch, fused_loss=fused_loss, steps=1, micro_batch_size=4)
        assert result.metrics["entropy"] == pytest.approx(float(ent.mean()), rel=1e-5)
        assert 0 < result.metrics["entropy"] < math.log(len(tokenizer))


def test_logit_transform_and_lora_keep_their_paths(tokenizer, model):
    soft = copy.deepcopy(model)
    soft.config.final_logit_softcapping = 30.0
    lp = PolicyLogprobs(soft, temperature=1.0)
    assert lp.impl == "logits" and not lp.fused_loss
    with pytest.raises(ValueError, match="fused_loss=True needs the fused log-prob path"):
        PolicyLogprobs(soft, temperature=1.0, fused_loss=True)
    _, (result,), calls = _update(soft, _batch(4), fused_loss=False, steps=1, micro_batch_size=6)
    assert calls == 0 and "entropy" in result.metrics

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    lp = PolicyLogprobs(lora, temperature=1.0)
    assert lp.impl == "fused" and not lp.fused_loss  # frozen head: fused_linear_logprob's 2-GEMM form
    with pytest.raises(ValueError, match="not LoRA"):
        PolicyLogprobs(lora, temperature=1.0, fused_loss=True)


@pytest.mark.parametrize("tie", [False, True])
def test_ppo_fused_policy_loss_gives_the_same_update(tokenizer, tie):
    """PPO: token advantages, frozen old log-probs and values, the value head on the same forward."""
    from mpo_fast.trainer.ppo import ValueHead
    from mpo_fast.trainer.ppo_update import PPOUpdater

    model = tiny_causal_lm(tokenizer, tie=tie, arch="qwen2" if tie else "llama").double()
    batch = _batch(6)
    scores = torch.randn(batch.size, generator=torch.Generator().manual_seed(6))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    runs = {}
    for fused_loss in (None, False):
        m = copy.deepcopy(model)
        torch.manual_seed(0)
        head = ValueHead(m.config.hidden_size)  # fp32 (it casts the hidden state)
        params = [p for p in m.parameters() if p.requires_grad] + list(head.parameters())
        opt = torch.optim.SGD(params, lr=0.5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        lp = PolicyLogprobs(m, temperature=0.8, ref_model=copy.deepcopy(m).requires_grad_(False), fused_loss=fused_loss)
        assert lp.fused_loss is (fused_loss is None)
        settings = TrainSettings(algorithm="ppo", micro_batch_size=4, ppo_epochs=2, kl_coef=0.05, max_grad_norm=1.0)
        upd = PPOUpdater(lp, head, opt, sched, params, settings, max_tokens=8, device=torch.device("cpu"))
        results = [upd.update(batch, scores) for _ in range(2)]
        weights = {n: p.detach().clone() for n, p in m.named_parameters()}
        weights.update({f"value_head.{n}": p.detach().clone() for n, p in head.named_parameters()})
        runs[fused_loss] = weights, results
    (w_f, r_f), (w_p, r_p) = runs[None], runs[False]
    for name in w_p:
        start = before.get(name, torch.zeros_like(w_p[name]))
        assert_elementwise_close(w_f[name] - start, w_p[name] - start, rtol=RTOL, what=f"weight change {name}")
    for a, b in zip(r_f, r_p):
        assert a.loss == pytest.approx(b.loss, rel=RTOL, abs=1e-9)
        assert a.grad_norm == pytest.approx(b.grad_norm, rel=RTOL)
        assert a.metrics.keys() == b.metrics.keys() and "entropy" in a.metrics
        for k in a.metrics:
            assert a.metrics[k] == pytest.approx(b.metrics[k], rel=RTOL, abs=1e-9), k
