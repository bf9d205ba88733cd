"""Hypothesis strategies for judge-like text: fragments of every format's grammar, glued together
with random bytes, so that random draws hit the interesting edges (near-tags, truncations,
full-width digits, fractions, brackets, nested braces) far more often than uniform bytes would."""
from __future__ import annotations

from hypothesis import strategies as st

from mpo_fast.parsing import ScoreSpec

FRAGMENTS = [
    b"<score>", b"</score>", b"<score", b"</sco", b"<", b">", b"/", b"<verdict>", b"</verdict>",
    b"<score-ab1>", b"</score-ab1>", b"<a>", b"</a>", b"<b>", b"</b>", b"<a-a>", b"</a-a>",
    b"Score", b"score", b"SCORE", b"Rating", b"sub", b"a-a", b"_", b"*", b"**", b":", b"=", b"\xef\xbc\x9a",
    b"[", b"[[", b"]", b"]]", b'"score"', b'"a"', b'"', b"{", b"}", b",", b"\\boxed{", b"\\frac", b"\\dfrac",
    b" ", b"  ", b"\t", b"\n", b"\xc2\xa0", b"\xe3\x80\x80", b"+", b"-", b"\xe2\x88\x92", b".", b"..",
    b"0", b"1", b"7", b"10", b"3.5", b"007", b"1e5", b"nan", b"inf", b"123456789012345", b"1234567890123456",
    b"\xef\xbc\x97", b"\xef\xbc\x8e", b"\xef\xbc\x8f", b"\xef\xbc", b"\xef", b"\xbc", b"\x00", b"\xff",
    b"RIGHT", b"right", b"WRONG", b"Right ", b"wrong\n", b"null",
]

fragment = st.sampled_from(FRAGMENTS)
judge_bytes = st.lists(st.one_of(fragment, fragment, fragment, st.binary(max_size=4)), max_size=30).map(b"".join)

SPECS = [
    ScoreSpec(),
    ScoreSpec(select="first"),
    ScoreSpec(select="unique"),
    ScoreSpec(integer=False, lo=-5, hi=5),
    ScoreSpec(fractions="divide", integer=False, lo=0, hi=1),
    ScoreSpec(fractions="reject"),
    ScoreSpec(k=2, select="unique", lo=(0, 1), hi=(10, 5)),
    ScoreSpec(k=3, select="last"),
    ScoreSpec(k=2, item_names=("a", "b"), select="unique"),
    ScoreSpec(k=2, item_names=("a", "a-a")),
    ScoreSpec(nonce="ab1"),
    ScoreSpec(format="kv"),
    ScoreSpec(format="kv", name="rating", select="first", integer=False),
    ScoreSpec(format="kv", k=2, item_names=("a", "a-a"), select="unique"),
    ScoreSpec(format="kv", k=2, select="unique", hi=(10, 3)),
    ScoreSpec(format="json"),
    ScoreSpec(format="json", k=2, item_names=("score", "a"), integer=False, select="first"),
    ScoreSpec(format="verdict", labels=("WRONG", "RIGHT")),
    ScoreSpec(format="verdict", labels={"RIGHT": 1.0, "WRONG": -1.0, "right": 0.5}, case_sensitive=True, select="unique"),
    ScoreSpec(format="boxed"),
    ScoreSpec(format="boxed", k=2, select="unique", integer=True, lo=0, hi=100, fractions="scale"),
]

spec_strategy = st.sampled_from(SPECS)

# ---- structured judge text: a trigger, a value and a closer, each drawn with its near-misses ----
NAMES = [b"score", b"a", b"b", b"a-a", b"rating", b"verdict", b"score-ab1", b"Score", b"RATING"]
_digit = st.sampled_from([b"0", b"1", b"5", b"7", b"9", b"\xef\xbc\x97", b"\xef\xbc\x90"])
_digits = st.lists(_digit, min_size=1, max_size=17).map(b"".join)
_ws = st.sampled_from([b"", b"", b" ", b"  ", b"\t", b"\n", b"\xc2\xa0", b"\xe3\x80\x80"])
_sign = st.sampled_from([b"", b"", b"", b"+", b"-", b"\xe2\x88\x92", b"\xef\xbc\x8d", b"--"])
_dot = st.sampled_from([b".", b"\xef\xbc\x8e"])


@st.composite
def number_text(draw) -> bytes:
    out = draw(_ws) + draw(_sign)
    shape = draw(st.integers(0, 3))
    if shape == 0:
        out += draw(_digits)
    elif shape == 1:
        out += draw(_digits) + draw(_dot) + draw(_digits)
    elif shape == 2:
        out += draw(_dot) + draw(_digits)
    else:
        out += draw(_digits) + draw(_dot)
    if draw(st.booleans()):
        out += draw(_ws) + draw(st.sampled_from([b"/", b"\xef\xbc\x8f", b"//"])) + draw(_ws)
        out += draw(st.sampled_from([b"10", b"5", b"0", b"100", b"3.5", b"0.0", b"", b"x"]))
    out += draw(_ws)
    if draw(st.integers(0, 6)) == 0:
        out += draw(st.sampled_from([b"e5", b"x", b"nan", b"inf", b"%", b".", b",5", b"abc", b"!"]))
    return out


@st.composite
def scored_fragment(draw) -> bytes:
    name = draw(st.sampled_from(NAMES))
    kind = draw(st.sampled_from(["tag", "kv", "json", "boxed", "verdict"]))
    if kind == "verdict":
        value = draw(_ws) + draw(st.sampled_from([b"RIGHT", b"right", b"WRONG", b"Wrong", b"RIGHTish", b""])) + draw(_ws)
    else:
        value = draw(number_text())
    if kind in ("tag", "verdict"):
        close = draw(st.sampled_from([b"</" + name + b">", b"</" + name + b">", b"</" + name, b"</", b"<", b"", b"</x>"]))
        return b"<" + name + b">" + value + close
    if kind == "kv":
        pre = draw(st.sampled_from([b"", b" ", b"**", b"x", b"_", b"\n"]))
        mid = draw(st.sampled_from([b"", b" ", b"**", b"_ ", b" \t"]))
        sep = draw(st.sampled_from([b":", b"=", b"\xef\xbc\x9a", b" -"]))
        post = draw(st.sampled_from([b" ", b"", b"**", b" **", b"\n"]))
        br = draw(st.integers(0, 2))
        close = b"]" * draw(st.integers(max(0, br - 1), br)) if br else b""
        return pre + name + mid + sep + post + b"[" * br + value + close + draw(st.sampled_from([b"", b".", b"**", b"\n", b" out of 10"]))
    if kind == "json":
        body = draw(st.sampled_from([value, b'"' + value + b'"', b'"' + value, b"null", b"true"]))
        end = draw(st.sampled_from([b"}", b",", b"]", b"", b" }", b"x"]))
        return b'{"' + name + b'"' + draw(_ws) + b":" + draw(_ws) + body + end
    opener = draw(st.sampled_from([b"\\boxed{", b"\\boxed{\\frac{", b"\\boxed{\\dfrac{"]))
    if opener != b"\\boxed{":
        return opener + value + b"}{" + draw(_digits) + draw(st.sampled_from([b"}}", b"}", b"} }", b""]))
    return opener + value + draw(st.sampled_from([b"}", b"}", b"", b"{}}", b"}}"]))


structured_text = st.lists(
    st.one_of(scored_fragment(), scored_fragment(), fragment, st.binary(max_size=6)), max_size=8
).map(b"".join)
any_text = st.one_of(structured_text, structured_text, judge_bytes)
