"""HFRollout on a tiny random model: order, padding, EOS handling, behaviour log-probs, seeds."""
import pytest
import torch

from mpo_fast.rollout import HFRollout, Rollout, RolloutBackend, SamplingParams
from tests.tiny_models import tiny_causal_lm


@pytest.fixture
def model(tok):
    return tiny_causal_lm(tok, seed=3)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_is_a_rollout_backend_and_returns_prompt_major(tok, model):
    backend = HFRollout(model, tok)
    assert isinstance(backend, RolloutBackend)
    prompts = [_ids(tok, "a much longer prompt here"), _ids(tok, "hi"), _ids(tok, "mid size")]
    out = backend.generate(prompts, n=3, sampling=SamplingParams(max_new_tokens=6, temperature=1.0), policy_version=7)
    assert [(r.prompt_index, r.sample_index) for r in out] == [(p, s) for p in range(3) for s in range(3)]
    for r in out:
        assert isinstance(r, Rollout) and r.policy_version == 7
        assert r.prompt_ids == prompts[r.prompt_index]
        assert 1 <= len(r.completion_ids) <= 6 and len(r.behaviour_logprobs) == len(r.completion_ids)
        assert r.text == tok.decode(r.completion_ids, skip_special_tokens=True)


def test_left_padding_does_not_change_greedy_output(tok, model):
    backend = HFRollout(model, tok)
    short, long = _ids(tok, "hi"), _ids(tok, "a much longer prompt, padded against")
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    alone = backend.generate([short], n=1, sampling=greedy, policy_version=0)[0]
    batched = backend.generate([long, short], n=1, sampling=greedy, policy_version=0)[1]
    assert alone.completion_ids == batched.completion_ids
    assert alone.behaviour_logprobs == pytest.approx(batched.behaviour_logprobs, abs=1e-4)


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_behaviour_logprobs_match_a_full_forward_pass(tok, model, temperature):
    backend = HFRollout(model, tok, batch_size=2)
    prompts = [_ids(tok, "abc"), _ids(tok, "a longer one")]
    out = backend.generate(prompts, n=2, sampling=SamplingParams(max_new_tokens=10, temperature=temperature, top_k=20),
                           policy_version=0)
    for r in out:
        seq = torch.tensor([r.prompt_ids + r.completion_ids])
        with torch.no_grad():
            logits = model(seq).logits[0].float() / temperature
        logp = torch.log_softmax(logits, -1)
        start = len(r.prompt_ids)
        expected = [float(logp[start - 1 + j, t]) for j, t in enumerate(r.completion_ids)]
        # untruncated log-probs at the sampling temperature (what the trainer recomputes)
        assert r.behaviour_logprobs == pytest.approx(expected, abs=1e-4)


def test_eos_ends_the_completion_and_sets_finished(tok, model):
    # 26 of ~100 tokens end a completion: P(no stop in 30 draws) ~ 0.74^30 ~ 1e-4 per sample.
    stops = [tok.eos_token_id] + [tok.convert_tokens_to_ids(c) for c in "abcdefghijklmnopqrstuvwxyz"]
    backend = HFRollout(model, tok, eos_token_ids=stops)
    out = backend.generate([_ids(tok, "hello")], n=4, sampling=SamplingParams(max_new_tokens=30, temperature=1.0),
                           policy_version=0)
    for r in out:
        hits = [i for i, t in enumerate(r.completion_ids) if t in stops]
        assert r.finished and hits == [len(r.completion_ids) - 1]  # stop token kept last, nothing after it
    # rows that stopped early are padded by generate; the padding never reaches the rollout
    assert len({len(r.completion_ids) for r in out}) > 1 or all(len(r.completion_ids) == 1 for r in out)
    capped = HFRollout(model, tok, eos_token_ids=[tok.eos_token_id]).generate(
        [_ids(tok, "hello")], n=2, sampling=SamplingParams(max_new_tokens=2, temperature=1.0), policy_version=0)
    for r in capped:
        assert r.finished == (r.completion_ids[-1] == tok.eos_token_id)
        assert len(r.completion_ids) == 2 or r.finished


def test_seed_makes_sampling_reproducible_without_touching_the_global_rng(tok, model):
    backend = HFRollout(model, tok)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=11)
    state = torch.get_rng_state()
    a = backend.generate([_ids(tok, "x")], n=2, sampling=params, policy_version=0)
    assert torch.equal(state, torch.get_rng_state())
    b = backend.generate([_ids(tok, "x")], n=2, sampling=params, policy_version=0)
    assert [r.completion_ids for r in a] == [r.completion_ids for r in b]
    assert a[0].completion_ids != a[1].completion_ids or a[0].behaviour_logprobs != a[1].behaviour_logprobs


def test_train_mode_is_restored_and_no_graph_is_kept(tok, model):
    model.train()
    out = HFRollout(model, tok).generate([_ids(tok, "x")], n=1, sampling=SamplingParams(max_new_tokens=3),
                                         policy_version=0)
    assert model.training and isinstance(out[0].behaviour_logprobs[0], float)


def test_bad_arguments_name_the_fix(tok, model):
    backend = HFRollout(model, tok)
    with pytest.raises(ValueError, match="n is 0"):
        backend.generate([_ids(tok, "x")], n=0, sampling=SamplingParams(), policy_version=0)
    with pytest.raises(ValueError, match="prompt 1 is list of length 0"):
        backend.generate([_ids(tok, "x"), []], n=1, sampling=SamplingParams(), policy_version=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size"):
        HFRollout(model, tok, batch_size=0)
