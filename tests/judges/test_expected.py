"""Probability-weighted scores: the choice trie, multi-token numbers, local and server paths."""
import asyncio
import math

import pytest
import torch

from mpo_fast.judges.expected import (
    DONE,
    INVALID,
    NODE,
    ScoreChoices,
    distribution_from_chat_logprobs,
    walk_top_logprobs,
)
from mpo_fast.judges.llm import TokenLogprobs
from mpo_fast.judges.local_llm import LocalLLM
from mpo_fast.judges.local_scoring import LocalChoiceScorer
from mpo_fast.parsing import ScoreSpec
from tests.judges.tiny_models import make_model, make_tokenizer

ZERO_TO_TEN = ScoreChoices.for_item(ScoreSpec(hi=10).with_nonce("abc123"), 0)
LN = math.log


def test_choices_from_spec_use_the_parser_text():
    spec = ScoreSpec(k=2, item_names=("a", "b"), hi=(3.0, 2.5))
    assert ScoreChoices.for_item(spec, 0).texts == ("0", "1", "2", "3")
    assert ScoreChoices.for_item(spec, 1).values == (0.0, 1.0, 2.0)  # 2.5 is not an integer score
    with pytest.raises(ValueError, match="unbounded"):
        ScoreChoices.for_item(ScoreSpec(format="boxed"), 0)


@pytest.mark.parametrize(
    "node,piece,expected",
    [
        ("", "7", (DONE, 7)),
        ("", " 7", (DONE, 7)),  # one leading space in the token
        ("", " ", (NODE, " ")),  # or as its own token
        (" ", "7", (DONE, 7)),
        (" ", " ", (INVALID, None)),  # only one space
        ("", "\n", (INVALID, None)),
        ("", "1", (NODE, "1")),  # may become 10
        ("1", "0", (DONE, 10)),
        ("1", "<", (DONE, 1)),
        ("1", "</", (DONE, 1)),
        ("1", "", (DONE, 1)),  # EOS ends the number
        ("1", "5", (INVALID, None)),  # 15 is out of range
        ("1", ".", (INVALID, None)),  # 1.5 is not an integer score
        ("", "10", (DONE, 10)),  # a tokenizer with "10" as one token
        ("", "10<", (DONE, 10)),
        ("", "100", (INVALID, None)),
        ("", "7.", (INVALID, None)),
        ("", "x", (INVALID, None)),
        ("", "", (INVALID, None)),
    ],
)
def test_step(node, piece, expected):
    assert ZERO_TO_TEN.step(node, piece) == expected


def test_step_range_without_single_digits():
    ch = ScoreChoices(("10", "11", "12"), (10.0, 11.0, 12.0))
    assert ch.step("", "1") == (NODE, "1")
    assert ch.step("1", "1") == (DONE, 1)
    assert ch.step("1", "<") == (INVALID, None)  # "1" alone is not allowed here


def test_multi_token_ten_is_not_credited_to_one():
    # After the tag: P("1") = .5, P("7") = .3, rest .2 off the allowed set; after "1": P("0") = .6, P("<") = .4.
    root = {"1": LN(0.5), "7": LN(0.3), "x": LN(0.2)}
    dist, pending = walk_top_logprobs(ZERO_TO_TEN, root)
    assert pending == ["1"] and dist.unresolved == pytest.approx(0.5)
    dist, pending = walk_top_logprobs(ZERO_TO_TEN, root, {"1": {"0": LN(0.6), "<": LN(0.4)}})
    assert pending == []
    assert dist.probs[10] == pytest.approx(0.3) and dist.probs[1] == pytest.approx(0.2) and dist.probs[7] == pytest.approx(0.3)
    assert dist.mass == pytest.approx(0.8)
    assert dist.expected(ZERO_TO_TEN.values) == pytest.approx((0.3 * 10 + 0.2 * 1 + 0.3 * 7) / 0.8)  # 6.625
    # Reading only the first token would have said (0.5 * 1 + 0.3 * 7) / 0.8 = 3.25.


