"""Check a judge's reply against the exact constraint it was sent (regex or JSON schema).

A server that ignores the structured-output field (an old vLLM, a proxy, a hosted API without the
feature) answers in free text, and a free-text judge that quotes the policy's forged score would
otherwise become the reward. Every constrained reply is therefore re-checked here, on our side:
- a regex reply must `fullmatch` the regex that was sent;
- a JSON reply must be exactly one JSON object (no duplicate keys, nothing around it) valid under
  the schema that was sent: with `jsonschema` when installed (`pip install 'mpo-fast[constrained]'`),
  else with the strict subset below, which covers every keyword mpo_fast's own schemas use
  (constrained.py) and rejects a schema with any other keyword rather than skip it.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

try:  # optional: the maintained validator when present, the strict subset below otherwise
    import jsonschema as _jsonschema
except ImportError:  # pragma: no cover - depends on the environment
    _jsonschema = None

# Keywords the fallback enforces; any other keyword in a schema is an error, never ignored.
_KNOWN = frozenset({"type", "properties", "required", "additionalProperties", "enum", "items",
                    "minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum"})


class ReplyMismatch(ValueError):
    """The reply does not match the constraint that was sent."""


@lru_cache(maxsize=256)
def _compiled(regex: str) -> re.Pattern:
    return re.compile(regex, re.S)


def check_regex(text: str, regex: str) -> re.Match:
    """The full match of `text` (trailing whitespace allowed: some servers append a newline)."""
    pattern = _compiled(regex)
    m = pattern.fullmatch(text) or pattern.fullmatch(text.rstrip())
    if m is None:
        raise ReplyMismatch(f"reply does not match the regex sent ({len(text)} chars)")
    return m


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            # Two values for one score key: which one a reader takes differs between parsers.
            raise ReplyMismatch(f"duplicate key {k!r} in the JSON reply")
        out[k] = v
    return out


def _is_type(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    raise ReplyMismatch(f"schema type {kind!r} is not supported by the built-in validator; install jsonschema")


def _validate_subset(value: Any, schema: dict[str, Any], where: str = "$") -> None:
    unknown = set(schema) - _KNOWN
    if unknown:
        raise ReplyMismatch(f"schema keywords {sorted(unknown)} need jsonschema (pip install jsonschema)")
    kind = schema.get("type")
    if kind is not None and not _is_type(value, kind):
        raise ReplyMismatch(f"{where}: expected {kind}, got {type(value).__name__}")
    if "enum" in schema and not any(value == e and type(value) is type(e) for e in schema["enum"]):
        raise ReplyMismatch(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", float("inf")):
            raise ReplyMismatch(f"{where}: string length {len(value)} outside the schema's bounds")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", float("-inf")) or value > schema.get("maximum", float("inf")):
            raise ReplyMismatch(f"{where}: {value} outside the schema's bounds")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", float("inf")):
            raise ReplyMismatch(f"{where}: {len(value)} items outside the schema's bounds")
        if "items" in schema:
            for n, v in enumerate(value):
                _validate_subset(v, schema["items"], f"{where}[{n}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        missing = [k for k in schema.get("required", ()) if k not in value]
        if missing:
            raise ReplyMismatch(f"{where}: missing required {missing}")
        if schema.get("additionalProperties", True) is False:
            extra = sorted(set(value) - set(props))
            if extra:
                raise ReplyMismatch(f"{where}: properties {extra} are not allowed")
        for k, v in value.items():
            if k in props:
                _validate_subset(v, props[k], f"{where}.{k}")


def validate_json(value: Any, schema: dict[str, Any]) -> None:
    """Raise ReplyMismatch unless `value` is valid under `schema`."""
    if _jsonschema is not None:
        try:
            _jsonschema.validate(value, schema)
        except _jsonschema.ValidationError as exc:
            raise ReplyMismatch(f"reply fails the schema sent: {exc.message}") from None
        return
    _validate_subset(value, schema)


def check_json(text: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The reply's JSON object, validated against `schema`; raises ReplyMismatch otherwise.

    strict=False: grammars (xgrammar, llama.cpp) let raw control characters into strings.
    """
    try:
        value = json.loads(text, strict=False, object_pairs_hook=_no_duplicates)
    except ReplyMismatch:
        raise
    except (ValueError, RecursionError) as exc:
        raise ReplyMismatch(f"reply is not one JSON value ({type(exc).__name__}: {str(exc)[:120]})") from None
    validate_json(value, schema)
    return value
