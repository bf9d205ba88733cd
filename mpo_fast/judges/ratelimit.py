"""Moved to mpo_fast/ratelimit.py (the shared HTTP client uses it); re-exported for old imports."""
from ..ratelimit import RateLimiter, TokenBucket

__all__ = ["RateLimiter", "TokenBucket"]
