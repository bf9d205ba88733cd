"""The parts of the vLLM backend that run without vLLM: weight names and merged LoRA weights,
sampling/prompt building, output conversion, and the sleep/wake/sync sequence against a fake
engine that records what a real vllm.LLM would be asked to do."""
from __future__ import annotations

import copy
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from mpo_fast.rollout import SamplingParams
from mpo_fast.rollout.vllm import build_prompts, convert_outputs, import_vllm, sampling_kwargs
from mpo_fast.rollout.vllm_weights import merged_lora_weights, vllm_param_name, weights_for_vllm
from tests.tiny_models import tiny_causal_lm


def lora_model(tok, modules=("q_proj", "v_proj"), **extra):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_causal_lm(tok), peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(modules), **extra))
    for name, p in model.named_parameters():  # peft initialises B = 0: make the delta non-zero
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("name, expected", [
    ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", None),
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight", None),
    ("base_model.model.model.embed_tokens.lora_embedding_A.default", None),
    ("base_model.model.lm_head.modules_to_save.default.weight", "lm_head.weight"),
    ("base_model.model.lm_head.original_module.weight", None),
    ("_orig_mod.model.norm.weight", "model.norm.weight"),
    ("module.model.norm.weight", "model.norm.weight"),
    ("model.layers.1._checkpoint_wrapped_module.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"),
    ("_fsdp_wrapped_module.model.layers.1._fsdp_wrapped_module.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"),
])
def test_trainer_names_map_to_vllm_checkpoint_names(name, expected):
    assert vllm_param_name(name) == expected


def test_merged_lora_weights_equal_peft_merge_and_leave_the_model_untouched(tok):
    model = lora_model(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = dict(merged_lora_weights(model))
    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    assert sorted(merged) == sorted(k for k in reference if k.endswith(("q_proj.weight", "v_proj.weight")))
    for name, value in merged.items():
        torch.testing.assert_close(value, reference[name], rtol=1e-6, atol=1e-7)
        assert not torch.equal(value, before[f"base_model.model.{name.replace('.weight', '.base_layer.weight')}"])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "merging must not mutate the training model"


def test_full_sync_names_are_the_hf_checkpoint_names(tok):
    model = tiny_causal_lm(tok)
    hf_names = set(model.state_dict())
    for p in model.model.layers[0].parameters():
        p.requires_grad_(False)
    changed = dict(weights_for_vllm(model))
    everything = dict(weights_for_vllm(model, only_changed=False))
    assert set(everything) == hf_names
    assert set(changed) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(".layers.0." in n for n in changed)


def test_lora_sync_sends_merged_adapted_modules_and_all_base_weights_when_asked(tok):
    model = lora_model(tok, modules=("q_proj",), modules_to_save=["lm_head"])
    hf_names = set(tiny_causal_lm(tok).state_dict())
    changed = dict(weights_for_vllm(model))
    assert set(changed) == {f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)} | {"lm_head.weight"}
    everything = dict(weights_for_vllm(model, only_changed=False))
    assert set(everything) == hf_names
    torch.testing.assert_close(everything["lm_head.weight"], model.base_model.model.lm_head.modules_to_save["default"].weight)


def test_sampling_and_prompts_are_built_as_vllm_expects():
    kw = sampling_kwargs(SamplingParams(max_new_tokens=32, temperature=0.7, top_p=0.9, top_k=0), 4, seed=3)
    assert kw == {"n": 4, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "max_tokens": 32, "logprobs": 0,
                  "skip_special_tokens": True, "seed": 3}
    assert sampling_kwargs(SamplingParams(top_k=20), 1, seed=None)["top_k"] == 20
    assert "seed" not in sampling_kwargs(SamplingParams(), 1, seed=None)
    assert build_prompts([[1, 2], (3,)]) == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}]


def _completion(index, ids, finish="stop", logprobs=True):
    lp = [{t: SimpleNamespace(logprob=-0.1 * (i + 1), rank=1), t + 1000: SimpleNamespace(logprob=-9.0, rank=2)}
          for i, t in enumerate(ids)] if logprobs else None
    return SimpleNamespace(index=index, token_ids=tuple(ids), text="".join(chr(97 + t % 26) for t in ids),
                           logprobs=lp, finish_reason=finish)


