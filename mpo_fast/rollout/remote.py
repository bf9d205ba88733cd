"""Rollouts from a policy served elsewhere, through an OpenAI-compatible /v1/completions endpoint.

For users who serve the policy separately (vLLM, SGLang, llama.cpp's server): the trainer sends
the chat-templated prompt token ids (or their text), gets n completions per prompt with the
sampled tokens' log-probs, and turns them into `Rollout`s.

Token ids and behaviour log-probs, by server:
- vLLM (`server="vllm"`): the request asks `return_token_ids` (vLLM >= 0.10.2: `choices[i].token_ids`)
  and `return_tokens_as_token_ids` (older: `logprobs.tokens` as "token_id:123"), so completions
  are the exact sampled ids, EOS included. Start the server with `--logprobs-mode processed_logprobs`
  so the log-probs are those of the temperature-scaled distribution that was sampled (the
  quantity the trainer's importance ratio needs); the default reports the raw model's.
- any other server (`server="openai"`): only standard fields are sent; the completion text is
  re-tokenised with `tokenizer` (the policy's), and behaviour log-probs are kept only when the
  server's token count matches the re-tokenisation (else None: the trainer then cannot correct
  stale samples and must run with max_staleness=0).

Weights: a remote server holds its own copy of the policy. With `adapter_dir` set (a directory the
server can read) and a peft policy, `sync_weights` saves the LoRA adapter there and registers it
through vLLM's documented runtime LoRA endpoints (`POST /v1/load_lora_adapter`; the server needs
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora); later requests name that adapter.
Without it, pushing weights is the user's job and the rollouts are stamped with the version the
trainer passes (logged once).

The API key is read from the environment variable named by `api_key_env`, never passed as text.
"""
from __future__ import annotations

import asyncio
import logging
import re
import threading
from pathlib import Path
from typing import Any, Sequence

from .base import Rollout, SamplingParams, check_prompts

log = logging.getLogger("mpo_fast")

SERVERS = ("vllm", "openai")
_TOKEN_ID = re.compile(r"^token_id:(\d+)$")


class RemoteRolloutError(RuntimeError):
    """The endpoint answered something that cannot be turned into rollouts."""


def build_request(model: str, prompt: list[int] | str, *, n: int, sampling: SamplingParams, server: str,
                  seed: int | None, stop: Sequence[str] | None = None, extra: dict | None = None) -> dict[str, Any]:
    """The JSON body of one /v1/completions request (n samples of one prompt)."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "n": n,
        "max_tokens": sampling.max_new_tokens,
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        # 1 is the most portable value: OpenAI allows 0..5, vLLM returns the sampled token's
        # log-prob with any value, llama.cpp treats it as n_probs.
        "logprobs": 1,
        "echo": False,
    }
    if sampling.top_k:
        body["top_k"] = int(sampling.top_k)  # not OpenAI's, but vLLM, SGLang and llama.cpp accept it
    if seed is not None:
        body["seed"] = int(seed)
    if stop:
        body["stop"] = list(stop)
    if server == "vllm":
        body["return_token_ids"] = True
        body["return_tokens_as_token_ids"] = True
        body["skip_special_tokens"] = True
    if extra:
        body.update(extra)
    return body


def _choice_token_ids(choice: dict) -> list[int] | None:
    ids = choice.get("token_ids")
    if isinstance(ids, list) and all(isinstance(i, int) for i in ids):
        return list(ids)
    lp = choice.get("logprobs")
    tokens = lp.get("tokens") if isinstance(lp, dict) else None
    if isinstance(tokens, list) and tokens:
        parsed = [_TOKEN_ID.match(t) if isinstance(t, str) else None for t in tokens]
        if all(parsed):
            return [int(m.group(1)) for m in parsed]
    return None


def _choice_logprobs(choice: dict) -> list[float] | None:
    lp = choice.get("logprobs")
    values = lp.get("token_logprobs") if isinstance(lp, dict) else None
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        return None
    return [float(v) for v in values]


def convert_choices(body: dict, *, prompt_index: int, prompt_ids: list[int], n: int, policy_version: int,
                    tokenizer=None, eos_token_id: int | None = None, first_sample_index: int = 0) -> list[Rollout]:
    """Rollouts from one /v1/completions answer, ordered by choice index."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or len(choices) != n:
        got = len(choices) if isinstance(choices, list) else "no"
        raise RemoteRolloutError(
            f"asked for n={n} completions of prompt {prompt_index}, got {got} choices; a server that ignores `n` "
            "(llama.cpp's) needs RemoteCompletionsRollout(n_per_request=1)"
        )
    out = []
    for k, choice in enumerate(sorted(choices, key=lambda c: c.get("index", 0))):
        text = choice.get("text")
        if not isinstance(text, str):
            raise RemoteRolloutError(f"choice {k} of prompt {prompt_index} has no text: {str(choice)[:200]}")
        finished = choice.get("finish_reason") == "stop"
        ids = _choice_token_ids(choice)
        logprobs = _choice_logprobs(choice)
        if ids is None:
            if tokenizer is None:
                raise RemoteRolloutError(
                    "the server returned no token ids (not vLLM, or vLLM older than 0.10.2 without "
                    "return_tokens_as_token_ids); pass tokenizer=<the policy's tokenizer> to re-tokenise the text"
                )
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            if finished and eos_token_id is not None:
                ids.append(int(eos_token_id))  # the server dropped the EOS it stopped on
        if logprobs is not None and len(logprobs) != len(ids):
            # A stopped completion can report one log-prob fewer (the EOS) or more; any mismatch
            # means the ids and log-probs are not aligned token for token: drop the log-probs.
            logprobs = None
        if not ids:
            raise RemoteRolloutError(f"choice {k} of prompt {prompt_index} is empty; raise max_tokens or check the server")
        out.append(Rollout(prompt_index, first_sample_index + k, list(prompt_ids), ids, text, logprobs, finished, policy_version))
    return out


