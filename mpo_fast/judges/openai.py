"""OpenAIJudge: the reward model behind any OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp's
server, hosted APIs), with the limits, retries and rate limits of `EndpointConfig`."""
from __future__ import annotations

from ..http_client import EndpointConfig
from .cache import JudgeCache
from .judge import RubricJudge
from .openai_llm import OpenAICompatibleLLM
from .settings import JudgeSettings


class OpenAIJudge(RubricJudge):
    """Judges through an endpoint; every call of a batch is in flight at once, up to
    `endpoint.max_concurrency`. Close it with `await judge.aclose()` (or `async with`)."""

    def __init__(
        self,
        endpoint: EndpointConfig,
        settings: JudgeSettings | None = None,
        *,
        cache: JudgeCache | None = None,
        transport=None,
        name: str | None = None,
    ):
        super().__init__(OpenAICompatibleLLM(endpoint, transport=transport), settings, cache=cache, name=name)

    async def aclose(self) -> None:
        await self.llm.aclose()

    async def __aenter__(self) -> "OpenAIJudge":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
