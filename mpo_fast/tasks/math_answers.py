"""Final-answer checking for math: the last \\boxed{...} against the reference answer.

Equivalent forms must match (3/4, \\frac{3}{4}, \\dfrac34, 0.75, "x = 0.75") and different
values must not. Numbers are compared exactly as fractions, never as floats, so 0.333 does not
equal 1/3. Nothing here evaluates expressions: the response is untrusted text.
"""

from __future__ import annotations

import re
from fractions import Fraction

_BOX_START = re.compile(r"\\(?:boxed|fbox)\b\s*")
_INT = r"\d+"
_DEC = r"(?:\d+\.\d*|\.\d+)"
_THOUSANDS = re.compile(r"^\d{1,3}(?:,\d{3})+$")
_FRAC_BRACED = re.compile(r"^\\frac\{([^{}]+)\}\{([^{}]+)\}$")
_MIXED = re.compile(r"^(\d+)(\\frac.*)$")  # 2\frac{1}{2}
_SLASH = re.compile(r"^([+-]?(?:" + _DEC + "|" + _INT + r"))/([+-]?(?:" + _DEC + "|" + _INT + r"))$")
_PLAIN = re.compile(r"^[+-]?(?:" + _DEC + "|" + _INT + r")$")
_ASSIGNMENT = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*\s*=\s*(?=[^=])")
_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
# "12 cm", "45 km/h", "3 apples": a number, a space, then words. "3x" (no space) stays unparsed.
_TRAILING_UNITS = re.compile(r"^(.*?\d)\s+[a-zA-Z][a-zA-Z/]*\.?(?:\s+[a-zA-Z][a-zA-Z/]*\.?)*$")
# Python refuses int() of strings over 4300 digits; no real answer is anywhere near 200 chars.
_MAX_NUMBER_CHARS = 200


def extract_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} (or \\fbox{...}); braces may nest.

    `\\boxed 5` (no braces) gives "5". None when there is no box or the last one never closes.
    """
    if not isinstance(text, str):
        raise TypeError(f"response must be a string, got {type(text).__name__}")
    for start in reversed([m.end() for m in _BOX_START.finditer(text)]):
        if start < len(text) and text[start] == "{":
            depth = 0
            for i in range(start, len(text)):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[start + 1 : i].strip()
            continue  # unbalanced: try an earlier box
        token = re.match(r"[^\s$]+", text[start:])
        if token:
            return token.group().rstrip(".,;")
    return None


def normalise_answer(answer: str) -> str:
    """Strip LaTeX noise that does not change the value; the result is compared as text when
    it is not a number."""
    s = answer.strip()
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            s = s[len(left) : -len(right)].strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    # LaTeX shorthand with one-character arguments: \frac34 = \frac{3}{4}, \sqrt2 = \sqrt{2}.
    s = re.sub(r"\\frac\s*(\w)\s*(\w)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", s)
    for noise in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle"):
        s = s.replace(noise, "")
    s = s.replace("\\ ", " ").replace("~", " ")
    while True:
        unwrapped = _WRAPPERS.sub(r"\1", s)
        if unwrapped == s:
            break
        s = unwrapped
    for symbol in ("^{\\circ}", "^\\circ", "\\circ", "°", "\\%", "%", "\\$", "$"):
        s = s.replace(symbol, "")
    s = s.replace("−", "-").strip()  # Unicode minus
    s = _ASSIGNMENT.sub("", s, count=1)
    return s.rstrip(".").strip()


def _number(text: str) -> Fraction | None:
    s = text.replace(" ", "")
    sign = 1
    if s[:1] in "+-" and s[1:].startswith("\\frac"):
        sign, s = (-1 if s[0] == "-" else 1), s[1:]
    if _THOUSANDS.match(s):
        return Fraction(int(s.replace(",", "")))
    if _PLAIN.match(s):
        return Fraction(s)
    slash = _SLASH.match(s)
    if slash:
        den = Fraction(slash.group(2))
        return None if den == 0 else Fraction(slash.group(1)) / den
    mixed = _MIXED.match(s)
    if mixed:
        part = _number(mixed.group(2))
        return None if part is None or part < 0 else sign * (int(mixed.group(1)) + part)
    braced = _FRAC_BRACED.match(s)
    if braced:
        num, den = (_number(braced.group(k)) for k in (1, 2))
        if num is None or den is None or den == 0:
            return None
        return sign * num / den
    return None


def parse_number(answer: str) -> Fraction | None:
    """Exact value of an integer, decimal, a/b, \\frac{a}{b} or mixed number; None otherwise.

    A trailing unit word is ignored ("12 cm" -> 12)."""
    s = normalise_answer(answer)
    if not s or len(s) > _MAX_NUMBER_CHARS:
        return None
    value = _number(s)
    if value is None:
        units = _TRAILING_UNITS.match(s)
        if units:
            value = _number(units.group(1))
    return value


def answers_match(predicted: str, reference: str) -> bool:
    """Same number (exactly), or the same text after normalisation when either is not a number."""
    p, r = parse_number(predicted), parse_number(reference)
    if p is not None and r is not None:
        return p == r
    if (p is None) != (r is None):
        return False
    predicted_key, reference_key = (normalise_answer(s).replace(" ", "").casefold() for s in (predicted, reference))
    return bool(predicted_key) and predicted_key == reference_key
