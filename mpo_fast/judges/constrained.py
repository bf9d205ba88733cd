"""Constrained decoding: what a judge's output must match, in process and through servers.

A `Constraint` carries the same requirement in the two forms engines understand:
- a regex (`[^<]{10,600}<score-3f9a1c>(10|[0-9])</score-3f9a1c>`): xgrammar in process, vLLM
  (`structured_outputs.regex`, formerly `guided_regex`), SGLang (`regex`);
- a JSON schema: llama.cpp's server (`response_format: {"type": "json_object", "schema": ...}`;
  measured to work with llama-cpp-python 0.3.36, whose `grammar` field on chat did not), OpenAI's
  `json_schema` response format (also served by vLLM and SGLang), and xgrammar.

Both are bounded (rationale length, integer ranges), so `max_tokens` is enough to finish any
output the constraint allows: a constrained judge always ends in a complete, parseable score.
Every token of a byte-level vocabulary carries at least one character, so a regex that matches at
most N characters finishes within N tokens plus the end-of-sequence token.

In process the constraint becomes a transformers LogitsProcessor backed by xgrammar (optional
dependency `mpo-fast[constrained]`, imported only when used).
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..parsing import ScoreSpec
from .expected import ScoreChoices

# Which form each server flavour takes, and how a request carries it.
FLAVOURS = ("llama.cpp", "openai", "vllm", "vllm-legacy", "sglang", "none")
_PREFERRED_FORM = {
    "llama.cpp": "json_schema",
    "openai": "json_schema",
    "vllm": "regex",
    "vllm-legacy": "regex",
    "sglang": "regex",
    "none": None,
}
# A JSON string of n characters is at most ~n tokens, more where escapes (\n, \") split; 2n plus 64
# tokens per property (key, quotes, braces, whitespace) covers every realistic answer without
# asking a server for more tokens than its context holds (vLLM rejects that with a 400). An answer
# longer still ends with finish_reason "length", parses as TRUNCATED and is masked.
_JSON_ESCAPE_FACTOR = 2
_JSON_PER_PROPERTY = 64


@dataclass(frozen=True)
class Constraint:
    """One output requirement in the form an engine takes (regex, JSON schema or both) and the
    token budget that always suffices to complete it."""

    regex: str | None = None
    json_schema: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    max_tokens: int = 0

    def __post_init__(self) -> None:
        if self.regex is None and self.json_schema is None:
            raise ValueError("Constraint needs a regex or a json_schema")
        if self.max_tokens < 1:
            raise ValueError(f"Constraint.max_tokens={self.max_tokens} must be >= 1")

    @property
    def form(self) -> str:
        return "regex" if self.regex is not None else "json_schema"

    @property
    def key(self) -> str:
        """Identity for grammar caches."""
        if self.regex is not None:
            return "regex:" + self.regex
        return "json:" + json.dumps(self.json_schema, sort_keys=True)


def preferred_form(flavour: str) -> str | None:
    if flavour not in _PREFERRED_FORM:
        raise ValueError(f"unknown structured-output flavour {flavour!r}; expected one of {FLAVOURS}")
    return _PREFERRED_FORM[flavour]


def _regex_escape(text: str) -> str:
    # Escape metacharacters only: '-' stays bare, since "\-" outside a class is an error in
    # ECMAScript-style (unicode) regex engines some servers use.
    return "".join("\\" + ch if ch in ".^$*+?()[]{}|\\/" else ch for ch in text)


def _alternatives(choices: ScoreChoices) -> str:
    # Longest first, so engines that try alternatives in order never stop at "1" before "10".
    return "|".join(_regex_escape(t) for t in sorted(choices.texts, key=lambda t: (-len(t), t)))


def score_tags_constraint(
    spec: ScoreSpec, choices: Sequence[ScoreChoices], *, min_chars: int, max_chars: int
) -> Constraint:
    """Rationale without '<' (so no tag can start early), then every item's tag, in order:
    `<score-n>7</score-n>` (per item) or `<item1-n>3</item1-n>\\n<item2-n>5</item2-n>` (all items)."""
    if spec.format != "tag":
        raise ValueError(f"score_tags_constraint needs a tag-format ScoreSpec, got format={spec.format!r}")
    if len(choices) != spec.k:
        raise ValueError(f"{len(choices)} choice sets for a spec with k={spec.k} items")
    if not 0 <= min_chars <= max_chars:
        raise ValueError(f"rationale bounds min_chars={min_chars}, max_chars={max_chars}: need 0 <= min <= max")
    parts = [f"[^<]{{{min_chars},{max_chars}}}"]
    tail_chars = 0
    for i, ch in enumerate(choices):
        name = spec.tag_name(i)
        parts.append(f"\\n?<{_regex_escape(name)}>({_alternatives(ch)})</{_regex_escape(name)}>")
        tail_chars += 1 + len(name) * 2 + 5 + max(len(t) for t in ch.texts)
    return Constraint(regex="".join(parts), max_tokens=max_chars + tail_chars + 1)


def _integer_choices(lo: float, hi: float) -> dict[str, Any]:
    # An enum, not minimum/maximum: llama-cpp-python 0.3.36's schema-to-grammar conversion ignores
    # integer bounds (measured: scores of 9 and 39 for a 0-5 item) but enforces enums.
    return {"type": "integer", "enum": list(range(math.ceil(lo), math.floor(hi) + 1))}


def score_json_constraint(
    spec: ScoreSpec, *, rationale_key: str = "justification", max_chars: int
) -> Constraint:
    """`{"justification": "...", "<name-nonce>": 7, ...}`: the rationale first, then one integer
    per item within its range. Read back with a json-format ScoreSpec using the same names."""
    if spec.format != "json":
        raise ValueError(f"score_json_constraint needs a json-format ScoreSpec, got format={spec.format!r}")
    props: dict[str, Any] = {rationale_key: {"type": "string", "maxLength": max_chars}}
    for i in range(spec.k):
        props[spec.tag_name(i)] = _integer_choices(spec.lo[i], spec.hi[i])
    schema = {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }
    bound = _JSON_ESCAPE_FACTOR * max_chars + _JSON_PER_PROPERTY * len(props)
    return Constraint(json_schema=schema, max_tokens=bound)


def rubric_items_schema(
    *, max_items: int, max_points: int, max_title_chars: int, max_description_chars: int
) -> Constraint:
    """The meta-judge's refined rubric: `{"items": [{"title", "description", "max_points"}]}`."""
    item = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 3, "maxLength": max_title_chars},
            "description": {"type": "string", "minLength": 10, "maxLength": max_description_chars},
            "max_points": _integer_choices(1, max_points),
        },
        "required": ["title", "description", "max_points"],
        "additionalProperties": False,
    }
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": item, "minItems": 1, "maxItems": max_items}},
        "required": ["items"],
        "additionalProperties": False,
    }
    per_item = _JSON_ESCAPE_FACTOR * (max_title_chars + max_description_chars) + 3 * _JSON_PER_PROPERTY
    return Constraint(json_schema=schema, max_tokens=max_items * per_item + _JSON_PER_PROPERTY)


