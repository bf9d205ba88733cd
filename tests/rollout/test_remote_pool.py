"""RemoteCompletionsRollout over several policy servers: requests spread over them, each update's
adapter loaded on every server, the newest keep_adapters versions kept loaded."""
from __future__ import annotations

import httpx
import pytest

from mpo_fast.rollout.remote import RemoteCompletionsRollout
from tests.rollout.test_remote import SAMPLING, FakeServer
from tests.tiny_models import char_tokenizer

URLS = ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]


def test_two_servers_share_the_requests_and_both_get_every_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    from tests.tiny_models import tiny_causal_lm

    tok = char_tokenizer()
    model = peft.get_peft_model(tiny_causal_lm(tok), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    server = FakeServer()
    hosts: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append((request.url.host, request.url.path))
        return server(request)

    b = RemoteCompletionsRollout(URLS, "policy", transport=httpx.MockTransport(handler), adapter_dir=tmp_path,
                                 keep_adapters=2)
    for version in (1, 2, 3):
        b.sync_weights(model, version)
    rollouts = b.generate([[1], [2], [3], [4]], n=2, sampling=SAMPLING, policy_version=3)
    b.close()
    assert len(rollouts) == 8 and [(r.prompt_index, r.sample_index) for r in rollouts][:2] == [(0, 0), (0, 1)]
    loads = [(h, q["lora_name"]) for (h, _), q in zip(hosts, server.requests) if q["path"].endswith("/load_lora_adapter")]
    assert loads == [(h, f"policy-v{v}") for v in (1, 2, 3) for h in ("10.0.0.1", "10.0.0.2")]
    unloads = [(h, q["lora_name"]) for (h, _), q in zip(hosts, server.requests) if q["path"].endswith("/unload_lora_adapter")]
    assert unloads == [("10.0.0.1", "policy-v1"), ("10.0.0.2", "policy-v1")]  # v2 stays: a stale rollout may use it
    completions = [(h, q["model"]) for (h, _), q in zip(hosts, server.requests) if q["path"].endswith("/completions")]
    assert {h for h, _ in completions} == {"10.0.0.1", "10.0.0.2"} and {m for _, m in completions} == {"policy-v3"}


def test_keep_adapters_must_keep_the_newest():
    with pytest.raises(ValueError, match="keep_adapters=0"):
        RemoteCompletionsRollout(URLS, "policy", keep_adapters=0)
