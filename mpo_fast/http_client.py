"""HTTP for OpenAI-compatible judge endpoints: concurrency limit, per-request timeout, rate
limits, and bounded retries with exponential backoff and full jitter.

`timeout_s` is a total deadline per attempt, body read included (httpx's own timeout bounds
each read only, so a server trickling a byte a second would never time out). Transient failures
(timeouts, connection errors, 429, 5xx, a 200 whose body is not the expected JSON or cannot be
decoded) are retried up to `max_retries` times; `Retry-After` is honoured. Anything else (400, 401,
404: a wrong model name, a missing key, an unsupported field) fails at once with the server's
message, because retrying cannot fix it. Every loop is bounded: a request costs at most
(max_retries + 1) x (timeout_s + backoff_max_s) seconds.
"""
from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from .ratelimit import RateLimiter

# Connection errors and these statuses are the server or the network, not the request.
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class EndpointConfig:
    """One OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp's server, a hosted API).

    base_url: up to and including /v1, e.g. "http://127.0.0.1:8000/v1".
    api_key_env: name of the environment variable holding the API key (never the key itself);
        None for servers without auth.
    structured_output: how constrained decoding is requested: "auto" (asks /models who serves
        it), "llama.cpp", "openai", "vllm", "vllm-legacy" (guided_regex), "sglang" or "none".
    logprobs: where expected-mode scores come from: "completions" (prefill via /v1/completions;
        needs `chat_template`), "chat" (top_logprobs of the generated answer), "none", or "auto"
        (completions when a chat template is given, else chat).
    chat_template: a local tokenizer directory (or hub id already cached) whose chat template
        renders prompts for /v1/completions; the model behind the endpoint must use it.
    top_logprobs: alternatives requested per token (OpenAI allows at most 20).
    max_output_tokens: cap on any request's max_tokens (set it to the served context minus the
        longest judge prompt: vLLM rejects requests whose prompt + max_tokens exceed its context).
    """

    base_url: str
    model: str
    api_key_env: str | None = None
    max_concurrency: int = 16
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    max_retries: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 120.0
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    structured_output: str = "auto"
    logprobs: str = "auto"
    chat_template: str | None = None
    top_logprobs: int = 20
    max_output_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"EndpointConfig.base_url={self.base_url!r} must start with http:// or https://")
        if not self.model:
            raise ValueError("EndpointConfig.model is empty; give the served model name (GET /v1/models lists it)")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("EndpointConfig needs max_concurrency >= 1, max_retries >= 0 and timeout_s > 0")
        if self.logprobs not in ("auto", "completions", "chat", "none"):
            raise ValueError(f"EndpointConfig.logprobs={self.logprobs!r}; expected auto, completions, chat or none")
        if not 1 <= self.top_logprobs <= 20:
            raise ValueError(f"EndpointConfig.top_logprobs={self.top_logprobs}; expected 1..20 (the OpenAI limit)")

    def api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise ValueError(
                f"the judge endpoint {self.base_url} expects an API key in ${self.api_key_env}, which is unset; "
                f"export {self.api_key_env}=... (keys are never read from config files)"
            )
        return key


class EndpointError(RuntimeError):
    """A request that failed for good: `kind` is timeout, connection, rate_limited, server_error,
    bad_response or client_error; `attempts` counts tries."""

    def __init__(self, kind: str, message: str, attempts: int, status: int | None = None):
        super().__init__(f"{kind} after {attempts} attempt(s): {message}")
        self.kind = kind
        self.attempts = attempts
        self.status = status


class BadResponse(ValueError):
    """A 200 answer without the expected fields (garbage, a truncated body, a proxy's HTML page)."""


