"""A pool of OpenAI-compatible endpoints serving the same model, behind the one-endpoint client's
interface (`get`, `post`, `aclose`, `counters`), so the judges and the meta-judge use it unchanged:

    judge:
      backend: openai
      base_url: [http://judge-a:8000/v1, http://judge-b:8000/v1, http://judge-c:8000/v1]

Routing: each request goes to the healthy endpoint with the fewest requests in flight (least
outstanding requests; ties to the one that has served fewest). A request that fails on an
endpoint (connection refused or reset, timeout, 5xx, 429, unreadable answer) takes that endpoint
out for a back-off (1 s, doubling per consecutive failure up to 30 s) and is retried at once on
another: a dead server costs its in-flight requests one retry each, not a failed judgement. A
client error (4xx: a bad request or key) is not retried anywhere - it would fail on every server.

Limits: each endpoint gets the EndpointConfig's concurrency / requests / tokens per minute; under
torchrun every rank builds its own pool with its share (`world_size`), so N ranks together stay
within the limits instead of multiplying them by N.

Per-endpoint counters (requests, failures, times taken out, in flight) are in `snapshot()` and
logged (INFO) whenever an endpoint is taken out or comes back, and when the pool is closed.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..http_client import EndpointClient, EndpointConfig, EndpointCounters, EndpointError

log = logging.getLogger("mpo_fast")

_NOT_RETRIED = ("client_error",)


def endpoint_urls(base_url: str | Sequence[str] | None) -> list[str]:
    """judge.base_url as a list: one URL, a list, or a comma-separated string."""
    if base_url is None:
        return []
    if isinstance(base_url, str):
        return [u.strip() for u in base_url.split(",") if u.strip()]
    return [str(u).strip() for u in base_url if str(u).strip()]


def share_limit(limit, world_size: int):
    """One rank's share of a limit every rank shares (concurrency, requests or tokens per minute)."""
    if limit is None or world_size <= 1:
        return limit
    if isinstance(limit, int):
        return max(1, limit // world_size)
    return float(limit) / world_size


@dataclass
class EndpointStats:
    url: str
    requests: int = 0  # attempts routed here
    ok: int = 0
    failures: int = 0
    taken_out: int = 0  # times put in back-off
    outstanding: int = 0
    consecutive_failures: int = 0
    down_until: float = 0.0  # time.monotonic() before which it gets no request
    errors: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        return {"url": self.url, "requests": self.requests, "ok": self.ok, "failures": self.failures,
                "taken_out": self.taken_out, "in_flight": self.outstanding, "errors": dict(self.errors)}


class EndpointPool:
    """Least-outstanding-requests routing with failover over `urls` (see the module docstring).

    config: the per-endpoint settings (its base_url is replaced by each URL); world_size: the
    number of ranks sharing these endpoints (the limits are divided by it).
    """

    def __init__(self, urls: Sequence[str], config: EndpointConfig, *, world_size: int = 1,
                 backoff_s: float = 1.0, backoff_max_s: float = 30.0, transport=None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        urls = list(urls)
        if not urls:
            raise ValueError("EndpointPool needs at least one base_url")
        if len(set(urls)) != len(urls):
            raise ValueError(f"base_url lists {urls} with a duplicate; list each server once")
        # Per-endpoint retries are 0: a failure moves the request to another endpoint at once.
        # The pool retries up to config.max_retries times more than there are endpoints.
        self.config = dataclasses.replace(
            config, base_url=urls[0], max_retries=0,
            max_concurrency=share_limit(config.max_concurrency, world_size),
            requests_per_minute=share_limit(config.requests_per_minute, world_size),
            tokens_per_minute=share_limit(config.tokens_per_minute, world_size),
        )
        self.max_attempts = len(urls) + config.max_retries
        self.clients = [EndpointClient(dataclasses.replace(self.config, base_url=u), transport=transport) for u in urls]
        self.stats = [EndpointStats(u) for u in urls]
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self.counters = EndpointCounters()  # pool-wide totals, as EndpointClient.counters
        self.log_every_s = 60.0  # the per-endpoint counters, logged at INFO at most this often
        self._logged_at = clock()

    # -- routing ------------------------------------------------------------------------------

    def _pick(self, exclude: set[int]) -> tuple[int, float]:
        """(endpoint index, seconds to wait before using it)."""
        now = self.clock()
        candidates = [i for i in range(len(self.clients)) if i not in exclude] or list(range(len(self.clients)))
        healthy = [i for i in candidates if self.stats[i].down_until <= now]
        if healthy:
            return min(healthy, key=lambda i: (self.stats[i].outstanding, self.stats[i].requests, i)), 0.0
        soonest = min(candidates, key=lambda i: self.stats[i].down_until)  # all resting: the first back
        return soonest, max(0.0, self.stats[soonest].down_until - now)

    def _failed(self, i: int, kind: str) -> None:
        s = self.stats[i]
        s.failures += 1
        s.errors[kind] = s.errors.get(kind, 0) + 1
        s.consecutive_failures += 1
        rest = min(self.backoff_max_s, self.backoff_s * 2 ** (s.consecutive_failures - 1))
        if s.down_until <= self.clock():
            s.taken_out += 1
            log.info("judge pool: %s failed (%s): taken out for %.1f s; %s", s.url, kind, rest, self.describe())
        s.down_until = self.clock() + rest

    def _succeeded(self, i: int) -> None:
        s = self.stats[i]
        if s.consecutive_failures:
            log.info("judge pool: %s answers again", s.url)
        s.ok += 1
        s.consecutive_failures = 0

    # -- the EndpointClient interface ---------------------------------------------------------

    async def get(self, path: str) -> Any:
        last: BaseException | None = None
        tried: set[int] = set()
        for _ in range(len(self.clients)):
            i, _wait = self._pick(tried)
            tried.add(i)
            try:
                return await self.clients[i].get(path)
            except Exception as exc:  # a probe: the next endpoint may answer
                last = exc
        raise last  # type: ignore[misc]

    async def post(self, path: str, payload: dict[str, Any], *, extract, est_tokens: float = 0.0, usage_tokens=None):
        self.counters.requests += 1
        tried: set[int] = set()
        attempts = 0
        while True:
            i, wait = self._pick(tried)
            if wait > 0:
                self.counters.seconds_waiting += wait
                await asyncio.sleep(wait)
            attempts += 1
            self.counters.attempts += 1
            s = self.stats[i]
            s.requests += 1
            s.outstanding += 1
            try:
                result, _ = await self.clients[i].post(path, payload, extract=extract, est_tokens=est_tokens,
                                                       usage_tokens=usage_tokens)
            except EndpointError as exc:
                s.outstanding -= 1
                self.counters.errors[exc.kind] = self.counters.errors.get(exc.kind, 0) + 1
                if exc.kind in _NOT_RETRIED:
                    self.counters.failed_requests += 1
                    raise
                self._failed(i, exc.kind)
                tried.add(i)
                if len(tried) == len(self.clients):
                    tried.clear()  # every endpoint failed once: the next round waits for the first back
                if attempts >= self.max_attempts:
                    self.counters.failed_requests += 1
                    raise EndpointError(exc.kind, f"every endpoint failed ({self.describe()}); last: {exc}", attempts,
                                        exc.status) from exc
                self.counters.retries += 1
                continue
            s.outstanding -= 1
            self._succeeded(i)
            if self.clock() - self._logged_at >= self.log_every_s:
                self._logged_at = self.clock()
                log.info("judge pool: %s", self.describe())
            return result, attempts

    def snapshot(self) -> list[dict[str, Any]]:
        return [s.snapshot() for s in self.stats]

    def describe(self) -> str:
        return "; ".join(f"{s.url}: {s.ok} ok, {s.failures} failed, out {s.taken_out}x" for s in self.stats)

    async def aclose(self) -> None:
        log.info("judge pool: %s", self.describe())
        for client in self.clients:
            await client.aclose()


def pooled_llm(urls: Sequence[str], config: EndpointConfig, *, world_size: int = 1, transport=None):
    """An OpenAICompatibleLLM over an EndpointPool of `urls` (the meta-judge's or the judge's)."""
    from .openai_llm import OpenAICompatibleLLM

    pool = EndpointPool(urls, config, world_size=world_size, transport=transport)
    return OpenAICompatibleLLM(pool.config, client=pool)


def pooled_judge(urls: Sequence[str], config: EndpointConfig, settings=None, *, cache=None, world_size: int = 1,
                 transport=None, name: str | None = None):
    """An OpenAIJudge whose requests go through an EndpointPool of `urls`."""
    from .judge import RubricJudge
    from .openai import OpenAIJudge

    class PooledOpenAIJudge(OpenAIJudge):
        def __init__(self) -> None:  # OpenAIJudge's own __init__ builds a one-endpoint client
            RubricJudge.__init__(self, pooled_llm(urls, config, world_size=world_size, transport=transport), settings,
                                 cache=cache, name=name)

    return PooledOpenAIJudge()


def pool_of(judge_or_llm) -> EndpointPool | None:
    """The EndpointPool behind a judge (or an LLM), if any."""
    llm = getattr(judge_or_llm, "llm", judge_or_llm)
    client = getattr(llm, "client", None)
    return client if isinstance(client, EndpointPool) else None


def merge_snapshots(snapshots) -> dict[str, dict[str, int]]:
    """{url: {ok, failures, taken_out}} summed over pools (one per rank) sharing the same servers."""
    out: dict[str, dict[str, int]] = {}
    for snapshot in snapshots:
        for s in snapshot or ():
            entry = out.setdefault(s["url"], {"ok": 0, "failures": 0, "taken_out": 0})
            for key in entry:
                entry[key] += int(s[key])
    return out
