"""ScoreSpec: defaults, validation errors that say what to fix, and the exact text judges must write."""
import math
import re

import pytest
import torch

from mpo_fast.parsing import ParsedScores, ScoreSpec, ScoreStatus


def test_status_codes_are_the_contract():
    assert [(s.name, int(s)) for s in ScoreStatus] == [
        ("OK", 0), ("MISSING", 1), ("MALFORMED", 2), ("OUT_OF_RANGE", 3), ("AMBIGUOUS", 4), ("TRUNCATED", 5)
    ]


def test_defaults_per_format():
    tag = ScoreSpec()
    assert (tag.name, tag.lo, tag.hi, tag.integer, tag.fractions, tag.select) == ("score", (0.0,), (10.0,), True, "scale", "last")
    boxed = ScoreSpec(format="boxed", k=2)
    assert boxed.lo == (-math.inf,) * 2 and boxed.hi == (math.inf,) * 2
    assert boxed.integer is False and boxed.fractions == "divide" and boxed.name is None
    verdict = ScoreSpec(format="verdict", labels=("WRONG", "RIGHT"))
    assert verdict.name == "verdict" and verdict.labels == (("WRONG", 0.0), ("RIGHT", 1.0))
    assert verdict.lo == (0.0,) and verdict.hi == (1.0,)
    mapped = ScoreSpec(format="verdict", labels={"RIGHT": 1, "WRONG": -10})
    assert dict(mapped.labels) == {"RIGHT": 1.0, "WRONG": -10.0} and mapped.lo == (-10.0,)
    assert ScoreSpec(k=3, lo=(0, 1, 2), hi=5).hi == (5.0, 5.0, 5.0)


