"""What a judge must write and how it is read: ScoreSpec, ScoreStatus, ParsedScores.

The grammar below is the contract shared by the C++ parser (csrc/cpu/parse_scores.cpp), the
pure-Python oracle (mpo_fast/reference/parse_scores.py) and the token-id kernel
(kernels/parse_tokens.py). Tests hold all of them to it byte for byte.

Text
    Texts are bytes; a str is encoded as UTF-8 (lone surrogates with "surrogatepass"). Invalid
    UTF-8 is just bytes that match nothing. Text is read as *symbols*: these byte sequences are
    one symbol each (full-width forms that judges in CJK locales write),
        EF BC 90..99 -> '0'..'9'   EF BC 8B -> '+'   EF BC 8D -> '-'   E2 88 92 -> '-' (U+2212)
        EF BC 8E -> '.'            EF BC 8F -> '/'   EF BC 9A -> ':'
        C2 A0 -> ' ' (no-break space)   E3 80 80 -> ' ' (ideographic space)
    and every other byte is a symbol of its own. W is the symbols ' ' \\t \\n \\r \\f \\v; D is '0'..'9'.

Numbers (hand-written; nothing is ever evaluated)
    MANT   := D+ ('.' D+)? | '.' D+
    NUMBER := ('+' | '-')? MANT
    VALUE  := W* NUMBER (W* '/' W* MANT)? W*  (the whole delimited content must match)
    A NUMBER or MANT has at most 15 digits (more is MALFORMED, never rounded): every accepted
    literal is then exactly M / 10**f in float64 with M < 2**53, the same on CPU and GPU.
    No exponents, nan, inf, thousands separators or expressions: those are MALFORMED.
    `integer=True`: a non-zero digit after '.' (in NUMBER or in the denominator) is MALFORMED ("7.0" is 7).
    Fractions a/b: b == 0 is MALFORMED; `fractions="reject"` makes any '/' MALFORMED, "divide" gives
    a/b, "scale" gives a when b == hi else a*hi/b ("7/10" on 0-10 is 7, "4/5" on 0-10 is 8).
    The value (float64, conversion correctly rounded) must lie in [lo, hi] of its item, else
    OUT_OF_RANGE. Values are reported as float32, NaN whenever the status is not OK.

Formats (every occurrence of the trigger is a candidate, in order of its start byte)
    tag      trigger `<NAME>`; content runs to the first '<' within 256 bytes. If that '<' starts
             `</NAME>` the content is parsed as VALUE; if the text ends inside `</NAME>` or inside
             the 256-byte window with no '<', TRUNCATED; otherwise (another '<', or 256 bytes with
             no '<') MALFORMED.
    verdict  as tag, but the content with W trimmed on both sides must equal a label (ASCII
             case-insensitive unless case_sensitive); else MALFORMED. The value is the label's.
    kv       trigger: NAME (ASCII case-insensitive, the byte before it not [A-Za-z0-9_]), then any
             of ' ' \\t * _ bytes, then the symbol ':' or '='. Then: skip W * _; up to two '['; W*;
             NUMBER; optionally W* '/' W* MANT; W* and as many ']' as there were '['. The symbol after
             that must not be an ASCII letter, D or '/', nor '.' or ',' followed by D. Running out
             of text before the number's first digit, inside a fraction or before the closing
             brackets is TRUNCATED; anything else that does not fit is MALFORMED.
             (`Score: 7`, `**Score:** 7/10`, `Rating: [[8]]`.)
    json     trigger `"NAME"` W* ':'. Then W*; a string value `"..."` (closing quote within 256
             bytes, no backslash inside) whose content is parsed as VALUE, or NUMBER followed by
             W* and one of , } ] (no fraction). End of text before the value or its terminator
             is TRUNCATED.
    boxed    trigger `\\boxed{`; content runs to the matching '}' (braces nest, counted within 256
             bytes; none -> TRUNCATED at end of text, MALFORMED otherwise) and is parsed as
             W* (FRAC | NUMBER (W* '/' W* MANT)?) W* with
             FRAC := ('\\frac' | '\\dfrac' | '\\tfrac') W* '{' W* NUMBER W* '}' W* '{' W* MANT W* '}'.

Items and selection
    `item_names` set: item i's candidates are the triggers of its own name. Otherwise all
    candidates share `name` and are assigned by order: with m candidates and k items, item i's
    candidates are the m-k+1 in positions i .. i+m-k (just position i, when m <= k; items past
    m are MISSING). `select`: "first" / "last" take the first / last of an item's candidates;
    "unique" gives their common result when all agree (same status, and same value when OK),
    else AMBIGUOUS. No candidate: MISSING.

Nonce
    With `nonce="3f9a1c"` every name becomes `NAME-3f9a1c` (tag, verdict, json): text a policy
    wrote before the nonce existed can never carry the judge's score. Per-text nonces can be
    passed to `parse_scores(..., nonces=[...])`.

Spans
    For tag, verdict and boxed, `spans[i, j]` holds the byte offsets [start, end) of the selected
    candidate's content (the last one for "unique"), -1 elsewhere.
"""
from __future__ import annotations

