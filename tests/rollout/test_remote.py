"""RemoteCompletionsRollout against in-memory OpenAI-compatible servers (httpx.MockTransport):
request building, token ids from vLLM's two formats or re-tokenisation, behaviour log-probs,
prompt-major order, servers that ignore `n`, retries, API keys from the environment, LoRA sync."""
from __future__ import annotations

import json
import random

import httpx
import pytest

from mpo_fast.rollout import SamplingParams
from mpo_fast.rollout.remote import RemoteCompletionsRollout, RemoteRolloutError, build_request, convert_choices
from tests.tiny_models import char_tokenizer

SAMPLING = SamplingParams(max_new_tokens=8, temperature=0.7, top_k=5, seed=11)


class FakeServer:
    """Answers /v1/completions like vLLM (`style="vllm"`: token_ids; "token_id_strings": logprobs.tokens
    as token_id:N) or a plain OpenAI-style server ("openai": text and per-token log-probs only)."""

    def __init__(self, style="vllm", tokenizer=None, honour_n=True, fail_first=0, shuffle=True):
        self.style, self.tok, self.honour_n, self.fail_first, self.shuffle = style, tokenizer, honour_n, fail_first, shuffle
        self.requests: list[dict] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers)
        body = json.loads(request.content)
        self.requests.append({"path": request.url.path, **body})
        if self.fail_first:
            self.fail_first -= 1
            return httpx.Response(503, text="overloaded")
        if request.url.path.endswith(("load_lora_adapter", "unload_lora_adapter")):
            return httpx.Response(200, text="Success")
        prompt = body["prompt"]
        n = body["n"] if self.honour_n else 1
        choices = []
        for k in range(n):
            seed = body.get("seed", 0)
            text = f"ans{seed % 97}-{k} ok"
            ids = [100 + (seed + k + i) % 50 for i in range(len(text) // 2)]
            finished = k % 2 == 0
            if self.style != "openai" and finished:
                ids.append(2)  # vLLM's token ids include the EOS it stopped on
            lps = [-0.1 * (i + 1) for i in range(len(ids))]
            choice = {"index": k, "text": text, "finish_reason": "stop" if finished else "length"}
            if self.style == "vllm":
                choice["token_ids"] = ids
                choice["logprobs"] = {"tokens": [str(i) for i in ids], "token_logprobs": lps}
            elif self.style == "token_id_strings":
                choice["logprobs"] = {"tokens": [f"token_id:{i}" for i in ids], "token_logprobs": lps}
            else:
                ids = self.tok(text, add_special_tokens=False)["input_ids"]
                choice["logprobs"] = {"tokens": list(text), "token_logprobs": [-0.2] * len(ids)}
            choices.append(choice)
        if self.shuffle:
            random.Random(len(self.requests)).shuffle(choices)
        return httpx.Response(200, json={"object": "text_completion", "choices": choices, "prompt": prompt})


def backend(fake, **kw):
    return RemoteCompletionsRollout("http://127.0.0.1:9/v1", "policy", transport=httpx.MockTransport(fake), **kw)


def test_request_carries_sampling_and_vllm_fields_only_for_vllm():
    body = build_request("m", [1, 2], n=4, sampling=SAMPLING, server="vllm", seed=5, stop=["\n\n"])
    assert body["prompt"] == [1, 2] and body["n"] == 4 and body["max_tokens"] == 8 and body["top_k"] == 5
    assert body["seed"] == 5 and body["stop"] == ["\n\n"] and body["logprobs"] == 1
    assert body["return_token_ids"] and body["return_tokens_as_token_ids"]
    plain = build_request("m", "text", n=1, sampling=SamplingParams(top_k=0), server="openai", seed=None)
    assert not {"return_token_ids", "return_tokens_as_token_ids", "top_k", "seed"} & set(plain)


@pytest.mark.parametrize("style", ["vllm", "token_id_strings"])
def test_vllm_token_ids_and_logprobs_become_prompt_major_rollouts(style):
    server = FakeServer(style)
    b = backend(server)
    out = b.generate([[1, 2, 3], [4, 5]], n=3, sampling=SAMPLING, policy_version=7)
    b.close()
    assert [(r.prompt_index, r.sample_index) for r in out] == [(p, k) for p in range(2) for k in range(3)]
    for r in out:
        assert r.policy_version == 7 and r.prompt_ids == ([1, 2, 3] if r.prompt_index == 0 else [4, 5])
        assert len(r.behaviour_logprobs) == len(r.completion_ids)
        assert r.finished == (r.sample_index % 2 == 0)
        assert (r.completion_ids[-1] == 2) == r.finished
    # one request per prompt, each with its own seed (a seeded server would repeat itself otherwise)
    assert len(server.requests) == 2 and len({q["seed"] for q in server.requests}) == 2
    assert out[0].text != out[3].text


def test_plain_openai_server_is_retokenised_with_eos_and_mismatched_logprobs_dropped():
    tok = char_tokenizer()
    server = FakeServer("openai", tokenizer=tok)
    b = backend(server, server="openai", tokenizer=tok)
    out = b.generate([[5, 6]], n=2, sampling=SAMPLING, policy_version=0)
    stopped, cut = out
    assert stopped.finished and stopped.completion_ids[-1] == tok.eos_token_id
    assert stopped.completion_ids[:-1] == tok(stopped.text, add_special_tokens=False)["input_ids"]
    assert stopped.behaviour_logprobs is None  # the server reported one fewer (no EOS): not aligned
    assert not cut.finished and cut.behaviour_logprobs == [-0.2] * len(cut.completion_ids)


def test_server_without_ids_and_without_tokenizer_is_a_clear_error():
    with pytest.raises(RemoteRolloutError, match="pass tokenizer="):
        convert_choices({"choices": [{"index": 0, "text": "x", "finish_reason": "stop"}]}, prompt_index=0, prompt_ids=[1],
                        n=1, policy_version=0)


def test_a_server_ignoring_n_is_named_and_one_sample_per_request_fixes_it():
    server = FakeServer(honour_n=False)
    with pytest.raises(RemoteRolloutError, match=r"n=3 .* got 1 choices.*n_per_request=1"):
        backend(server).generate([[1]], n=3, sampling=SAMPLING, policy_version=0)
    server = FakeServer(honour_n=False)
    out = backend(server, n_per_request=1).generate([[1], [2]], n=3, sampling=SAMPLING, policy_version=0)
    assert [(r.prompt_index, r.sample_index) for r in out] == [(p, k) for p in range(2) for k in range(3)]
    assert len(server.requests) == 6 and len({q["seed"] for q in server.requests}) == 6


def test_text_prompts_are_decoded_with_the_tokenizer():
    tok = char_tokenizer()
    server = FakeServer()
    ids = tok("hello", add_special_tokens=False)["input_ids"]
    backend(server, prompt_format="text", tokenizer=tok).generate([ids], n=1, sampling=SAMPLING, policy_version=0)
    assert server.requests[0]["prompt"] == "hello"


def test_transient_errors_are_retried_and_the_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MY_POLICY_KEY", "sk-test")
    server = FakeServer(fail_first=2)
    out = backend(server, api_key_env="MY_POLICY_KEY", max_retries=2).generate([[1]], n=2, sampling=SAMPLING, policy_version=0)
    assert len(out) == 2 and len(server.requests) == 3
    assert server.headers[-1]["authorization"] == "Bearer sk-test"
    monkeypatch.delenv("MY_POLICY_KEY")
    with pytest.raises(ValueError, match=r"\$MY_POLICY_KEY, which is unset"):
        backend(FakeServer(), api_key_env="MY_POLICY_KEY")


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="server='tgi'"):
        backend(FakeServer(), server="tgi")
    with pytest.raises(ValueError, match="pass tokenizer="):
        backend(FakeServer(), prompt_format="text")


def test_lora_sync_saves_the_adapter_and_switches_the_served_model(tmp_path):
    peft = pytest.importorskip("peft")
    from tests.tiny_models import tiny_causal_lm

    tok = char_tokenizer()
    model = peft.get_peft_model(tiny_causal_lm(tok), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    server = FakeServer()
    b = backend(server, adapter_dir=tmp_path)
    b.sync_weights(model, 1)
    b.sync_weights(model, 2)
    b.generate([[1]], n=1, sampling=SAMPLING, policy_version=2)
    paths = [q["path"] for q in server.requests]
    assert paths == ["/v1/load_lora_adapter", "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/v1/completions"]
    assert server.requests[1]["lora_path"] == str(tmp_path / "policy-v2")
    assert (tmp_path / "policy-v2" / "adapter_config.json").is_file()
    assert server.requests[2]["lora_name"] == "policy-v1"
    assert server.requests[3]["model"] == "policy-v2"
