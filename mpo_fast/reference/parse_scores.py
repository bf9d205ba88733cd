"""Pure-Python oracle for judge-score parsing (stdlib only; nothing is ever evaluated).

The grammar is the docstring of mpo_fast/parsing/spec.py. This file is written separately from the
C++ parser on purpose: it works on a *symbol string* (each recognised full-width / no-break-space
byte sequence collapsed to its ASCII twin, every other non-ASCII byte to a private code point that
no pattern matches) and reads it with regular expressions, where the C++ code walks bytes by hand.
Both must give the same result for every input; tests/parsing/ and tests/fuzz/ check it.

This module does not import the spec class: it takes a plain description (`OracleSpec`) so that
the oracle imports nothing it judges.
"""
from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

OK, MISSING, MALFORMED, OUT_OF_RANGE, AMBIGUOUS, TRUNCATED = range(6)

CONTENT_CAP = 256
DIGIT_CAP = 15  # digits per number: every accepted literal is an exact float64 ratio M / 10**f

# One symbol per match; the order matters only in that multi-byte forms come before the single byte.
_SYMBOL = re.compile(
    rb"\xef\xbc[\x8b\x8d\x8e\x8f\x90-\x9a]|\xe2\x88\x92|\xc2\xa0|\xe3\x80\x80|.",
    re.S,
)
_FULLWIDTH = {0x8B: "+", 0x8D: "-", 0x8E: ".", 0x8F: "/", 0x9A: ":"}
_OTHER = "\ue000"  # stands for any byte that is not ASCII and not part of a recognised form


def _symbol_char(piece: bytes) -> str:
    if len(piece) == 1:
        return chr(piece[0]) if piece[0] < 0x80 else _OTHER
    if piece[0] == 0xEF:
        c = piece[2]
        return chr(ord("0") + c - 0x90) if 0x90 <= c <= 0x99 else _FULLWIDTH[c]
    if piece == b"\xe2\x88\x92":
        return "-"
    return " "  # no-break space, ideographic space


def symbols(data: bytes) -> tuple[str, list[int]]:
    """(symbol string, byte offset of each symbol plus a final len(data))."""
    chars, offsets = [], []
    for m in _SYMBOL.finditer(data):
        offsets.append(m.start())
        chars.append(_symbol_char(m.group()))
    offsets.append(len(data))
    return "".join(chars), offsets


_WS = r"[ \t\n\r\f\v]"
_MANT = r"(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
_NUMBER = r"[+-]?" + _MANT
_VALUE = re.compile(rf"{_WS}*(?P<num>{_NUMBER})(?:{_WS}*/{_WS}*(?P<den>{_MANT}))?{_WS}*")
_FRAC = re.compile(
    rf"{_WS}*\\[dt]?frac{_WS}*\{{{_WS}*(?P<num>{_NUMBER}){_WS}*\}}{_WS}*\{{{_WS}*(?P<den>{_MANT}){_WS}*\}}{_WS}*"
)


@dataclass(frozen=True)
class OracleSpec:
    """Plain description of a ScoreSpec (see ScoreSpec.native_args for the field meanings)."""

    format: str
    k: int
    names: tuple[bytes, ...]  # base names; one per item when by_name, else one shared name (boxed: none)
    by_name: bool
    select: str
    integer: bool
    fractions: str
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    labels: tuple[tuple[bytes, float], ...] = ()
    case_sensitive: bool = False
    nonce: bytes = b""

    @classmethod
    def from_spec(cls, spec) -> OracleSpec:
        """From a mpo_fast.parsing.ScoreSpec (duck-typed: reads its public fields only)."""
        if spec.format == "boxed":
            names = ()
        elif spec.item_names is not None:
            names = tuple(n.encode() for n in spec.item_names)
        else:
            names = (spec.name.encode(),)
        labels = tuple((lab.encode(), float(v)) for lab, v in spec.labels) if spec.format == "verdict" else ()
        return cls(
            format=spec.format, k=spec.k, names=names, by_name=spec.item_names is not None, select=spec.select,
            integer=spec.integer, fractions=spec.fractions, lo=tuple(spec.lo), hi=tuple(spec.hi), labels=labels,
            case_sensitive=spec.case_sensitive, nonce=(spec.nonce or "").encode(),
        )


