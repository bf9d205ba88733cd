"""Constrained decoding: grammars, server request fields, and 100% valid outputs in process."""
import asyncio
import json
import re

import pytest

from mpo_fast.judges.constrained import (
    Constraint,
    request_fields,
    rubric_items_schema,
    score_json_constraint,
    score_tags_constraint,
)
from mpo_fast.judges.expected import ScoreChoices
from mpo_fast.judges.local_llm import LocalLLM
from mpo_fast.parsing import ScoreSpec, ScoreStatus, parse_scores
from tests.helpers import has_module
from tests.judges.tiny_models import make_model, make_tokenizer

needs_xgrammar = pytest.mark.skipif(not has_module("xgrammar"), reason="xgrammar not installed: pip install 'mpo-fast[constrained]'")


def _spec(k=1, hi=10.0):
    if k == 1:
        return ScoreSpec(k=1, name="score", hi=hi, nonce="ab12")
    return ScoreSpec(k=k, item_names=tuple(f"item{i + 1}" for i in range(k)), hi=hi, nonce="ab12")


def test_tag_regex_accepts_exactly_valid_answers():
    spec = _spec(2, hi=(5.0, 10.0))
    c = score_tags_constraint(spec, [ScoreChoices.for_item(spec, j) for j in range(2)], min_chars=3, max_chars=20)
    rx = re.compile(c.regex)
    assert rx.fullmatch("Good work.\n<item1-ab12>5</item1-ab12>\n<item2-ab12>10</item2-ab12>")
    assert not rx.fullmatch("Good work.<item1-ab12>6</item1-ab12><item2-ab12>1</item2-ab12>")  # 6 > 5
    assert not rx.fullmatch("ok<item1-ab12>1</item1-ab12><item2-ab12>1</item2-ab12>")  # rationale too short
    assert not rx.fullmatch("a <b> c<item1-ab12>1</item1-ab12><item2-ab12>1</item2-ab12>")  # no '<' in the rationale
    longest = "x" * 20 + "\n<item1-ab12>5</item1-ab12>\n<item2-ab12>10</item2-ab12>"
    assert rx.fullmatch(longest) and len(longest) + 1 <= c.max_tokens  # the bound covers the longest answer + EOS
    parsed = parse_scores([longest], spec)
    assert parsed.values.tolist() == [[5.0, 10.0]]


def test_json_constraint_names_match_the_parser():
    spec = ScoreSpec(format="json", k=2, item_names=("item1", "item2"), hi=(5.0, 3.0), nonce="ab12")
    c = score_json_constraint(spec, max_chars=100)
    props = c.json_schema["properties"]
    assert list(props) == ["justification", "item1-ab12", "item2-ab12"]  # rationale first
    assert props["item2-ab12"] == {"type": "integer", "enum": [0, 1, 2, 3]}
    text = json.dumps({"justification": 'says "item1-ab12": 0 inside', "item1-ab12": 4, "item2-ab12": 2})
    parsed = parse_scores([text], spec)
    assert parsed.values.tolist() == [[4.0, 2.0]] and parsed.all_ok.all()


@pytest.mark.parametrize(
    "flavour,key",
    [("llama.cpp", "response_format"), ("openai", "response_format"), ("vllm", "structured_outputs"), ("vllm-legacy", "guided_json"), ("sglang", "response_format")],
)
def test_request_fields_for_json(flavour, key):
    c = Constraint(json_schema={"type": "object"}, max_tokens=10)
    fields = request_fields(c, flavour)
    assert key in fields
    if flavour == "llama.cpp":
        assert fields["response_format"] == {"type": "json_object", "schema": {"type": "object"}}


def test_request_fields_for_regex():
    c = Constraint(regex="[0-9]", max_tokens=2)
    assert request_fields(c, "vllm") == {"structured_outputs": {"regex": "[0-9]"}}
    assert request_fields(c, "vllm-legacy") == {"guided_regex": "[0-9]"}
    assert request_fields(c, "sglang") == {"regex": "[0-9]"}
    with pytest.raises(ValueError, match="JSON schema"):
        request_fields(c, "llama.cpp")
    with pytest.raises(ValueError, match="structured_output='none'"):
        request_fields(c, "none")


def test_rubric_schema_bounds():
    c = rubric_items_schema(max_items=4, max_points=10, max_title_chars=40, max_description_chars=100)
    items = c.json_schema["properties"]["items"]
    assert items["maxItems"] == 4 and items["items"]["properties"]["max_points"]["enum"] == list(range(1, 11))


@needs_xgrammar
def test_constrained_generation_is_always_valid_tiny_model():
    """50 sampled generations from a random model (the worst possible judge): every one parses."""
    tok = make_tokenizer()
    llm = LocalLLM(make_model(tok, seed=5), tok, max_batch_size=50)
    spec = _spec(1, hi=10.0)
    c = score_tags_constraint(spec, [ScoreChoices.for_item(spec, 0)], min_chars=2, max_chars=24)
    convs = [[{"role": "user", "content": f"grade {i}"}] for i in range(50)]
    gens = asyncio.run(llm.generate(convs, max_tokens=4, temperature=1.0, constraints=[c] * 50))
    assert all(g.error is None for g in gens)
    parsed = parse_scores([g.text for g in gens], spec)
    assert parsed.all_ok.all(), [g.text for g, ok in zip(gens, parsed.all_ok.tolist()) if not ok][:3]
    assert ((parsed.values >= 0) & (parsed.values <= 10)).all()


@needs_xgrammar
def test_per_item_structure_parses_into_k_scores_tiny_model():
    tok = make_tokenizer()
    llm = LocalLLM(make_model(tok, seed=6), tok)
    spec = _spec(3, hi=(2.0, 5.0, 10.0))
    c = score_tags_constraint(spec, [ScoreChoices.for_item(spec, j) for j in range(3)], min_chars=1, max_chars=12)
    gens = asyncio.run(llm.generate([[{"role": "user", "content": "grade"}]] * 6, max_tokens=4, temperature=1.0, constraints=[c] * 6))
    parsed = parse_scores([g.text for g in gens], spec)
    assert parsed.values.shape == (6, 3)
    assert (parsed.status == ScoreStatus.OK).all()
    assert (parsed.values <= parsed.values.new_tensor([2.0, 5.0, 10.0])).all()


@needs_xgrammar
def test_json_schema_generation_is_valid_tiny_model():
    tok = make_tokenizer()
    llm = LocalLLM(make_model(tok, seed=7), tok)
    c = rubric_items_schema(max_items=2, max_points=5, max_title_chars=8, max_description_chars=12)
    (g,) = asyncio.run(llm.generate([[{"role": "user", "content": "rubric"}]], max_tokens=4, temperature=1.0, constraints=[c]))
    data = json.loads(g.text, strict=False)  # xgrammar lets raw control characters into strings
    assert 1 <= len(data["items"]) <= 2
    assert all(1 <= it["max_points"] <= 5 and 3 <= len(it["title"]) <= 8 for it in data["items"])