def request_fields(constraint: Constraint, flavour: str) -> dict[str, Any]:
    """The extra fields of an OpenAI-compatible chat request that carry `constraint`."""
    if flavour == "none":
        raise ValueError(
            "this endpoint is configured with structured_output='none': it cannot constrain output; "
            "use scoring='parse' or 'expected', or set structured_output to llama.cpp/openai/vllm/sglang"
        )
    schema = constraint.json_schema
    regex = constraint.regex
    if flavour == "llama.cpp":
        if schema is None:
            raise ValueError("llama.cpp's server takes a JSON schema here, but the constraint is a regex")
        return {"response_format": {"type": "json_object", "schema": schema}}
    if flavour == "openai":
        if schema is None:
            raise ValueError("the OpenAI json_schema response format needs a JSON schema, but the constraint is a regex")
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "judgement", "schema": schema, "strict": True}}}
    if flavour == "vllm":
        return {"structured_outputs": {"regex": regex} if regex is not None else {"json": schema}}
    if flavour == "vllm-legacy":
        return {"guided_regex": regex} if regex is not None else {"guided_json": schema}
    if flavour == "sglang":
        if regex is not None:
            return {"regex": regex}
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "judgement", "schema": schema}}}
    raise ValueError(f"unknown structured-output flavour {flavour!r}; expected one of {FLAVOURS}")


