"""Property tests: the C++ parser and the Python oracle agree on arbitrary text; formatted scores
round-trip; nothing crashes or hangs."""
import math
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpo_fast.parsing import ScoreSpec, ScoreStatus, parse_scores
from mpo_fast.parsing.api import resolve_backend

from .strategies import SPECS, any_text, spec_strategy

HAS_CPU = resolve_backend("auto") == "cpu"
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason="mpo_fast._C is not built")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def assert_same(texts, spec, **kw):
    a = parse_scores(texts, spec, backend="cpu", **kw)
    b = parse_scores(texts, spec, backend="reference", **kw)
    assert torch.equal(a.status, b.status), (texts, spec, a.status, b.status)
    assert torch.equal(a.values.isnan(), b.values.isnan()), (texts, spec, a.values, b.values)
    assert torch.equal(a.values.nan_to_num(), b.values.nan_to_num()), (texts, spec, a.values, b.values)
    assert torch.equal(a.spans, b.spans), (texts, spec, a.spans, b.spans)


@needs_cpu
@FAST
@given(st.lists(any_text, min_size=1, max_size=6), spec_strategy)
def test_cpp_matches_oracle_on_judge_like_text(texts, spec):
    assert_same(texts, spec)


@needs_cpu
@FAST
@given(st.lists(st.one_of(st.binary(max_size=200), st.text(max_size=100)), min_size=1, max_size=4), spec_strategy)
def test_cpp_matches_oracle_on_arbitrary_bytes_and_unicode(texts, spec):
    assert_same(texts, spec)


@needs_cpu
@FAST
@given(st.data())
def test_cpp_matches_oracle_with_per_text_nonces(data):
    nonces = data.draw(st.lists(st.sampled_from(["ab1", "3f9a1c", "x"]), min_size=1, max_size=5))
    texts = [
        data.draw(any_text) + data.draw(st.sampled_from([b"<score-ab1>4</score-ab1>", b"<score-x>2</score-x>", b""]))
        for _ in nonces
    ]
    spec = data.draw(st.sampled_from([s for s in SPECS if s.format in ("tag", "verdict", "json")]))
    assert_same(texts, spec, nonces=nonces)


def _float32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


@st.composite
def spec_and_value(draw):
    fmt = draw(st.sampled_from(["tag", "kv", "json", "boxed"]))
    integer = draw(st.booleans())
    lo = draw(st.integers(-1000, 1000))
    hi = lo + draw(st.integers(0, 1000))
    kw = dict(format=fmt, integer=integer, lo=lo, hi=hi)
    if fmt == "tag":
        kw["nonce"] = draw(st.sampled_from([None, "3f9a1c"]))
    if hi <= 0:
        kw["fractions"] = "reject"  # "scale" needs hi > 0
    spec = ScoreSpec(**kw)
    if integer:
        value = float(draw(st.integers(lo, hi)))
    else:
        places = draw(st.integers(0, 6))
        value = round(draw(st.floats(lo, hi, allow_nan=False)), places)
        value = min(max(value, float(lo)), float(hi))
    return spec, value


@FAST
@given(spec_and_value(), any_text, st.sampled_from(["\n\n", " ", "\n**Final:** "]))
def test_formatted_scores_round_trip(sv, noise, glue):
    """Whatever a judge writes before it, spec.format_score(v) as the last thing is read back as v."""
    spec, value = sv
    try:
        written = spec.format_score(value)
    except ValueError:  # more than 15 digits: format_score refuses rather than lose precision
        return
    if spec.format == "json":
        written = "{" + written + "}"  # format_score gives the field; a JSON number needs its object's brace
    text = noise.decode("utf-8", "replace") + glue + written
    for backend in ["reference"] + (["cpu"] if HAS_CPU else []):
        r = parse_scores([text], spec, backend=backend)
        assert r.status.tolist() == [[ScoreStatus.OK]], (backend, text, spec, r.status)
        assert r.values[0, 0].item() == _float32(value), (backend, text, r.values, value)


@needs_cpu
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=0, max_size=1 << 16), st.sampled_from(SPECS))
def test_no_input_crashes_or_hangs(data, spec):
    """Random 64 KB blobs, repeated fragments and deep braces: a status for every item, fast."""
    texts = [data, data * 8, b"<score>" * 2000 + data, b"\\boxed{" + b"{" * 5000, b'"score":' * 3000, b"score:" * 3000]
    r = parse_scores(texts, spec, backend="cpu", num_threads=2)
    assert r.status.shape == (len(texts), spec.k)
    assert ((r.status >= 0) & (r.status <= 5)).all()
    assert torch.equal(r.values.isnan(), r.status != ScoreStatus.OK)


def test_values_are_nan_exactly_where_status_is_not_ok():
    texts = ["<score>7</score>", "<score>x</score>", "", "<score>11</score>"]
    for backend in ["reference"] + (["cpu"] if HAS_CPU else []):
        r = parse_scores(texts, ScoreSpec(), backend=backend)
        assert torch.equal(r.values.isnan(), r.status != 0)
        assert not math.isnan(r.values[0, 0].item())