def test_chat_logprobs_path_expands_the_generated_number():
    toks = [
        TokenLogprobs("Fine.", -0.1, {}),
        TokenLogprobs("<score-n>", -0.1, {}),
        TokenLogprobs("1", LN(0.5), {"1": LN(0.5), "7": LN(0.3)}),
        TokenLogprobs("0", LN(0.6), {"0": LN(0.6), "<": LN(0.4)}),
        TokenLogprobs("</score-n>", -0.1, {}),
    ]
    dist = distribution_from_chat_logprobs(toks, "<score-n>", ZERO_TO_TEN)
    assert dist.expected(ZERO_TO_TEN.values) == pytest.approx(6.625)
    # Generated "7": the "1" branch cannot be observed and is left out (unresolved), not guessed.
    toks[2] = TokenLogprobs("7", LN(0.3), {"1": LN(0.5), "7": LN(0.3)})
    toks[3] = TokenLogprobs("</score-n>", -0.1, {})
    dist = distribution_from_chat_logprobs(toks[:4], "<score-n>", ZERO_TO_TEN)
    # Reading 7.0 from the resolved part alone would be biased (the 0.5 on "1" may be 1 or 10):
    # 0.5 of 0.8 is unresolved, so no expected value is given under any sane threshold.
    assert dist.unresolved == pytest.approx(0.5) and dist.unresolved_share == pytest.approx(0.5 / 0.8)
    assert dist.expected(ZERO_TO_TEN.values, max_unresolved_share=0.05) is None
    assert dist.expected(ZERO_TO_TEN.values, max_unresolved_share=0.5) is None
    # A token spanning the tag's end (">7") is split at the boundary.
    merged = [TokenLogprobs("ok <score-n", -0.1, {}), TokenLogprobs(">7", LN(0.3), {">7": LN(0.3), ">2": LN(0.6), "x": LN(0.1)})]
    dist = distribution_from_chat_logprobs(merged, "<score-n>", ZERO_TO_TEN)
    assert dist.probs[2] == pytest.approx(0.6) and dist.probs[7] == pytest.approx(0.3)
    assert distribution_from_chat_logprobs(merged, "<other>", ZERO_TO_TEN) is None


class _BigramLM(torch.nn.Module):
    """A language model whose next-token distribution depends only on the last token: exact,
    hand-computable probabilities for the scorer (it ignores caches and positions)."""

    def __init__(self, vocab: int, table: dict[int, dict[int, float]]):
        super().__init__()
        self.vocab = vocab
        self.table = table
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"_name_or_path": "bigram", "vocab_size": vocab})()

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False, logits_to_keep=None):
        rows = []
        for last in input_ids[:, -1].tolist():
            probs = torch.full((self.vocab,), 1e-12, dtype=torch.float64)
            for tok, p in self.table.get(last, {}).items():
                probs[tok] = p
            rows.append((probs / probs.sum()).log().float())
        logits = torch.stack(rows)[:, None, :]
        cache = type("Cache", (), {"layers": []})() if use_cache else None
        return type("Out", (), {"logits": logits, "past_key_values": cache})()


@pytest.mark.parametrize("use_cache", [True, False])
def test_local_scorer_multi_token_numbers_split_digits(use_cache):
    tok = make_tokenizer(split_digits=True)
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert len(ids("10")) == 2  # the case under test: "10" is "1" then "0"
    gt, one, zero, seven, lt, x = ids(">")[-1], ids("1")[0], ids("0")[0], ids("7")[0], ids("<")[0], ids("x")[0]
    lm = _BigramLM(len(tok), {gt: {one: 0.5, seven: 0.3, x: 0.2}, one: {zero: 0.6, lt: 0.4}})
    prefix = ids("ok <score-abc123>")
    assert prefix[-1] == gt
    (dist,) = LocalChoiceScorer(lm, tok, use_cache=use_cache).score([prefix], [ZERO_TO_TEN])
    # P(10) = .5 * .6, P(1) = .5 * .4 (the "1" then "<" path), P(7) = .3; "x" (.2) is off the allowed set.
    assert dist.probs[10] == pytest.approx(0.3, rel=1e-6)
    assert dist.probs[1] == pytest.approx(0.2, rel=1e-6)
    assert dist.probs[7] == pytest.approx(0.3, rel=1e-6)
    assert dist.mass == pytest.approx(0.8, rel=1e-6)
    assert dist.expected(ZERO_TO_TEN.values) == pytest.approx((3 + 0.2 + 0.3 * 7) / 0.8, rel=1e-6)