def test_spec_is_frozen_and_hashable():
    spec = ScoreSpec(k=2, item_names=("a", "b"))
    with pytest.raises(AttributeError):
        spec.k = 3
    assert {spec: 1}[ScoreSpec(k=2, item_names=("a", "b"))] == 1


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(lo=5, hi=3), ValueError, ["lo[0]=5", "hi[0]=3"]),
        (dict(k=2, lo=(0, 5), hi=(10, 4)), ValueError, ["lo[1]=5", "hi[1]=4"]),
        (dict(format="verdict", labels=()), ValueError, ["non-empty label set"]),
        (dict(format="verdict"), ValueError, ["non-empty label set"]),
        (dict(format="verdict", labels=("RIGHT", "right")), ValueError, ["duplicates"]),
        (dict(format="verdict", labels=(" RIGHT",)), ValueError, ["whitespace"]),
        (dict(format="verdict", labels=("A<B",)), ValueError, ["'<'"]),
        (dict(format="verdict", labels=("A",), lo=0), ValueError, ["drop lo/hi"]),
        (dict(labels=("A",)), ValueError, ["verdict"]),
        (dict(format="xml"), ValueError, ["format", "tag"]),
        (dict(k=0), ValueError, ["k=0"]),
        (dict(k=2, item_names=("a",)), ValueError, ["1 names", "k=2"]),
        (dict(k=2, item_names=("a", "a")), ValueError, ["duplicates"]),
        (dict(format="kv", k=2, item_names=("Score", "score")), ValueError, ["ignore case"]),
        (dict(name="1score"), ValueError, ["not a valid name"]),
        (dict(name="my score"), ValueError, ["not a valid name"]),
        (dict(name="score_"), ValueError, ["ending with a letter or digit"]),
        (dict(nonce="3f-9a"), ValueError, ["letters/digits"]),
        (dict(format="kv", nonce="abc"), ValueError, ["nonce applies"]),
        (dict(format="boxed", name="x"), ValueError, ["no names"]),
        (dict(select="middle"), ValueError, ["select"]),
        (dict(fractions="maybe"), ValueError, ["fractions"]),
        (dict(hi=math.inf), ValueError, ["finite hi > 0", "divide"]),
        (dict(lo=math.nan), ValueError, ["NaN"]),
        (dict(hi=1e16), ValueError, ["exceeds"]),
        (dict(k=2, lo=(0, 1, 2)), ValueError, ["3 entries", "k=2"]),
        (dict(lo="0"), TypeError, ["lo[0]", "number"]),
        (dict(integer="yes"), TypeError, ["integer"]),
    ],
)
def test_invalid_specs_raise_clear_errors(kwargs, error, words):
    with pytest.raises(error) as info:
        ScoreSpec(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_tag_names_and_nonces():
    spec = ScoreSpec(k=3, item_names=("clarity", "accuracy", "style"), nonce="3f9a1c")
    assert [spec.tag_name(i) for i in range(3)] == ["clarity-3f9a1c", "accuracy-3f9a1c", "style-3f9a1c"]
    assert spec.tag_name(1, nonce="beef") == "accuracy-beef"
    assert ScoreSpec().tag_name() == "score"
    fresh = ScoreSpec(hi=5).with_nonce()
    assert re.fullmatch(r"[0-9a-f]{6}", fresh.nonce) and fresh.hi == (5.0,)
    assert len({ScoreSpec.new_nonce() for _ in range(20)}) > 1  # 24 random bits each
    assert ScoreSpec(format="verdict", labels=("A", "B")).with_nonce("x1").tag_name() == "verdict-x1"
    with pytest.raises(IndexError):
        spec.tag_name(3)


@pytest.mark.parametrize(
    "spec, value, item, text",
    [
        (ScoreSpec(nonce="3f9a1c"), 7, 0, "<score-3f9a1c>7</score-3f9a1c>"),
        (ScoreSpec(k=2, item_names=("a", "b"), hi=(5, 10)), 9, 1, "<b>9</b>"),
        (ScoreSpec(format="kv", name="rating"), 8, 0, "rating: 8"),
        (ScoreSpec(format="json", integer=False), 7.25, 0, '"score": 7.25'),
        (ScoreSpec(format="verdict", labels=("WRONG", "RIGHT")), "RIGHT", 0, "<verdict>RIGHT</verdict>"),
        (ScoreSpec(format="verdict", labels=("WRONG", "RIGHT")), 0.0, 0, "<verdict>WRONG</verdict>"),
        (ScoreSpec(format="boxed"), -0.125, 0, "\\boxed{-0.125}"),
        (ScoreSpec(integer=False, hi=1e15), 1e-7, 0, "<score>0.0000001</score>"),
        (ScoreSpec(integer=False, hi=1e15), 123456789012345.0, 0, "<score>123456789012345</score>"),
    ],
)
def test_format_score_is_exact_text(spec, value, item, text):
    assert spec.format_score(value, item) == text


def test_format_score_refuses_what_the_parser_would_not_accept():
    with pytest.raises(ValueError, match="outside"):
        ScoreSpec().format_score(11)
    with pytest.raises(ValueError, match="not an integer"):
        ScoreSpec().format_score(7.5)
    with pytest.raises(ValueError, match="finite"):
        ScoreSpec(integer=False).format_score(math.nan)
    with pytest.raises(ValueError, match="digits"):
        ScoreSpec(integer=False, hi=1).format_score(1 / 3)
    with pytest.raises(ValueError, match="neither a label"):
        ScoreSpec(format="verdict", labels=("A", "B")).format_score("C")


def test_parsed_scores_helpers():
    ps = ParsedScores(
        torch.tensor([[1.0, float("nan")], [2.0, 3.0]]), torch.tensor([[0, 1], [0, 0]], dtype=torch.int8)
    )
    assert ps.ok.tolist() == [[True, False], [True, True]]
    assert ps.all_ok.tolist() == [False, True]
    assert len(ps) == 2
    assert ps.status_counts() == {"OK": 3, "MISSING": 1, "MALFORMED": 0, "OUT_OF_RANGE": 0, "AMBIGUOUS": 0, "TRUNCATED": 0}
