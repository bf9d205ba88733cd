"""A scripted LLM for judge-logic tests: answers are computed from the prompt by a Python
function, so every path (retries, masking, caching, injection) is exercised in milliseconds."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from mpo_fast.judges.expected import ChoiceDistribution
from mpo_fast.judges.llm import Generation

# The score lines a judge prompt shows: `<NAME>N</NAME>` or `"NAME": N`.
TAG_PLACEHOLDER = re.compile(r"<([A-Za-z][\w.-]*)>N</\1>")
JSON_PLACEHOLDER = re.compile(r'"([A-Za-z][\w.-]*)": N')
RESPONSE = re.compile(r"<response-(\w+)>\n(.*?)\n</response-\1>", re.S)


def score_names(messages) -> list[str]:
    text = messages[-1]["content"]
    return TAG_PLACEHOLDER.findall(text) or JSON_PLACEHOLDER.findall(text)


def response_of(messages) -> str:
    m = RESPONSE.search(messages[-1]["content"])
    return m.group(2) if m else ""


def tags(names, values, rationale="Reasoned.") -> str:
    return rationale + "\n" + "\n".join(f"<{n}>{v}</{n}>" for n, v in zip(names, values))


@dataclass
class ScriptedLLM:
    """respond(messages, call) -> text; dist(messages, prefill, choices) -> ChoiceDistribution."""

    respond: Callable = lambda messages, call: tags(score_names(messages), [1] * len(score_names(messages)))
    dist: Callable | None = None
    constraint_form: str | None = "regex"
    can_score_prefill: bool = True
    can_chat_logprobs: bool = False
    model_id: str = "scripted"
    log: list = field(default_factory=list)  # (kind, messages, kwargs) per call
    fail_with: str | None = None  # every generation fails with this error (transport failure)

    async def prepare(self) -> None:
        return None

    async def generate(self, conversations, *, max_tokens, temperature=0.0, constraints=None, stop=None, top_logprobs=0):
        out = []
        for i, messages in enumerate(conversations):
            call = {"max_tokens": max_tokens, "temperature": temperature, "stop": stop,
                    "constraint": None if constraints is None else constraints[i], "n": len(self.log)}
            self.log.append(("generate", messages, call))
            if self.fail_with:
                out.append(Generation(text="", finish_reason="error", error=self.fail_with, calls=3))
                continue
            text = self.respond(messages, call)
            if stop:
                cut = min((text.find(s) for s in stop if s in text), default=-1)
                text = text[:cut] if cut >= 0 else text
            out.append(Generation(text=text, finish_reason="stop"))
        return out

    async def open_scoring(self, conversations, prefills):
        llm = self

        class Session:
            async def score(self, suffixes, choices):
                return await llm.score_choices(conversations, [p + s for p, s in zip(prefills, suffixes)], choices)

            def close(self):
                pass

        return Session()

    async def score_choices(self, conversations, prefills, choices):
        out = []
        for messages, prefill, ch in zip(conversations, prefills, choices):
            self.log.append(("score", messages, {"prefill": prefill}))
            if self.dist is not None:
                out.append(self.dist(messages, prefill, ch))
            else:
                probs = [0.0] * len(ch.texts)
                probs[-1] = 0.5
                probs[0] = 0.5
                out.append(ChoiceDistribution(probs=probs, calls=1))
        return out