class RemoteCompletionsRollout:
    """RolloutBackend over a remote OpenAI-compatible /v1/completions endpoint.

    base_url: up to and including /v1. model: the served name (or the LoRA adapter's, once synced).
    prompt_format: "token_ids" (exact; vLLM/SGLang) or "text" (decoded with `tokenizer`).
    n_per_request: None asks for all n samples in one request; 1 sends n requests (servers that
        ignore `n`), seeding each one differently when a seed is set.
    """

    def __init__(self, base_url: str, model: str, *, tokenizer=None, server: str = "vllm", prompt_format: str = "token_ids",
                 api_key_env: str | None = None, max_concurrency: int = 16, timeout_s: float = 600.0, max_retries: int = 2,
                 n_per_request: int | None = None, stop: Sequence[str] | None = None, extra_body: dict | None = None,
                 adapter_dir: str | Path | None = None, transport=None, keep_adapters: int = 1):
        from ..http_client import EndpointClient, EndpointConfig
        from ..judges.pool import EndpointPool, endpoint_urls

        if server not in SERVERS:
            raise ValueError(f"server={server!r}; expected one of {SERVERS} ('openai' sends only standard fields)")
        if prompt_format not in ("token_ids", "text"):
            raise ValueError(f"prompt_format={prompt_format!r}; expected 'token_ids' or 'text'")
        if prompt_format == "text" and tokenizer is None:
            raise ValueError("prompt_format='text' decodes the prompt ids: pass tokenizer=<the policy's tokenizer>")
        if n_per_request not in (None, 1):
            raise ValueError(f"n_per_request={n_per_request!r}; use None (n in one request) or 1 (one sample per request)")
        self.model = model
        self.served_model = model
        self.tokenizer = tokenizer
        self.server = server
        self.prompt_format = prompt_format
        self.n_per_request = n_per_request
        self.stop = list(stop) if stop else None
        self.extra_body = dict(extra_body or {})
        self.adapter_dir = Path(adapter_dir) if adapter_dir is not None else None
        self.eos_token_id = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        # base_url: one server, or a list of servers of the same policy (an EndpointPool: least
        # outstanding requests, failover); each update's adapter is loaded on every one of them.
        self.urls = endpoint_urls(base_url)
        if not self.urls:
            raise ValueError("base_url is empty; pass the server that serves the policy, e.g. http://127.0.0.1:8000/v1")
        if keep_adapters < 1:
            raise ValueError(f"keep_adapters={keep_adapters}; keep at least the newest adapter loaded")
        # The newest `keep_adapters` versions stay loaded, so a rollout in flight on an older policy
        # (pipeline.max_staleness = keep_adapters - 1) finishes on the adapter it started with.
        self.keep_adapters = keep_adapters
        self.endpoint = EndpointConfig(base_url=self.urls[0], model=model, api_key_env=api_key_env,
                                       max_concurrency=max_concurrency, timeout_s=timeout_s, max_retries=max_retries,
                                       structured_output="none", logprobs="none")
        self._transport = transport
        self.client = (EndpointClient(self.endpoint, transport=transport) if len(self.urls) == 1
                       else EndpointPool(self.urls, self.endpoint, transport=transport))
        self._loop = asyncio.new_event_loop()
        self._loop_lock = threading.Lock()
        self._loaded_adapters: list[str] = []  # oldest first
        self._warned_no_sync = False
        self.version = 0

    # -- protocol --------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], *, n: int, sampling: SamplingParams, policy_version: int) -> list[Rollout]:
        check_prompts(prompts, n)
        with self._loop_lock:  # one private loop, reused so connections stay open between steps
            return self._loop.run_until_complete(self.agenerate(prompts, n=n, sampling=sampling, policy_version=policy_version))

    async def agenerate(self, prompts: list[list[int]], *, n: int, sampling: SamplingParams, policy_version: int) -> list[Rollout]:
        check_prompts(prompts, n)
        jobs = []
        for p, ids in enumerate(prompts):
            if self.n_per_request is None:
                jobs.append(self._one(p, list(ids), n, 0, sampling, policy_version))
            else:
                jobs += [self._one(p, list(ids), 1, k, sampling, policy_version) for k in range(n)]
        parts = await asyncio.gather(*jobs)
        return [r for part in parts for r in part]  # prompt-major: jobs were issued in that order

    def sync_weights(self, model, version: int) -> None:
        self.version = version
        if self.adapter_dir is None:
            if not self._warned_no_sync:
                log.warning("RemoteCompletionsRollout: weights are not pushed to %s (no adapter_dir); the served policy "
                            "must be updated by you, rollouts are stamped with the trainer's version", self.endpoint.base_url)
                self._warned_no_sync = True
            return
        with self._loop_lock:
            self._loop.run_until_complete(self._load_adapter(model, version))

    def close(self) -> None:
        with self._loop_lock:
            if not self._loop.is_closed():
                self._loop.run_until_complete(self.client.aclose())
                self._loop.close()

    # -- internals -------------------------------------------------------------------------
    async def _one(self, p: int, ids: list[int], n: int, first: int, sampling: SamplingParams, version: int) -> list[Rollout]:
        prompt: list[int] | str = ids if self.prompt_format == "token_ids" else self.tokenizer.decode(ids, skip_special_tokens=False)
        # Distinct prompts (and, one sample per request, distinct samples) need distinct seeds, or
        # a seeded server would return the same completion for each.
        seed = None if sampling.seed is None else sampling.seed + 1_000_003 * p + first
        body = build_request(self.served_model, prompt, n=n, sampling=sampling, server=self.server, seed=seed,
                             stop=self.stop, extra=self.extra_body)
        answer, _ = await self.client.post("completions", body, extract=lambda b: b,
                                           est_tokens=len(ids) + n * sampling.max_new_tokens)
        return convert_choices(answer, prompt_index=p, prompt_ids=ids, n=n, policy_version=version,
                               tokenizer=self.tokenizer, eos_token_id=self.eos_token_id, first_sample_index=first)

    async def _load_adapter(self, model, version: int) -> None:
        save = getattr(model, "save_pretrained", None)
        if save is None or not hasattr(model, "peft_config"):
            raise ValueError("adapter_dir syncs LoRA adapters: the policy must be a peft model (full weights cannot be "
                             "pushed over HTTP; serve the policy with vLLM colocated instead: VLLMRollout)")
        name = f"{self.model}-v{version}"
        path = self.adapter_dir / name
        model.save_pretrained(str(path))
        # These endpoints answer plain text ("Success: LoRA adapter ... added"), not JSON, so they
        # bypass the JSON client; one attempt each: a failure here is configuration, not load.
        import httpx

        key = self.endpoint.api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(timeout=self.endpoint.timeout_s, transport=self._transport, headers=headers) as c:
            for url in self.urls:
                base = url.rstrip("/")
                r = await c.post(f"{base}/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
                if r.status_code != 200:
                    raise RemoteRolloutError(
                        f"POST {base}/load_lora_adapter -> HTTP {r.status_code}: {r.text[:300]!r}; start vLLM with "
                        "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and make adapter_dir readable by the server"
                    )
            self._loaded_adapters.append(name)
            self.served_model = name
            while len(self._loaded_adapters) > self.keep_adapters:
                previous = self._loaded_adapters.pop(0)
                for url in self.urls:
                    r = await c.post(f"{url.rstrip('/')}/unload_lora_adapter", json={"lora_name": previous})
                    if r.status_code != 200:
                        log.warning("RemoteCompletionsRollout: unloading adapter %s from %s failed: HTTP %d %s", previous,
                                    url, r.status_code, r.text[:200])