@dataclass(frozen=True)
class Candidate:
    status: int
    value: float = math.nan  # float64; meaningful when status is OK
    span: tuple[int, int] = (-1, -1)


# ---- numbers ---------------------------------------------------------------------------------
def _fraction_digits_nonzero(literal: str) -> bool:
    return "." in literal and literal.split(".", 1)[1].strip("0") != ""


def _too_long(literal: str | None) -> bool:
    return literal is not None and sum(ch.isdigit() for ch in literal) > DIGIT_CAP


def _number_value(num: str, den: str | None, spec: OracleSpec, item: int) -> Candidate:
    """Checks and converts a matched number (and optional denominator) in the grammar's order."""
    if _too_long(num) or _too_long(den):
        return Candidate(MALFORMED)
    if spec.integer and (_fraction_digits_nonzero(num) or (den is not None and _fraction_digits_nonzero(den))):
        return Candidate(MALFORMED)
    a = float(num)  # the literal matched [+-]?digits(.digits)?: float() of it is exact decimal rounding
    if den is not None:
        if spec.fractions == "reject":
            return Candidate(MALFORMED)
        b = float(den)
        if b == 0.0:
            return Candidate(MALFORMED)
        if spec.fractions == "divide":
            a = a / b
        elif b != spec.hi[item]:
            a = a * spec.hi[item] / b
    if not (spec.lo[item] <= a <= spec.hi[item]):
        return Candidate(OUT_OF_RANGE)
    return Candidate(OK, a)


def _content_value(content: bytes, spec: OracleSpec, item: int) -> Candidate:
    text, _ = symbols(content)
    m = _VALUE.fullmatch(text)
    if m is None and spec.format == "boxed":
        m = _FRAC.fullmatch(text)
    if m is None:
        return Candidate(MALFORMED)
    return _number_value(m.group("num"), m.group("den"), spec, item)


def _verdict_value(content: bytes, spec: OracleSpec) -> Candidate:
    text, offsets = symbols(content)
    stripped = text.strip(" \t\n\r\f\v")
    if not stripped:
        return Candidate(MALFORMED)
    lead = len(text) - len(text.lstrip(" \t\n\r\f\v"))
    trail = len(text.rstrip(" \t\n\r\f\v"))
    raw = content[offsets[lead]:offsets[trail]]
    for label, value in spec.labels:
        if raw == label if spec.case_sensitive else raw.lower() == label.lower():
            return Candidate(OK, value)
    return Candidate(MALFORMED)


# ---- formats: each returns the candidates of one name, in order ----------------------------------
def _tag_candidates(data: bytes, name: bytes, spec: OracleSpec, item: int) -> list[Candidate]:
    open_tag, close_tag = b"<" + name + b">", b"</" + name + b">"
    out = []
    for m in re.finditer(re.escape(open_tag), data):  # open tags cannot overlap each other
        s = m.end()
        window = data[s:s + CONTENT_CAP]
        q = window.find(b"<")
        if q < 0:
            status = TRUNCATED if s + CONTENT_CAP >= len(data) else MALFORMED
            out.append(Candidate(status, span=(s, min(s + CONTENT_CAP, len(data)))))
            continue
        q += s
        rest = data[q:q + len(close_tag)]
        if rest == close_tag:
            content = data[s:q]
            c = _verdict_value(content, spec) if spec.format == "verdict" else _content_value(content, spec, item)
            out.append(Candidate(c.status, c.value, (s, q)))
        elif len(rest) < len(close_tag) and close_tag.startswith(rest):
            out.append(Candidate(TRUNCATED, span=(s, q)))
        else:
            out.append(Candidate(MALFORMED, span=(s, q)))
    return out


_KV_SEP = re.compile(rb"[ \t*_]*(?::|=|\xef\xbc\x9a)")
_KV_LEAD = re.compile(r"[ \t\n\r\f\v*_]*")
_WS_RUN = re.compile(f"{_WS}*")
_OPEN_BRACKETS = re.compile(r"\[{1,2}")
_SIGN = re.compile(r"[+-]?")
_DIGITS_START = re.compile(r"[0-9]|\.[0-9]")
_NUMBER_RE = re.compile(_NUMBER)
_MANT_RE = re.compile(_MANT)
_SLASH = re.compile(f"{_WS}*/{_WS}*")
_NOT_TERMINATOR = re.compile(r"[A-Za-z0-9/]|[.,][0-9]")
_JSON_COLON = re.compile(f"{_WS}*:")
_JSON_TERMINATOR = re.compile(f"{_WS}*([,}}\\]])?")