def test_request_outputs_become_prompt_major_rollouts_with_behaviour_logprobs():
    outs = [SimpleNamespace(outputs=[_completion(1, [5, 6], "length"), _completion(0, [7, 2])]),
            SimpleNamespace(outputs=[_completion(0, [8]), _completion(1, [9, 9, 2])])]
    rs = convert_outputs(outs, [[1], [2, 3]], n=2, policy_version=4)
    assert [(r.prompt_index, r.sample_index) for r in rs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert rs[0].completion_ids == [7, 2] and rs[0].finished and not rs[1].finished
    assert rs[3].behaviour_logprobs == pytest.approx([-0.1, -0.2, -0.3])
    assert all(r.policy_version == 4 for r in rs) and rs[2].prompt_ids == [2, 3]
    no_lp = convert_outputs([SimpleNamespace(outputs=[_completion(0, [1], logprobs=False)])], [[1]], n=1, policy_version=0)
    assert no_lp[0].behaviour_logprobs is None


def test_malformed_outputs_are_errors_not_silent_misalignment():
    with pytest.raises(RuntimeError, match="1 completions for prompt 0, asked for n=2"):
        convert_outputs([SimpleNamespace(outputs=[_completion(0, [1])])], [[1]], n=2, policy_version=0)
    bad = _completion(0, [1, 2])
    bad.logprobs = [{1: SimpleNamespace(logprob=-1.0)}, {7: SimpleNamespace(logprob=-1.0)}]
    with pytest.raises(RuntimeError, match="sampled token 2 has no log-prob"):
        convert_outputs([SimpleNamespace(outputs=[bad])], [[1]], n=1, policy_version=0)


def test_missing_vllm_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'mpo-fast\[vllm\]'"):
        import_vllm()


# -- orchestration against a fake engine ---------------------------------------------------------


class FakeLLM:
    """Records the vllm.LLM calls; its "model" accepts load_weights like vLLM's models do."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.loaded: dict[str, torch.Tensor] = {}
        model = SimpleNamespace(load_weights=lambda ws: self.loaded.update({k: v.clone() for k, v in ws}))
        self._model = model

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags or ())))

    def apply_model(self, fn):
        self.calls.append(("apply_model",))
        return [fn(self._model)]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def generate(self, prompts, params, use_tqdm=False, lora_request=None):
        self.calls.append(("generate", len(prompts), params["n"], getattr(lora_request, "lora_int_id", None)))
        return [SimpleNamespace(outputs=[_completion(k, [3, 2]) for k in range(params["n"])]) for _ in prompts]


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.SamplingParams = lambda **kw: kw
    lora_mod = types.ModuleType("vllm.lora.request")
    lora_mod.LoRARequest = lambda name, int_id, path: SimpleNamespace(lora_name=name, lora_int_id=int_id, lora_path=path)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora_mod)
    return mod


def test_colocated_sleep_wake_and_sync_sequence(fake_vllm, tok):
    from mpo_fast.rollout.vllm import VLLMRollout

    llm, model = FakeLLM(), tiny_causal_lm(tok)
    r = VLLMRollout(llm=llm, sleep_level=1)
    assert llm.calls == [("sleep", 1)]  # the trainer gets the memory until the first generation
    r.sync_weights(model, 1)
    out = r.generate([[1, 2], [3]], n=2, sampling=SamplingParams(max_new_tokens=4), policy_version=1)
    assert [c[0] for c in llm.calls] == ["sleep", "wake_up", "apply_model", "reset_prefix_cache", "wake_up", "generate", "sleep"]
    assert llm.calls[1] == ("wake_up", ("weights",)) and llm.calls[4] == ("wake_up", ("kv_cache",))
    assert set(llm.loaded) == set(model.state_dict())
    assert len(out) == 4 and out[0].behaviour_logprobs == pytest.approx([-0.1, -0.2])


def test_level_two_sleep_repushes_every_weight_before_generating(fake_vllm, tok):
    from mpo_fast.rollout.vllm import VLLMRollout

    llm, model = FakeLLM(), tiny_causal_lm(tok)
    for p in model.model.layers.parameters():
        p.requires_grad_(False)
    r = VLLMRollout(llm=llm, sleep_level=2)
    with pytest.raises(RuntimeError, match="call sync_weights"):
        r.generate([[1]], n=1, sampling=SamplingParams(), policy_version=0)
    r.sync_weights(model, 1)  # weights were discarded: the frozen ones are sent too
    assert set(llm.loaded) == set(model.state_dict())
    llm.loaded.clear()
    r.generate([[1]], n=1, sampling=SamplingParams(), policy_version=1)  # awake: nothing to re-push
    assert not llm.loaded
    r.generate([[1]], n=1, sampling=SamplingParams(), policy_version=1)  # slept at level 2 in between
    assert set(llm.loaded) == set(model.state_dict())


def test_lora_adapter_mode_serves_each_version_under_a_new_id(fake_vllm, tok, tmp_path):
    from mpo_fast.rollout.vllm import VLLMRollout

    llm, model = FakeLLM(), lora_model(tok)
    r = VLLMRollout(llm=llm, sync_mode="lora_adapter", sleep_level=None, adapter_dir=tmp_path)
    for version in (1, 2, 3):
        r.sync_weights(model, version)
        r.generate([[1]], n=1, sampling=SamplingParams(), policy_version=version)
    assert [c[3] for c in llm.calls if c[0] == "generate"] == [2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy-v2", "policy-v3"]  # older ones cleaned
    assert (tmp_path / "policy-v3" / "adapter_config.json").is_file()
    assert not llm.loaded and ("sleep", 1) not in llm.calls
    with pytest.raises(ValueError, match="needs a peft policy"):
        r.sync_weights(tiny_causal_lm(tok), 4)
    with pytest.raises(ValueError, match="sleep_level=2 discards"):
        VLLMRollout(llm=llm, sync_mode="lora_adapter", sleep_level=2)
