"""HFRollout's own decode loop against `generate`: same greedy tokens (left padding, shared prefill,
split groups, LoRA), sampling semantics of `choose_tokens`, EOS handling."""
import pytest
import torch

from mpo_fast.models.hf_compat import wrap_with_peft
from mpo_fast.rollout import HFRollout, SamplingParams
from mpo_fast.rollout.decode_loop import decode_rows
from mpo_fast.rollout.sampling import choose_tokens
from tests.tiny_models import tiny_causal_lm


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


PROMPTS = ["a much longer prompt, padded against the others", "hi", "mid size one", "q"]


def _greedy_pair(model, tok, prompts, n, **loop_kwargs):
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    ref = HFRollout(model, tok, decode="generate").generate(prompts, n=n, sampling=greedy, policy_version=0)
    new = HFRollout(model, tok, **loop_kwargs).generate(prompts, n=n, sampling=greedy, policy_version=0)
    return ref, new


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_loop_gives_generates_tokens_and_logprobs(tok, cache, arch):
    model = tiny_causal_lm(tok, arch=arch, seed=5)
    prompts = [_ids(tok, p) for p in PROMPTS]
    ref, new = _greedy_pair(model, tok, prompts, 2, cache=cache)
    assert [(r.prompt_index, r.sample_index) for r in new] == [(r.prompt_index, r.sample_index) for r in ref]
    for a, b in zip(ref, new):
        assert b.completion_ids == a.completion_ids and b.finished == a.finished and b.text == a.text
        assert b.behaviour_logprobs == pytest.approx(a.behaviour_logprobs, abs=1e-4)
    # the test would catch a wrong position or mask: rows of different prompts differ
    assert len({tuple(r.completion_ids) for r in ref}) > 1


def test_groups_split_across_chunks_still_match(tok):
    model = tiny_causal_lm(tok, seed=6)
    prompts = [_ids(tok, p) for p in PROMPTS[:3]]
    ref, new = _greedy_pair(model, tok, prompts, 3, batch_size=4)  # chunks of 4 rows cut groups of 3
    assert [r.completion_ids for r in new] == [r.completion_ids for r in ref]


def test_lora_adapters_are_applied_by_the_loop(tok):
    peft = pytest.importorskip("peft")
    base = tiny_causal_lm(tok, seed=7)
    prompts = [_ids(tok, p) for p in PROMPTS[:2]]
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
    before = [r.completion_ids for r in HFRollout(base, tok).generate(prompts, n=1, sampling=greedy, policy_version=0)]
    config = peft.LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "up_proj"],
                             init_lora_weights=False)  # random B: the adapter changes the outputs
    torch.manual_seed(0)
    model = wrap_with_peft(base, config)
    ref, new = _greedy_pair(model, tok, prompts, 1)
    assert [r.completion_ids for r in new] == [r.completion_ids for r in ref]
    assert [r.completion_ids for r in new] != before


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_eos_ends_a_row_and_pads_the_rest(tok, cache):
    model = tiny_causal_lm(tok, seed=3)
    prompts = [_ids(tok, "hello"), _ids(tok, "another prompt")]
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
    with torch.no_grad():
        free = decode_rows(model, prompts, [0, 1], greedy, eos_ids=[-1], pad_id=0, cache=cache).tokens
    stop = int(free[0, 2])  # row 0's third token becomes an EOS
    assert stop not in free[0, :2].tolist()
    with torch.no_grad():
        out = decode_rows(model, prompts, [0, 1], greedy, eos_ids=[stop], pad_id=0, cache=cache).tokens
    assert out[0, :3].tolist() == free[0, :3].tolist() and set(out[0, 3:].tolist()) <= {0}
    hits = (free[1] == stop).nonzero()
    end = int(hits[0]) + 1 if hits.numel() else free.shape[1]
    assert out[1, :end].tolist() == free[1, :end].tolist()
    # when every row has ended the loop stops before max_new_tokens
    with torch.no_grad():
        both = decode_rows(model, [prompts[0]], [0, 0], greedy, eos_ids=[stop], pad_id=0, cache=cache).tokens
    assert both.shape[1] == 3


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_sampled_behaviour_logprobs_are_the_log_softmax_of_the_sampled_token(tok, cache):
    model = tiny_causal_lm(tok, seed=4)
    backend = HFRollout(model, tok, cache=cache)
    prompts = [_ids(tok, "abc"), _ids(tok, "a longer one")]
    params = SamplingParams(max_new_tokens=10, temperature=0.8, top_k=30, top_p=0.9, seed=5)
    out = backend.generate(prompts, n=2, sampling=params, policy_version=0)
    again = backend.generate(prompts, n=2, sampling=params, policy_version=0)
    assert [r.completion_ids for r in out] == [r.completion_ids for r in again]  # the seed reproduces
    for r in out:
        with torch.no_grad():
            logits = model(torch.tensor([r.prompt_ids + r.completion_ids])).logits[0].float() / 0.8
        logp = torch.log_softmax(logits, -1)
        start = len(r.prompt_ids)
        expected = [float(logp[start - 1 + j, t]) for j, t in enumerate(r.completion_ids)]
        assert r.behaviour_logprobs == pytest.approx(expected, abs=1e-4)