class _Symbols:
    """A text's symbol string with the byte offset of every symbol (built once per text)."""

    def __init__(self, data: bytes):
        self.text, self.offsets = symbols(data)
        self.index = {off: i for i, off in enumerate(self.offsets)}


def _kv_candidates(data: bytes, name: bytes, spec: OracleSpec, item: int, syms: _Symbols) -> list[Candidate]:
    # Lookahead so that every start position is tried (a name like "a-a" can overlap itself).
    trigger = re.compile(rb"(?<![A-Za-z0-9_])(?=" + re.escape(name) + rb")", re.IGNORECASE)
    out = []
    for m in trigger.finditer(data):
        sep = _KV_SEP.match(data, m.start() + len(name))
        if sep is not None:
            out.append(_kv_value(syms.text, syms.index[sep.end()], spec, item))
    return out


def _kv_value(text: str, i: int, spec: OracleSpec, item: int) -> Candidate:
    n = len(text)
    i = _KV_LEAD.match(text, i).end()
    if i == n:
        return Candidate(TRUNCATED)
    nb = 0
    brackets = _OPEN_BRACKETS.match(text, i)
    if brackets:
        nb, i = brackets.end() - i, brackets.end()
    i = _WS_RUN.match(text, i).end()
    if i == n:
        return Candidate(TRUNCATED)
    after_sign = _SIGN.match(text, i).end()
    if after_sign == n:
        return Candidate(TRUNCATED)
    if not _DIGITS_START.match(text, after_sign):
        return Candidate(MALFORMED)
    num = _NUMBER_RE.match(text, i)
    if _too_long(num.group()):
        return Candidate(MALFORMED)
    i, den = num.end(), None
    slash = _SLASH.match(text, i)
    if slash:
        if slash.end() == n:
            return Candidate(TRUNCATED)
        dm = _MANT_RE.match(text, slash.end())
        if dm is None or _too_long(dm.group()):
            return Candidate(MALFORMED)
        den, i = dm.group(), dm.end()
    if nb:
        i = _WS_RUN.match(text, i).end()
        closing = text[i:i + nb]
        if closing != "]" * nb:
            ran_out = i + len(closing) == n and closing == "]" * len(closing)
            return Candidate(TRUNCATED if ran_out else MALFORMED)
        i += nb
    if _NOT_TERMINATOR.match(text, i):
        return Candidate(MALFORMED)
    return _number_value(num.group(), den, spec, item)


def _json_candidates(data: bytes, name: bytes, spec: OracleSpec, item: int, syms: _Symbols) -> list[Candidate]:
    key = b'"' + name + b'"'
    out = []
    for m in re.finditer(b"(?=" + re.escape(key) + b")", data):  # lookahead: overlapping occurrences count
        colon = _JSON_COLON.match(syms.text, syms.index[m.start() + len(key)])
        if colon is not None:
            out.append(_json_value(data, syms, colon.end(), spec, item))
    return out


def _json_value(data: bytes, syms: _Symbols, i: int, spec: OracleSpec, item: int) -> Candidate:
    text, n = syms.text, len(syms.text)
    i = _WS_RUN.match(text, i).end()
    if i == n:
        return Candidate(TRUNCATED)
    if text[i] == '"':
        start = syms.offsets[i] + 1
        close = data.find(b'"', start, start + CONTENT_CAP)
        if close < 0:
            return Candidate(TRUNCATED if start + CONTENT_CAP >= len(data) else MALFORMED)
        content = data[start:close]
        if b"\\" in content:
            return Candidate(MALFORMED)
        return _content_value(content, spec, item)
    if _SIGN.match(text, i).end() == n:
        return Candidate(TRUNCATED)
    num = _NUMBER_RE.match(text, i)
    if num is None or _too_long(num.group()):
        return Candidate(MALFORMED)
    term = _JSON_TERMINATOR.match(text, num.end())
    if term.group(1) is None:
        return Candidate(TRUNCATED if term.end() == n else MALFORMED)
    return _number_value(num.group(), None, spec, item)