def test_local_scorer_single_token_numbers():
    tok = make_tokenizer(split_digits=False)
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert len(ids("10")) == 1  # "10" is one token here
    gt, ten, one, lt = ids(">")[-1], ids("10")[0], ids("1")[0], ids("<")[0]
    lm = _BigramLM(len(tok), {gt: {ten: 0.6, one: 0.4}, one: {lt: 1.0}})
    (dist,) = LocalChoiceScorer(lm, tok).score([ids("ok <score-abc123>")], [ZERO_TO_TEN])
    assert dist.probs[10] == pytest.approx(0.6, rel=1e-6) and dist.probs[1] == pytest.approx(0.4, rel=1e-6)
    assert dist.expected(ZERO_TO_TEN.values) == pytest.approx(6.4, rel=1e-6)


def test_cached_and_recomputed_continuations_agree_on_a_real_model():
    tok = make_tokenizer(split_digits=True)
    model = make_model(tok, seed=3)
    llm = LocalLLM(model, tok, max_batch_size=3)
    convs = [[{"role": "user", "content": f"grade {'essay ' * i}"}] for i in range(5)]  # different lengths: padding
    prefills = ["fine <score-abc123>"] * 5
    fast = asyncio.run(llm.score_choices(convs, prefills, [ZERO_TO_TEN] * 5))
    slow = LocalChoiceScorer(model, tok, use_cache=False).score([llm.render(c, p) for c, p in zip(convs, prefills)], [ZERO_TO_TEN] * 5)
    for a, b in zip(fast, slow):
        assert a.probs == pytest.approx(b.probs, rel=1e-4, abs=1e-9)
        value = a.expected(ZERO_TO_TEN.values)
        assert 0.0 <= value <= 10.0 and 0.0 < a.mass <= 1.0
    # Rows scored one at a time (no padding) give the same numbers as the padded batch.
    single = asyncio.run(llm.score_choices(convs[4:], prefills[4:], [ZERO_TO_TEN]))
    assert single[0].probs == pytest.approx(fast[4].probs, rel=1e-4, abs=1e-9)


def test_expected_ordering_agrees_with_argmax():
    tok = make_tokenizer(split_digits=True)
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    gt = ids(">")[-1]
    digits = [ids(str(d))[0] for d in range(10)]
    # Row a peaks on 2, row b on 8: expected(a) < expected(b), argmax(a) = 2, argmax(b) = 8.
    lm_a = _BigramLM(len(tok), {gt: {digits[2]: 0.7, digits[3]: 0.2, digits[8]: 0.1}})
    lm_b = _BigramLM(len(tok), {gt: {digits[8]: 0.7, digits[7]: 0.2, digits[2]: 0.1}})
    (a,) = LocalChoiceScorer(lm_a, tok).score([ids("x <score-abc123>")], [ZERO_TO_TEN])
    (b,) = LocalChoiceScorer(lm_b, tok).score([ids("x <score-abc123>")], [ZERO_TO_TEN])
    assert a.argmax == 2 and b.argmax == 8
    assert a.expected(ZERO_TO_TEN.values) < b.expected(ZERO_TO_TEN.values)


def test_session_scores_later_positions_like_a_fresh_prompt():
    """Scoring "prompt + suffix" through a session (prompt KV cache reused) equals scoring it from scratch."""
    tok = make_tokenizer(split_digits=True)
    model = make_model(tok, seed=4)
    llm = LocalLLM(model, tok, max_batch_size=2)
    convs = [[{"role": "user", "content": f"grade {'x ' * i}"}] for i in range(3)]
    base = ["Fine work.\n"] * 3
    suffixes = ["<item1>", "<item1>3</item1>\n<item2>", "<item1>10</item1>\n<item2>"]

    async def main():
        session = await llm.open_scoring(convs, base)
        try:
            return await session.score(suffixes, [ZERO_TO_TEN] * 3)
        finally:
            session.close()

    via_session = asyncio.run(main())
    fresh = LocalChoiceScorer(model, tok, use_cache=False).score(
        [llm.render(c, b) + tok(s, add_special_tokens=False)["input_ids"] for c, b, s in zip(convs, base, suffixes)], [ZERO_TO_TEN] * 3
    )
    for a, b in zip(via_session, fresh):
        assert a.probs == pytest.approx(b.probs, rel=1e-4, abs=1e-9)