# ---- in process: xgrammar behind a transformers LogitsProcessor ---------------------------------


def _import_xgrammar():
    from ..optional_import import import_optional

    return import_optional("xgrammar", needed_for="constrained decoding in process needs xgrammar",
                           install="pip install 'mpo-fast[constrained]' (or use scoring='expected', which needs no extra package)")


class GrammarCompiler:
    """Compiles constraints for one tokenizer once and caches them (a regex with a {10,600}
    repetition takes ~2 s to compile for SmolLM2's 49k-token vocabulary; reuse is free)."""

    def __init__(self, tokenizer, vocab_size: int):
        xgr = _import_xgrammar()
        self._xgr = xgr
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(info)
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()

    def compile(self, constraint: Constraint):
        key = constraint.key
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        if constraint.regex is not None:
            compiled = self._compiler.compile_regex(constraint.regex)
        else:
            # any_whitespace=False: no runs of free whitespace between JSON tokens, which a small
            # model otherwise fills until the token budget runs out.
            compiled = self._compiler.compile_json_schema(json.dumps(constraint.json_schema), any_whitespace=False)
        with self._lock:
            self._cache[key] = compiled
        return compiled

    def logits_processor(self, constraints: Sequence[Constraint]) -> "GrammarLogitsProcessor":
        return GrammarLogitsProcessor(self._xgr, [self.compile(c) for c in constraints], self.vocab_size)


class GrammarLogitsProcessor:
    """Masks, at every decoding step, the tokens each row's grammar does not allow.

    One instance per `generate` call (it tracks each row's matcher state). Rows may have
    different grammars (per-item ranges). A row whose grammar has terminated is left alone:
    generate pads finished rows itself. Works on CPU and CUDA logits.
    """

    def __init__(self, xgr, compiled: list, vocab_size: int):
        self._xgr = xgr
        self._compiled = compiled
        self._vocab_size = vocab_size
        self._matchers = None
        self._bitmask = None
        self.rejected_rows: set[int] = set()  # rows whose sampled token the grammar refused (never expected)

    def __call__(self, input_ids, scores):
        xgr = self._xgr
        batch = input_ids.shape[0]
        if self._matchers is None:
            if batch != len(self._compiled):
                raise ValueError(
                    f"GrammarLogitsProcessor has {len(self._compiled)} grammars but generate runs {batch} rows; "
                    "pass one constraint per row (num_return_sequences is not supported)"
                )
            self._matchers = [xgr.GrammarMatcher(g) for g in self._compiled]
            self._bitmask = xgr.allocate_token_bitmask(batch, self._vocab_size)
        else:
            last = input_ids[:, -1].tolist()
            for i, matcher in enumerate(self._matchers):
                if not matcher.is_terminated() and i not in self.rejected_rows:
                    if not matcher.accept_token(last[i]):
                        self.rejected_rows.add(i)
        self._bitmask.fill_(-1)  # all allowed, for rows that are done
        for i, matcher in enumerate(self._matchers):
            if not matcher.is_terminated() and i not in self.rejected_rows:
                matcher.fill_next_token_bitmask(self._bitmask, i)
        device = scores.device
        work = scores if device.type in ("cpu", "cuda") else scores.cpu()
        xgr.apply_token_bitmask_inplace(work, self._bitmask.to(work.device))
        return work if work is scores else work.to(device)