import enum
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import cached_property

import torch

FORMATS = ("tag", "kv", "json", "verdict", "boxed")
SELECTS = ("first", "last", "unique")
FRACTIONS = ("scale", "divide", "reject")
NAMED_FORMATS = ("tag", "kv", "json", "verdict")
NONCE_FORMATS = ("tag", "json", "verdict")

MAX_CONTENT_BYTES = 256  # a delimited value longer than this is not a score (and bounds the work per candidate)
MAX_DIGITS = 15  # more digits in a number are MALFORMED, not rounded (M / 10**f stays exact in float64)
MAX_ABS_BOUND = 1e15  # |lo|, |hi| limit: every in-range integer stays exact in float64

_NAME_RE = re.compile(r"[A-Za-z](?:[A-Za-z0-9_.\-]{0,62}[A-Za-z0-9])?\Z")
_NONCE_RE = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_W = " \t\n\r\f\v"


class ScoreStatus(enum.IntEnum):
    """Outcome of reading one item of one text. Only OK carries a value."""

    OK = 0
    MISSING = 1  # no candidate for the item
    MALFORMED = 2  # a candidate that does not fit the grammar (text, nan, 1e3, 7.5 for integers, ...)
    OUT_OF_RANGE = 3  # a well-formed number outside [lo, hi]
    AMBIGUOUS = 4  # select="unique" and the candidates disagree
    TRUNCATED = 5  # the text ends inside a candidate


def _as_bound_tuple(value, k: int, what: str) -> tuple[float, ...]:
    if isinstance(value, (tuple, list)):
        if len(value) != k:
            raise ValueError(f"ScoreSpec.{what} has {len(value)} entries, expected k={k} (one per item) or one number")
        values = tuple(value)
    else:
        values = (value,) * k
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"ScoreSpec.{what}[{i}] is {type(v).__name__}, expected a number")
        v = float(v)
        if math.isnan(v):
            raise ValueError(f"ScoreSpec.{what}[{i}] is NaN; use a number (or +-inf for no bound)")
        if math.isfinite(v) and abs(v) > MAX_ABS_BOUND:
            raise ValueError(f"ScoreSpec.{what}[{i}]={v} exceeds {MAX_ABS_BOUND:g} in magnitude; use +-inf for no bound")
        out.append(v)
    return tuple(out)


