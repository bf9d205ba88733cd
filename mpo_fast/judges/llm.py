"""The small interface judges need from "an LLM", whether in process or behind a server.

Two implementations: `LocalLLM` (mpo_fast/judges/local_llm.py, a transformers model) and
`OpenAICompatibleLLM` (mpo_fast/judges/openai_llm.py, any OpenAI-compatible endpoint). The judge
logic (modes, prompts, parsing, caching) is written once against this interface.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from .constrained import Constraint
from .expected import ChoiceDistribution, ScoreChoices

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}
Conversation = Sequence[Message]


@dataclass
class TokenLogprobs:
    """One generated token and the top alternatives at its position ({text: logprob})."""

    text: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass
class Generation:
    """One completion.

    finish_reason: "stop" (end of sequence or a stop string), "length" (budget ran out) or
        "error" (the call failed; `error` says why and `text` is empty).
    calls: model calls spent on it (HTTP attempts including retries; 1 in process).
    """

    text: str
    finish_reason: str
    completion_tokens: int = 0
    prompt_tokens: int = 0
    error: str | None = None
    calls: int = 1
    logprobs: list[TokenLogprobs] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def per_row_constraints(constraints: Sequence[Constraint | None] | None, rows: int) -> list[Constraint | None]:
    """One constraint (or None) per conversation of a `generate` call; None means no row is constrained."""
    if constraints is None:
        return [None] * rows
    if len(constraints) != rows:
        raise ValueError(f"{len(constraints)} constraints for {rows} conversations; give one per row")
    return list(constraints)


def check_choice_rows(conversations: Sequence[Conversation], prefills: Sequence[str], choices: Sequence[ScoreChoices]) -> None:
    """`score_choices` takes one prefill and one choice set per conversation."""
    if not (len(conversations) == len(prefills) == len(choices)):
        raise ValueError("score_choices needs one prefill and one choice set per conversation")


def cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """`text` up to the first stop string it contains, and whether one was found.

    Models (and some servers, in edge cases) keep the stop string and text after it.
    """
    cut = min((text.find(s) for s in stop or () if s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@runtime_checkable
class LLM(Protocol):
    """What a judge calls.

    constraint_form: "regex", "json_schema" or None: the form of `Constraint` this model can
        enforce while decoding (None: it cannot; the constrained mode is then unavailable).
    can_score_prefill: `score_choices` works (next-token distributions after a prefilled
        assistant turn: in process, or a server's /v1/completions with a known chat template).
    can_chat_logprobs: `generate(..., top_logprobs=k)` returns per-token alternatives.
    """

    model_id: str
    constraint_form: str | None
    can_score_prefill: bool
    can_chat_logprobs: bool

    async def prepare(self) -> None:
        """Resolve capabilities that need a round trip (idempotent); called before each batch."""
        ...

    async def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        constraints: Sequence[Constraint | None] | None = None,
        stop: Sequence[str] | None = None,
        top_logprobs: int = 0,
    ) -> list[Generation]: ...

    async def score_choices(
        self,
        conversations: Sequence[Conversation],
        prefills: Sequence[str],
        choices: Sequence[ScoreChoices],
    ) -> list[ChoiceDistribution]: ...

    async def open_scoring(self, conversations: Sequence[Conversation], prefills: Sequence[str]) -> "ScoringSession":
        """Prompts + prefills prepared once, to score several continuations (all_items expected mode)."""
        ...


class ScoringSession(Protocol):
    async def score(self, suffixes: Sequence[str], choices: Sequence[ScoreChoices]) -> list[ChoiceDistribution]:
        """P(each choice) after prefill + suffixes[i], for every prompt of the session."""
        ...

    def close(self) -> None: ...
