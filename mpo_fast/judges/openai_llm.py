"""Any OpenAI-compatible endpoint behind the judges' LLM interface.

- generation: POST /chat/completions, one request per conversation, all in flight at once up to
  the endpoint's concurrency limit;
- constrained decoding: the server's structured-output fields (mpo_fast/judges/constrained.py);
- expected scores: either /completions with the prompt rendered locally by the model's chat
  template and the assistant turn prefilled up to the score tag (exact next-token top-k, one
  extra request per multi-token number node), or the `top_logprobs` of a chat answer.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Sequence

from ..http_client import BadResponse, EndpointClient, EndpointConfig, EndpointError
from .constrained import FLAVOURS, Constraint, preferred_form, request_fields
from .expected import ChoiceDistribution, ScoreChoices, walk_top_logprobs
from .llm import Conversation, Generation, TokenLogprobs, check_choice_rows, cut_at_stop, per_row_constraints

log = logging.getLogger("mpo_fast")

# GET /models `owned_by` -> structured-output flavour.
_OWNERS = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llama.cpp", "llama.cpp": "llama.cpp", "me": "llama.cpp"}
_MAX_EXPAND_ROUNDS = 3  # "1" -> "10" -> "100": deeper numbers are not scores


class ChatRenderer:
    """Renders a conversation as the raw prompt text a model saw in training, for /completions.

    source: "chatml" (built in: <|im_start|>role ... <|im_end|>), or a tokenizer directory / hub id
    whose chat template the served model uses.
    """

    def __init__(self, source: str):
        self.source = source
        self._tokenizer = None
        if source != "chatml":
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(source)
            if getattr(self._tokenizer, "chat_template", None) is None:
                raise ValueError(f"the tokenizer at {source!r} has no chat template; pass chat_template='chatml' or another tokenizer")

    def render(self, conversation: Conversation) -> str:
        if self._tokenizer is not None:
            return self._tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=False)
        parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in conversation]
        return "".join(parts) + "<|im_start|>assistant\n"


def _est_tokens(texts: Sequence[str], max_tokens: int) -> float:
    # ~4 characters per token for English; only used to pace the tokens-per-minute quota.
    return sum(len(t) for t in texts) / 4.0 + max_tokens


def _usage(body: Any) -> float | None:
    usage = body.get("usage") if isinstance(body, dict) else None
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    return float(total) if isinstance(total, (int, float)) else None


def _extract_chat(body: Any) -> tuple[str, str, int, int, list[TokenLogprobs] | None]:
    choice = body["choices"][0]
    message = choice["message"]
    content = message.get("content")
    if not isinstance(content, str):
        raise BadResponse(f"choices[0].message.content is {type(content).__name__}, expected a string")
    finish = choice.get("finish_reason") or "stop"
    usage = body.get("usage") or {}
    logprobs = None
    lp = choice.get("logprobs")
    if isinstance(lp, dict) and isinstance(lp.get("content"), list):
        logprobs = []
        for entry in lp["content"]:
            top = {}
            for alt in entry.get("top_logprobs") or []:
                if isinstance(alt, dict) and isinstance(alt.get("token"), str) and isinstance(alt.get("logprob"), (int, float)):
                    top[alt["token"]] = max(top.get(alt["token"], float("-inf")), float(alt["logprob"]))
            logprobs.append(TokenLogprobs(str(entry.get("token", "")), float(entry.get("logprob", float("-inf"))), top))
    return content, str(finish), int(usage.get("completion_tokens") or 0), int(usage.get("prompt_tokens") or 0), logprobs


def _extract_next_token_top(body: Any) -> dict[str, float]:
    """Top-k alternatives of the first generated token from a legacy /completions answer."""
    lp = body["choices"][0]["logprobs"]
    top = lp["top_logprobs"][0]
    if isinstance(top, list):  # some servers return [{"token": ..., "logprob": ...}]
        top = {alt["token"]: alt["logprob"] for alt in top}
    if not isinstance(top, dict) or not top:
        raise BadResponse("choices[0].logprobs.top_logprobs[0] is empty; the server ignored `logprobs`")
    return {str(k): float(v) for k, v in top.items()}


class OpenAICompatibleLLM:
    """LLM interface over an OpenAI-compatible endpoint (see EndpointConfig)."""

    def __init__(self, endpoint: EndpointConfig, *, client: EndpointClient | None = None, transport=None):
        self.endpoint = endpoint
        self.client = client or EndpointClient(endpoint, transport=transport)
        self.model_id = f"{endpoint.model}@{endpoint.base_url}"
        self._flavour = None if endpoint.structured_output == "auto" else endpoint.structured_output
        self._probe_error: str | None = None
        if self._flavour is not None:
            preferred_form(self._flavour)  # validates the name early
        self._renderer = ChatRenderer(endpoint.chat_template) if endpoint.chat_template else None
        source = endpoint.logprobs
        if source == "auto":
            source = "completions" if self._renderer is not None else "chat"
        if source == "completions" and self._renderer is None:
            raise ValueError(
                "EndpointConfig.logprobs='completions' prefills the assistant turn through /v1/completions and "
                "needs chat_template (a tokenizer directory, or 'chatml') to render the prompt"
            )
        self.logprob_source = source
        self.can_score_prefill = source == "completions"
        self.can_chat_logprobs = source == "chat"

    # ---- capabilities ----------------------------------------------------------------------

    async def prepare(self) -> None:
        """Resolve structured_output='auto' by asking GET /models who serves the model (once).

        A failed probe never falls back to a guess (a wrong guess sends a field the server
        ignores, and free text comes back): the flavour stays unresolved and constrained scoring
        fails with an error naming the setting; parse and expected modes need no flavour.
        """
        if self._flavour is not None or self._probe_error is not None:
            return
        try:
            listing = await self.client.get("models")
            if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
                raise ValueError(f"GET /models answered {str(listing)[:120]!r}, not an OpenAI model listing")
        except Exception as exc:  # noqa: BLE001 - any probe failure is reported through `flavour`
            self._probe_error = f"{type(exc).__name__}: {exc}"
            log.warning("mpo_fast judge: GET %s/models failed (%s); structured output unknown", self.endpoint.base_url, self._probe_error)
            return
        owners = {str(m.get("owned_by", "")).lower() for m in listing["data"] if isinstance(m, dict)}
        flavour = "openai"  # a listing from none of the known engines: a hosted OpenAI-style API
        for owner in sorted(owners):
            if owner in _OWNERS:
                flavour = _OWNERS[owner]
                break
        self._flavour = flavour
        log.info("mpo_fast judge: %s serves structured output as %r", self.endpoint.base_url, flavour)

    @property
    def flavour(self) -> str:
        if self._probe_error is not None:
            raise ValueError(
                f"structured_output='auto' could not be resolved: GET {self.endpoint.base_url}/models failed "
                f"({self._probe_error}). Set EndpointConfig.structured_output (judge endpoint config key "
                f"`structured_output`) to one of {FLAVOURS} for this server"
            )
        if self._flavour is None:
            raise RuntimeError("call `await llm.prepare()` first: structured_output='auto' is resolved by a GET /models probe")
        return self._flavour

    @property
    def constraint_form(self) -> str | None:
        return preferred_form(self.flavour)

    def _cap(self, tokens: int) -> int:
        cap = self.endpoint.max_output_tokens
        return tokens if cap is None else min(tokens, cap)

    # ---- generation ------------------------------------------------------------------------

    async def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        constraints: Sequence[Constraint | None] | None = None,
        stop: Sequence[str] | None = None,
        top_logprobs: int = 0,
    ) -> list[Generation]:
        await self.prepare()
        cons = per_row_constraints(constraints, len(conversations))
        return list(await asyncio.gather(*(
            self._chat(c, k, max_tokens, temperature, stop, top_logprobs) for c, k in zip(conversations, cons)
        )))

    async def _chat(self, conversation, constraint, max_tokens, temperature, stop, top_logprobs) -> Generation:
        payload: dict[str, Any] = {
            "model": self.endpoint.model,
            "messages": list(conversation),
            "max_tokens": self._cap(max(max_tokens, constraint.max_tokens if constraint is not None else 0)),
            "temperature": float(temperature),
        }
        if stop:
            payload["stop"] = list(stop)
        if top_logprobs:
            payload["logprobs"] = True
            payload["top_logprobs"] = int(min(top_logprobs, 20))
        if constraint is not None:
            payload.update(request_fields(constraint, self.flavour))
        est = _est_tokens([m["content"] for m in conversation], payload["max_tokens"])
        try:
            (text, finish, done_tokens, prompt_tokens, logprobs), attempts = await self.client.post(
                "chat/completions", payload, extract=_extract_chat, est_tokens=est, usage_tokens=_usage
            )
        except EndpointError as exc:
            return Generation(text="", finish_reason="error", error=f"http:{exc.kind}: {exc}", calls=exc.attempts)
        except Exception as exc:  # noqa: BLE001 - one bad call fails its item, never the whole batch
            return Generation(text="", finish_reason="error", error=f"http:unexpected: {type(exc).__name__}: {exc}", calls=1)
        # Servers drop the stop string; some keep it (and text after it) in edge cases.
        text, _ = cut_at_stop(text, stop)
        return Generation(text=text, finish_reason=finish, completion_tokens=done_tokens, prompt_tokens=prompt_tokens,
                          calls=attempts, logprobs=logprobs)

    # ---- expected scores through /completions ----------------------------------------------

    async def _next_token_top(self, prompt: str) -> tuple[dict[str, float], int]:
        payload = {
            "model": self.endpoint.model,
            "prompt": prompt,
            "max_tokens": 1,
            # Temperature 1: servers that report post-temperature log-probs then report the model's own.
            "temperature": 1.0,
            "logprobs": int(self.endpoint.top_logprobs),
        }
        return await self.client.post(
            "completions", payload, extract=_extract_next_token_top, est_tokens=_est_tokens([prompt], 1), usage_tokens=_usage
        )

    async def score_choices(
        self,
        conversations: Sequence[Conversation],
        prefills: Sequence[str],
        choices: Sequence[ScoreChoices],
    ) -> list[ChoiceDistribution]:
        if not self.can_score_prefill:
            raise RuntimeError(
                f"{self.endpoint.base_url}: expected scores by prefill need logprobs='completions' and a chat_template"
            )
        check_choice_rows(conversations, prefills, choices)
        return list(await asyncio.gather(*(
            self._score_one(self._renderer.render(c) + p, ch) for c, p, ch in zip(conversations, prefills, choices)
        )))

    async def _score_one(self, prompt: str, choices: ScoreChoices) -> ChoiceDistribution:
        calls = 0
        try:
            root, attempts = await self._next_token_top(prompt)
            calls += attempts
            expand: dict[str, dict[str, float]] = {}
            dist, pending = walk_top_logprobs(choices, root, expand)
            for _ in range(_MAX_EXPAND_ROUNDS):
                if not pending:
                    break
                answers = await asyncio.gather(*(self._next_token_top(prompt + node) for node in pending))
                for node, (top, attempts) in zip(pending, answers):
                    expand[node] = top
                    calls += attempts
                dist, pending = walk_top_logprobs(choices, root, expand)
        except EndpointError as exc:
            return ChoiceDistribution(probs=[0.0] * len(choices.texts), calls=calls + exc.attempts, error=f"http:{exc.kind}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one bad call fails its item, never the whole batch
            return ChoiceDistribution(probs=[0.0] * len(choices.texts), calls=calls + 1, error=f"http:unexpected: {type(exc).__name__}: {exc}")
        dist.calls = calls
        return dist

    async def open_scoring(self, conversations: Sequence[Conversation], prefills: Sequence[str]) -> "_PrefixScoring":
        """Several positions after the same prompts: each is one /completions prompt (servers with
        prefix caching, vLLM and llama.cpp, reuse the shared part themselves)."""
        return _PrefixScoring(self, list(conversations), list(prefills))

    async def aclose(self) -> None:
        await self.client.aclose()


class _PrefixScoring:
    def __init__(self, llm: OpenAICompatibleLLM, conversations, prefills):
        self._llm, self._conversations, self._prefills = llm, conversations, prefills

    async def score(self, suffixes: Sequence[str], choices: Sequence[ScoreChoices]) -> list[ChoiceDistribution]:
        return await self._llm.score_choices(self._conversations, [p + s for p, s in zip(self._prefills, suffixes)], choices)

    def close(self) -> None:
        pass