@dataclass
class EndpointCounters:
    requests: int = 0
    attempts: int = 0
    retries: int = 0
    failed_requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # per attempt that failed, by kind
    seconds_waiting: float = 0.0  # backoff sleeps

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "attempts": self.attempts,
            "retries": self.retries,
            "failed_requests": self.failed_requests,
            "errors": dict(self.errors),
            "seconds_waiting": self.seconds_waiting,
        }


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class EndpointClient:
    """Async JSON-over-HTTP client for one endpoint with limits, retries and counters."""

    def __init__(self, config: EndpointConfig, *, transport: httpx.AsyncBaseTransport | None = None, seed: int | None = None):
        self.config = config
        self._headers = {"Content-Type": "application/json"}
        key = config.api_key()
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._loop = None
        self.limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute)
        self.counters = EndpointCounters()
        self._rng = random.Random(seed)

    def _bind(self) -> httpx.AsyncClient:
        """The client, semaphore and limiter lock of the running event loop.

        A trainer may call `asyncio.run` once per step: connections and locks of a closed loop
        cannot be reused, so they are rebuilt for each new loop (the counters and rate-limit
        state carry over).
        """
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            cfg = self.config
            self._client = httpx.AsyncClient(
                base_url=cfg.base_url.rstrip("/") + "/",
                headers=self._headers,
                timeout=httpx.Timeout(cfg.timeout_s, connect=cfg.connect_timeout_s),
                transport=self._transport,
                limits=httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency),
            )
            self._semaphore = asyncio.Semaphore(cfg.max_concurrency)
            self.limiter.rebind()
            self._loop = loop
        return self._client

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^(attempt-1))]; at least Retry-After."""
        cfg = self.config
        cap = min(cfg.backoff_max_s, cfg.backoff_base_s * (2 ** (attempt - 1)))
        delay = self._rng.uniform(0.0, cap)
        if retry_after is not None:
            delay = max(delay, min(retry_after, cfg.max_retry_after_s))
        return delay

    async def get(self, path: str) -> Any:
        """One GET without retries (for capability probes), within the total deadline."""
        client = self._bind()
        async with self._semaphore:
            resp = await asyncio.wait_for(client.get(path.lstrip("/")), self.config.timeout_s)
        resp.raise_for_status()
        return resp.json()

    async def post(
        self,
        path: str,
        payload: dict[str, Any],
        *,
        extract: Callable[[Any], Any],
        est_tokens: float = 0.0,
        usage_tokens: Callable[[Any], float | None] | None = None,
    ) -> tuple[Any, int]:
        """POST `payload`, retrying transient failures; returns (extract(json), attempts).

        `extract` turns the decoded body into the caller's result and raises BadResponse (or
        KeyError/TypeError/ValueError) when the body lacks what it needs: that is retried too.
        """
        cfg = self.config
        client = self._bind()
        self.counters.requests += 1
        attempt = 0
        while True:
            attempt += 1
            self.counters.attempts += 1
            await self.limiter.acquire(est_tokens)
            retry_after = None
            status = None
            try:
                async with self._semaphore:
                    # The deadline starts once a slot is free: waiting for the concurrency limit is
                    # not the server's fault. wait_for, not asyncio.timeout: Python 3.10 is supported.
                    resp = await asyncio.wait_for(client.post(path.lstrip("/"), json=payload), cfg.timeout_s)
            except (httpx.TimeoutException, asyncio.TimeoutError) as exc:
                kind, message = "timeout", f"no complete answer within {cfg.timeout_s:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                kind, message = "connection", f"{type(exc).__name__}: {exc}"
            except httpx.RequestError as exc:  # DecodingError (bad gzip, bad charset), TooManyRedirects
                kind, message = "bad_response", f"{type(exc).__name__}: {exc}"
            else:
                status = resp.status_code
                if status == 200:
                    try:
                        body = resp.json()
                        result = extract(body)
                    except Exception as exc:  # noqa: BLE001 - any unreadable body is a failed attempt, never a crash
                        kind, message = "bad_response", f"unreadable 200 answer ({type(exc).__name__}: {exc}): {resp.text[:200]!r}"
                    else:
                        used = usage_tokens(body) if usage_tokens is not None else None
                        self.limiter.settle(est_tokens, used)
                        return result, attempt
                elif status in _RETRY_STATUS or status >= 500:
                    kind = "rate_limited" if status == 429 else "server_error"
                    message = f"HTTP {status}: {resp.text[:200]!r}"
                    retry_after = retry_after_seconds(resp.headers.get("retry-after"))
                else:
                    self.counters.errors["client_error"] = self.counters.errors.get("client_error", 0) + 1
                    self.counters.failed_requests += 1
                    raise EndpointError(
                        "client_error",
                        f"HTTP {status} from {cfg.base_url}{'/' + path.lstrip('/')}: {resp.text[:500]!r} "
                        "(not retried: fix the request, model name or API key)",
                        attempt,
                        status,
                    )
            self.counters.errors[kind] = self.counters.errors.get(kind, 0) + 1
            if attempt > cfg.max_retries:
                self.counters.failed_requests += 1
                raise EndpointError(kind, message, attempt, status)
            delay = self.backoff(attempt, retry_after)
            self.counters.retries += 1
            self.counters.seconds_waiting += delay
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None
