"""Client-side rate limits for judge endpoints: requests and tokens per minute (token buckets).

Hosted APIs reject traffic above their per-minute quotas with 429s; staying under the quota
costs nothing and avoids the retry storms that 429s cause when dozens of judge calls are in
flight. Token use is not known before the answer, so a request reserves an estimate (prompt
characters / 4 + max_tokens) and `settle` returns the difference once the usage is reported.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`capacity` units, refilled continuously at `capacity` per `period_s` (a minute).

    `level` may go negative after `settle` reports more use than reserved: the debt is paid
    back by waiting, so the long-run rate stays at the quota.
    """

    capacity: float
    period_s: float = 60.0
    level: float = field(default=-1.0)
    _stamp: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if not self.capacity > 0:
            raise ValueError(f"TokenBucket capacity {self.capacity!r} must be > 0 (per-minute quota)")
        if self.level < 0:
            self.level = self.capacity
        self._stamp = time.monotonic()

    @property
    def rate(self) -> float:
        return self.capacity / self.period_s

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self, amount: float, now: float | None = None) -> float:
        """Seconds until `amount` (capped at the capacity, so a huge request cannot wait forever) is available."""
        now = time.monotonic() if now is None else now
        self._refill(now)
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits shared by every call of one endpoint."""

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None, *, period_s: float = 60.0):
        self.requests = TokenBucket(requests_per_minute, period_s) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute, period_s) if tokens_per_minute else None
        self._lock = asyncio.Lock()
        self.waited_s = 0.0

    def rebind(self) -> None:
        """A fresh lock for a new event loop (asyncio locks belong to the loop that first used them)."""
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.requests is not None or self.tokens is not None

    async def acquire(self, tokens: float) -> None:
        """Wait until one request of about `tokens` tokens fits both quotas, then reserve it."""
        if not self.enabled:
            return
        # One waiter at a time: first come, first served, and no thundering herd on refill.
        async with self._lock:
            while True:
                wait = max(
                    self.requests.wait_time(1.0) if self.requests else 0.0,
                    self.tokens.wait_time(tokens) if self.tokens else 0.0,
                )
                if wait <= 0.0:
                    break
                self.waited_s += wait
                await asyncio.sleep(wait)
            if self.requests:
                self.requests.take(1.0)
            if self.tokens:
                self.tokens.take(tokens)

    def settle(self, reserved: float, used: float | None) -> None:
        """Correct a reservation with the usage the server reported (None: keep the estimate)."""
        if self.tokens is None or used is None:
            return
        if used < reserved:
            self.tokens.give_back(reserved - used)
        else:
            self.tokens.take(used - reserved)