def _boxed_candidates(data: bytes, spec: OracleSpec, item: int) -> list[Candidate]:
    out = []
    for m in re.finditer(re.escape(b"\\boxed{"), data):  # "\boxed{" cannot overlap itself
        s = m.end()
        depth, end = 1, None
        for j, byte in enumerate(data[s:s + CONTENT_CAP]):
            depth += byte == 0x7B
            depth -= byte == 0x7D
            if depth == 0:
                end = s + j
                break
        if end is None:
            status = TRUNCATED if s + CONTENT_CAP >= len(data) else MALFORMED
            out.append(Candidate(status, span=(s, min(s + CONTENT_CAP, len(data)))))
        else:
            c = _content_value(data[s:end], spec, item)
            out.append(Candidate(c.status, c.value, (s, end)))
    return out


# ---- items and selection ---------------------------------------------------------------------
def _same(a: Candidate, b: Candidate) -> bool:
    return a.status == b.status and (a.status != OK or a.value == b.value)


def _select(cands: list[Candidate], how: str) -> Candidate:
    if not cands:
        return Candidate(MISSING)
    if how == "first":
        return cands[0]
    if how == "last":
        return cands[-1]
    last = cands[-1]
    if all(_same(c, last) for c in cands):
        return last
    return Candidate(AMBIGUOUS, span=last.span)


def _candidates(data: bytes, name: bytes, spec: OracleSpec, item: int, cache: dict) -> list[Candidate]:
    fmt = spec.format
    if fmt in ("tag", "verdict"):
        return _tag_candidates(data, name, spec, item)
    if fmt == "boxed":
        return _boxed_candidates(data, spec, item)
    if "syms" not in cache:
        cache["syms"] = _Symbols(data)
    if fmt == "kv":
        return _kv_candidates(data, name, spec, item, cache["syms"])
    return _json_candidates(data, name, spec, item, cache["syms"])


def _full_name(spec: OracleSpec, base: bytes, nonce: bytes) -> bytes:
    return base + b"-" + nonce if nonce else base


def parse_text(data: bytes, spec: OracleSpec, nonce: bytes | None = None) -> list[Candidate]:
    """The k selected results for one text."""
    nonce = spec.nonce if nonce is None else nonce
    if spec.format in ("kv", "boxed"):
        nonce = b""
    cache: dict = {}
    if spec.by_name:
        return [_select(_candidates(data, _full_name(spec, n, nonce), spec, i, cache), spec.select)
                for i, n in enumerate(spec.names)]
    name = _full_name(spec, spec.names[0], nonce) if spec.names else b""
    # Order mode: candidates are parsed against each item's own range, so parse per item lazily.
    k = spec.k
    per_item: list[list[Candidate]] = []
    first_pass = _candidates(data, name, spec, 0, cache)
    m = len(first_pass)
    for i in range(k):
        cands = first_pass if i == 0 else _candidates(data, name, spec, i, cache)
        window = [cands[i]] if m <= k and i < m else ([] if m <= k else cands[i:i + m - k + 1])
        per_item.append(window)
    return [_select(w, spec.select) for w in per_item]


def to_bytes(text) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8", "surrogatepass")
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"text has type {type(text).__name__}, expected str or bytes")


def float32(x: float) -> float:
    """x rounded to float32 (round to nearest even), as a Python float."""
    return struct.unpack("f", struct.pack("f", x))[0]


def parse_scores(texts, spec, nonces=None) -> tuple[list[list[float]], list[list[int]], list[list[tuple[int, int]]]]:
    """Oracle for mpo_fast.parse_scores: (values as float32-rounded floats, statuses, spans), lists [n][k].

    `spec` is an OracleSpec or a ScoreSpec; `nonces` optionally one nonce per text.
    """
    if not isinstance(spec, OracleSpec):
        spec = OracleSpec.from_spec(spec)
    values, statuses, spans = [], [], []
    for t, text in enumerate(texts):
        nonce = None if nonces is None else to_bytes(nonces[t])
        try:
            data = to_bytes(text)
        except TypeError:
            raise TypeError(f"texts[{t}] has type {type(text).__name__}, expected str or bytes") from None
        res = parse_text(data, spec, nonce)
        values.append([float32(c.value) if c.status == OK else math.nan for c in res])
        statuses.append([c.status for c in res])
        spans.append([c.span if spec.format in ("tag", "verdict", "boxed") else (-1, -1) for c in res])
    return values, statuses, spans