def _check_name(name, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"ScoreSpec.{what}={name!r} is not a valid name: use 1-64 ASCII characters [A-Za-z0-9_.-], "
            "starting with a letter and ending with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class ScoreSpec:
    """How judge text carries k scores, and how they are read (grammar in this module's docstring).

    format: "tag" (`<score>7</score>`), "kv" (`Score: 7`, `Rating: [[8]]`, `Score: 7/10`),
        "json" (`{"score": 7}` anywhere), "verdict" (`<verdict>RIGHT</verdict>`), "boxed"
        (`\\boxed{42}`, the math answer).
    k: items per text (one per rubric item).
    name: the tag / key / field shared by all items, matched by order. Default "score"
        ("verdict" for verdict; unused by boxed).
    item_names: one name per item instead; item i is then read from its own name.
    lo, hi: inclusive range, a number or one per item. Defaults 0 and 10 (boxed: unbounded;
        verdict: from the labels' values, not settable).
    integer: scores must be written as integers ("7", "7.0"). Default True (boxed: False).
    fractions: "scale" (`7/10` on 0-10 is 7), "divide" (a/b) or "reject". Default "scale"
        (boxed: "divide").
    select: "first", "last" (default: rationale first, score last) or "unique" (AMBIGUOUS if
        the candidates disagree).
    nonce: appended to every name as `NAME-nonce` (tag, json, verdict). See `with_nonce`.
    labels: verdict labels, a tuple (values 0, 1, ...) or a mapping label -> value.
    case_sensitive: verdict labels match case-sensitively (default: ASCII case-insensitive).
    """

    format: str = "tag"
    k: int = 1
    name: str | None = None
    item_names: tuple[str, ...] | None = None
    lo: float | tuple[float, ...] | None = None
    hi: float | tuple[float, ...] | None = None
    integer: bool | None = None
    fractions: str | None = None
    select: str = "last"
    nonce: str | None = None
    labels: tuple[str, ...] | Mapping[str, float] | tuple[tuple[str, float], ...] | None = None
    case_sensitive: bool = False

    def __post_init__(self):
        s = lambda key, value: object.__setattr__(self, key, value)  # noqa: E731 (frozen dataclass)
        if self.format not in FORMATS:
            raise ValueError(f"ScoreSpec.format={self.format!r} is unknown; expected one of {FORMATS}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= 4096:
            raise ValueError(f"ScoreSpec.k={self.k!r} must be an int in [1, 4096] (one per rubric item)")
        if self.select not in SELECTS:
            raise ValueError(f"ScoreSpec.select={self.select!r} is unknown; expected one of {SELECTS}")
        fmt = self.format
        # names
        if fmt == "boxed":
            if self.item_names is not None or self.name is not None:
                raise ValueError("ScoreSpec: format='boxed' has no names; drop name/item_names (items go by order)")
        else:
            if self.name is None:
                s("name", "verdict" if fmt == "verdict" else "score")
            _check_name(self.name, "name")
            if self.item_names is not None:
                if isinstance(self.item_names, str) or not isinstance(self.item_names, (tuple, list)):
                    raise TypeError("ScoreSpec.item_names must be a tuple of str, one per item")
                names = tuple(_check_name(n, f"item_names[{i}]") for i, n in enumerate(self.item_names))
                if len(names) != self.k:
                    raise ValueError(f"ScoreSpec.item_names has {len(names)} names, expected k={self.k}")
                folded = [n.lower() for n in names] if fmt == "kv" else list(names)
                if len(set(folded)) != len(folded):
                    raise ValueError(f"ScoreSpec.item_names has duplicates{' (kv keys ignore case)' if fmt == 'kv' else ''}: {names}")
                s("item_names", names)
        if self.nonce is not None:
            if fmt not in NONCE_FORMATS:
                raise ValueError(f"ScoreSpec.nonce applies to formats {NONCE_FORMATS}, not {fmt!r}")
            if not isinstance(self.nonce, str) or not _NONCE_RE.match(self.nonce):
                raise ValueError(f"ScoreSpec.nonce={self.nonce!r} must be 1-32 ASCII letters/digits, e.g. ScoreSpec.new_nonce()")
        # labels
        if fmt == "verdict":
            if self.lo is not None or self.hi is not None:
                raise ValueError("ScoreSpec: verdict values come from `labels`; drop lo/hi")
            pairs = self._label_pairs(self.labels)
            s("labels", pairs)
            values = [v for _, v in pairs]
            s("lo", (min(values),) * self.k)
            s("hi", (max(values),) * self.k)
            s("integer", False)
            s("fractions", "reject")
        else:
            if self.labels is not None:
                raise ValueError(f"ScoreSpec.labels apply to format='verdict' only, not {fmt!r}")
            boxed = fmt == "boxed"
            lo = (-math.inf if boxed else 0.0) if self.lo is None else self.lo
            hi = (math.inf if boxed else 10.0) if self.hi is None else self.hi
            s("lo", _as_bound_tuple(lo, self.k, "lo"))
            s("hi", _as_bound_tuple(hi, self.k, "hi"))
            for i, (a, b) in enumerate(zip(self.lo, self.hi)):
                if a > b:
                    raise ValueError(f"ScoreSpec: lo[{i}]={a} > hi[{i}]={b}; the range is [lo, hi] with lo <= hi")
            if self.integer is None:
                s("integer", not boxed)
            if not isinstance(self.integer, bool):
                raise TypeError(f"ScoreSpec.integer must be a bool, got {self.integer!r}")
            if self.fractions is None:
                s("fractions", "divide" if boxed else "scale")
            if self.fractions not in FRACTIONS:
                raise ValueError(f"ScoreSpec.fractions={self.fractions!r} is unknown; expected one of {FRACTIONS}")
            if self.fractions == "scale":
                bad = [i for i, b in enumerate(self.hi) if not (math.isfinite(b) and b > 0)]
                if bad:
                    raise ValueError(
                        f"ScoreSpec.fractions='scale' maps a/b to a*hi/b and needs a finite hi > 0, but hi[{bad[0]}]="
                        f"{self.hi[bad[0]]}; use fractions='divide' or 'reject'"
                    )
        if not isinstance(self.case_sensitive, bool):
            raise TypeError(f"ScoreSpec.case_sensitive must be a bool, got {self.case_sensitive!r}")

    def _label_pairs(self, labels) -> tuple[tuple[str, float], ...]:
        if labels is None or len(labels) == 0:
            raise ValueError("ScoreSpec(format='verdict') needs a non-empty label set, e.g. labels=('WRONG', 'RIGHT')")
        if isinstance(labels, str):
            raise TypeError("ScoreSpec.labels is a str; pass a tuple of labels, e.g. ('WRONG', 'RIGHT')")
        if isinstance(labels, Mapping):
            pairs = list(labels.items())
        elif all(isinstance(x, (tuple, list)) and len(x) == 2 for x in labels):
            pairs = [tuple(x) for x in labels]
        else:
            pairs = [(lab, float(i)) for i, lab in enumerate(labels)]
        out = []
        for lab, val in pairs:
            if not isinstance(lab, str) or not lab or lab != lab.strip(_W) or "<" in lab or "\x00" in lab:
                raise ValueError(
                    f"ScoreSpec label {lab!r} is invalid: labels are non-empty str without '<', NUL or "
                    "leading/trailing whitespace"
                )
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
                raise ValueError(f"ScoreSpec label {lab!r} has value {val!r}; values must be finite numbers")
            out.append((lab, float(val)))
        keys = [lab if self.case_sensitive else lab.lower() for lab, _ in out]
        if len(set(keys)) != len(keys):
            raise ValueError(f"ScoreSpec.labels has duplicates{'' if self.case_sensitive else ' (ignoring case)'}: {[l for l, _ in out]}")
        return tuple(out)

    # ---- what a judge must write ------------------------------------------------------------
    @staticmethod
    def new_nonce() -> str:
        """A fresh random nonce: 6 hex digits (24 bits), unguessable by a policy that never sees it."""
        return secrets.token_hex(3)

    def with_nonce(self, nonce: str | None = None) -> ScoreSpec:
        """This spec with `nonce` (a fresh one by default) in every name."""
        return replace(self, nonce=self.new_nonce() if nonce is None else nonce, lo=self._user_lo(), hi=self._user_hi())

    def _user_lo(self):
        return None if self.format == "verdict" else self.lo

    def _user_hi(self):
        return None if self.format == "verdict" else self.hi

    def tag_name(self, i: int = 0, nonce: str | None = None) -> str:
        """The name item i is written under (with the nonce), e.g. "score-3f9a1c"."""
        self._check_item(i)
        if self.format == "boxed":
            return "boxed"
        base = self.item_names[i] if self.item_names is not None else self.name
        nonce = self.nonce if nonce is None else nonce
        return f"{base}-{nonce}" if nonce and self.format in NONCE_FORMATS else base

    def format_value(self, value: float, i: int = 0) -> str:
        """`value` written the way the parser reads it back exactly (no exponent, no rounding)."""
        self._check_item(i)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"score {value!r} is not a finite number")
        if not self.lo[i] <= value <= self.hi[i]:
            raise ValueError(f"score {value} is outside item {i}'s range [{self.lo[i]}, {self.hi[i]}]")
        if self.integer and value != int(value):
            raise ValueError(f"score {value} is not an integer, but ScoreSpec.integer is True")
        if value == int(value) and abs(value) < 1e15:
            text = str(int(value))
        else:
            text = format(Decimal(repr(float(value))), "f")
        digits = sum(ch.isdigit() for ch in text)
        if digits > MAX_DIGITS:
            raise ValueError(f"score {value} needs {digits} digits; the parser reads at most {MAX_DIGITS}")
        return text

    def format_score(self, value: float | str, i: int = 0, nonce: str | None = None) -> str:
        """The exact text a judge writes to give item i the score `value` (a label for verdicts).

        tag `<score-3f9a1c>7</score-3f9a1c>`, kv `score: 7`, verdict `<verdict>RIGHT</verdict>`,
        boxed `\\boxed{7}`; json gives the field `"score": 7`, which goes inside the judge's object
        (a JSON number is read up to its `,` `}` or `]`).
        """
        name = self.tag_name(i, nonce)
        if self.format == "verdict":
            label = self._label_for(value)
            return f"<{name}>{label}</{name}>"
        v = self.format_value(value, i)
        if self.format == "tag":
            return f"<{name}>{v}</{name}>"
        if self.format == "kv":
            return f"{name}: {v}"
        if self.format == "json":
            return f'"{name}": {v}'
        return f"\\boxed{{{v}}}"

    def _label_for(self, value) -> str:
        for lab, val in self.labels:
            if value == lab or (not isinstance(value, str) and value == val):
                return lab
        raise ValueError(f"{value!r} is neither a label nor a label value of {self.labels}")

    def _check_item(self, i: int) -> None:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.k:
            raise IndexError(f"item {i!r} out of range for k={self.k}")

    # ---- for the parsers --------------------------------------------------------------------
    def names(self, nonce: str | None = None) -> tuple[str, ...]:
        """The names searched for: one per item (item_names) or the single shared name."""
        if self.format == "boxed":
            return ()
        count = self.k if self.item_names is not None else 1
        return tuple(self.tag_name(i, nonce) for i in range(count))

    @property
    def by_name(self) -> bool:
        return self.item_names is not None

    @cached_property
    def native_args(self) -> dict:
        """This spec as the plain dict csrc/cpu/parse_scores.cpp reads (names without the nonce)."""
        bases = () if self.format == "boxed" else (self.item_names if self.item_names is not None else (self.name,))
        return {
            "format": FORMATS.index(self.format),
            "k": self.k,
            "by_name": self.by_name,
            "names": [b.encode() for b in bases],
            "nonce": (self.nonce or "").encode(),
            "select": SELECTS.index(self.select),
            "integer": bool(self.integer),
            "fractions": FRACTIONS.index(self.fractions),
            "lo": list(self.lo),
            "hi": list(self.hi),
            "labels": [lab.encode() for lab, _ in self.labels] if self.format == "verdict" else [],
            "label_values": [v for _, v in self.labels] if self.format == "verdict" else [],
            "case_sensitive": self.case_sensitive,
        }


@dataclass(frozen=True)
class ParsedScores:
    """Scores read from n texts, k items each.

    values: float32 [n, k], NaN wherever status is not OK.
    status: int8 [n, k] of ScoreStatus.
    spans: int64 [n, k, 2] byte offsets [start, end) of the selected content (tag, verdict,
        boxed), -1 elsewhere; None from the token-id parser.
    """

    values: torch.Tensor
    status: torch.Tensor
    spans: torch.Tensor | None = field(default=None, compare=False)

    @property
    def ok(self) -> torch.Tensor:
        """bool [n, k]: the items that carry a score."""
        return self.status == ScoreStatus.OK

    @property
    def all_ok(self) -> torch.Tensor:
        """bool [n]: texts whose every item carries a score."""
        return self.ok.all(dim=-1)

    def __len__(self) -> int:
        return self.values.shape[0]

    def status_counts(self) -> dict[str, int]:
        """How many items ended in each status, e.g. for logging the parse-failure rate."""
        counts = torch.bincount(self.status.flatten().to(torch.int64).cpu(), minlength=len(ScoreStatus))
        return {s.name: int(counts[s]) for s in ScoreStatus}