def test_truncation_matches_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    from mpo_fast.rollout.sampling import _truncate

    torch.manual_seed(0)
    scores = torch.randn(6, 50) * 3
    for k, p in [(5, 1.0), (0, 0.8), (10, 0.5), (0, 0.05)]:
        expected = scores
        if k:
            expected = TopKLogitsWarper(k)(None, expected)
        if p < 1:
            expected = TopPLogitsWarper(p)(None, expected)
        assert torch.equal(torch.isinf(_truncate(scores, k, p)), torch.isinf(expected))


def test_sampling_draws_from_the_tempered_distribution():
    torch.manual_seed(1)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).repeat(20000, 1)
    tokens, lp = choose_tokens(logits, SamplingParams(temperature=0.5))
    probs = torch.softmax(logits[0] / 0.5, -1)
    freq = torch.bincount(tokens, minlength=5).float() / tokens.numel()
    assert torch.allclose(freq, probs, atol=0.01)  # binomial sd <= 0.0035 at n=20000
    assert torch.allclose(lp, torch.log(probs)[tokens], atol=1e-5)
    top1, _ = choose_tokens(logits[:100], SamplingParams(temperature=1.0, top_k=1))
    assert set(top1.tolist()) == {0}
    greedy, glp = choose_tokens(logits[:2], SamplingParams(temperature=0.0))
    assert greedy.tolist() == [0, 0] and torch.allclose(glp, torch.log_softmax(logits[0], -1)[0].expand(2))


def test_bad_decoder_names_the_choices(tok):
    model = tiny_causal_lm(tok)
    with pytest.raises(ValueError, match="decode is 'fast'"):
        HFRollout(model, tok, decode="fast")
    with pytest.raises(ValueError, match="cache is 'paged'"):
        HFRollout(model, tok, cache="paged")


@pytest.mark.slow
def test_smollm2_greedy_loop_matches_generate():
    from mpo_fast.models.embedded import load_embedded

    model, tokenizer = load_embedded()
    texts = ["Write a haiku about the sea, then explain its imagery.", "Hi.",
             "Explain in two sentences why the sky is blue, for a curious ten-year-old."]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True)
               for t in texts]
    prompts = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in prompts]
    assert len({len(p) for p in prompts}) == 3
    greedy = SamplingParams(max_new_tokens=24, temperature=0.0)
    ref = HFRollout(model, tokenizer, decode="generate").generate(prompts, n=2, sampling=greedy, policy_version=0)
    for cache in ("dynamic", "static"):
        new = HFRollout(model, tokenizer, cache=cache).generate(prompts, n=2, sampling=greedy, policy_version=0)
        assert [r.completion_ids for r in new] == [r.completion_ids for r in ref]
        for a, b in zip(ref, new):
            assert b.behaviour_logprobs == pytest.approx(a.behaviour_logprobs, abs=1e-3)


def test_compile_on_needs_the_static_loop(tok):
    model = tiny_causal_lm(tok)
    for kwargs in ({"cache": "dynamic"}, {"decode": "generate"}):
        with pytest.raises(ValueError, match="needs decode='loop' and cache='static'"):
            HFRollout(model, tok, compile="on", **kwargs)
    with pytest.raises(ValueError, match="compile is 'yes'"):
        HFRollout(model, tok, compile="yes", cache="static")


@pytest.mark.slow  # torch.compile of the step: tens of seconds of inductor on a CPU
def test_compiled_static_step_gives_the_same_greedy_tokens(tok):
    model = tiny_causal_lm(tok, seed=8)
    prompts = [_ids(tok, p) for p in PROMPTS[:3]]
    ref, new = _greedy_pair(model, tok, prompts, 2, cache="static", compile="on")
    assert [r.completion_ids for r in new] == [r.completion_ids for r in ref]
    for a, b in zip(ref, new):
        assert b.behaviour_logprobs == pytest.approx(a.behaviour_logprobs, abs=1e-4)


def test_sliding_window_models_keep_generates_cache_semantics(tok):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         use_sliding_window=True, sliding_window=6, max_window_layers=0,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(9)
    model = AutoModelForCausalLM.from_config(config)
    assert "sliding_attention" in model.config.layer_types  # the window is shorter than the prompts
    prompts = [_ids(tok, p) for p in PROMPTS[:3]]
    ref, new = _greedy_pair(model, tok, prompts, 2, cache="static")
    assert [r.completion_ids for r in new] == [r.completion_ids for r in ref]
