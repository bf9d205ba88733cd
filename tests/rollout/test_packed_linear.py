"""oneDNN-packed linear weights for the CPU decode loop: same outputs, modules restored, autograd safe."""
import pytest
import torch

from mpo_fast.models.hf_compat import wrap_with_peft
from mpo_fast.rollout import HFRollout, SamplingParams
from mpo_fast.rollout.packed_linear import packed_linears, packing_available
from tests.tiny_models import tiny_causal_lm

pytestmark = pytest.mark.skipif(not packing_available(torch.nn.Linear(2, 2)), reason="torch without oneDNN ops")


def _linears(model):
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


def test_packed_layers_give_the_same_logits_and_are_restored(tok):
    model = tiny_causal_lm(tok, seed=2).eval()
    ids = torch.tensor([tok("some text to score", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        ref = model(ids).logits
        with packed_linears(model) as n:
            assert n == len(_linears(model)) > 0
            assert all("forward" in m.__dict__ for m in _linears(model))
            out = model(ids).logits
    assert torch.allclose(out, ref, atol=1e-5) and not torch.equal(out, torch.zeros_like(out))
    assert not any("forward" in m.__dict__ for m in _linears(model))


def test_restored_after_an_error_and_autograd_falls_back(tok):
    model = tiny_causal_lm(tok, seed=2)
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(RuntimeError, match="boom"):
        with packed_linears(model):
            raise RuntimeError("boom")
    assert not any("forward" in m.__dict__ for m in _linears(model))
    with packed_linears(model):
        model(ids).logits.sum().backward()  # grad enabled: plain F.linear, so gradients reach the weights
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in _linears(model)[:-1])


def test_disabled_or_non_float32_models_are_left_alone(tok):
    model = tiny_causal_lm(tok, seed=2)
    with packed_linears(model, enabled=False) as n:
        assert n == 0
    with packed_linears(model.to(torch.float64)) as n:
        assert n == 0 and not any("forward" in m.__dict__ for m in _linears(model))


@pytest.mark.parametrize("lora", [False, True])
def test_rollout_with_packed_weights_matches_unpacked(tok, lora):
    model = tiny_causal_lm(tok, seed=10)
    if lora:
        peft = pytest.importorskip("peft")
        torch.manual_seed(0)
        model = wrap_with_peft(model, peft.LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))
    prompts = [tok("a longer prompt here", add_special_tokens=False)["input_ids"],
               tok("hi", add_special_tokens=False)["input_ids"]]
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
    plain = HFRollout(model, tok, packed_weights=False).generate(prompts, n=2, sampling=greedy, policy_version=0)
    packed = HFRollout(model, tok).generate(prompts, n=2, sampling=greedy, policy_version=0)
    assert [r.completion_ids for r in packed] == [r.completion_ids for r in plain]
    for a, b in zip(plain, packed):
        assert b.behaviour_logprobs == pytest.approx(a.behaviour_logprobs, abs=1e-4)
    assert not any("forward" in m.__dict__ for m in _linears(model))


def test_lora_adapters_are_folded_and_switching_them_off_still_works(tok):
    peft = pytest.importorskip("peft")
    from peft.tuners.lora.layer import Linear as LoraLinear

    torch.manual_seed(0)
    model = wrap_with_peft(tiny_causal_lm(tok, seed=11), peft.LoraConfig(
        r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)).eval()
    ids = torch.tensor([tok("fold the adapters", add_special_tokens=False)["input_ids"]])
    lora_layers = [m for m in model.modules() if type(m) is LoraLinear]
    with torch.no_grad():
        ref = model(ids).logits
        with model.disable_adapter():
            base_ref = model(ids).logits
        assert not torch.allclose(ref, base_ref, atol=1e-3)  # the adapter matters
        with packed_linears(model):
            assert lora_layers and all("forward" in m.__dict__ for m in lora_layers)
            assert not any("forward" in m.base_layer.__dict__ for m in lora_layers)  # folded, not packed twice
            out = model(ids).logits
            with model.disable_adapter():  # a judge on the base weights: peft's own forward runs
                base_out = model(ids).logits
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(base_out, base_ref, atol=1e-5)
    assert not any("forward" in m.__dict__ for m in model.modules() if isinstance(m, torch.nn.Module))
