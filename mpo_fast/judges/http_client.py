"""Moved to mpo_fast/http_client.py (rollouts use it too); these names are re-exported for old imports."""
from ..http_client import (
    BadResponse,
    EndpointClient,
    EndpointConfig,
    EndpointCounters,
    EndpointError,
    retry_after_seconds,
)

__all__ = ["BadResponse", "EndpointClient", "EndpointConfig", "EndpointCounters", "EndpointError", "retry_after_seconds"]
