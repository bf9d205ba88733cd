"""Probability-weighted scores (G-Eval, arXiv 2303.16634), multi-token numbers included.

After `...<score-3f9a1c>` the judge's next tokens spell the score. With a tokenizer that splits
digits (SmolLM2, Qwen2.5: "10" is "1" then "0") reading only the first token's probabilities
would credit "10" to "1". We therefore walk a small trie over the allowed score texts:

    root --"7"--> done(7)          root --"1"--> node "1" --"0"--> done(10)
                                                         \\--"<", " ", EOS--> done(1)
                                                         \\--"5"--> invalid (15 is not allowed)

P(score) is the product of the next-token probabilities along its path, so every choice is
scored by its full token sequence (teacher forcing); only nodes where a number may go on (here
"1") cost an extra step. The walk is over *text*, so the same rules serve a local model (token
ids, exact distributions) and a server (top-k token strings from `logprobs`).

One leading space after the tag is allowed (" 7", as one token or as " " then "7"). A choice text followed by anything that
does not continue a number (`<`, space, newline, EOS) ends it; a number that continues into a
value outside the allowed set (15, 7.5) is invalid mass: it lowers `mass`, never the score.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..parsing import ScoreSpec

_WS = " \t\n\r"
_NUMERIC = frozenset("0123456789.")

DONE, NODE, INVALID = "done", "node", "invalid"


@dataclass(frozen=True)
class ScoreChoices:
    """The allowed score texts for one rubric item and the value each stands for."""

    texts: tuple[str, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.texts or len(self.texts) != len(self.values):
            raise ValueError(f"ScoreChoices needs one value per text, got {len(self.texts)} texts and {len(self.values)} values")
        if len(set(self.texts)) != len(self.texts):
            raise ValueError(f"ScoreChoices texts repeat: {self.texts}")
        for t in self.texts:
            if not t or t != t.strip(_WS):
                raise ValueError(f"score text {t!r} must be non-empty without surrounding whitespace")

    @classmethod
    def for_item(cls, spec: ScoreSpec, item: int) -> "ScoreChoices":
        """Every integer in [lo, hi] of `item`, written exactly as the parser reads it back."""
        lo, hi = spec.lo[item], spec.hi[item]
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"item {item} has an unbounded range [{lo}, {hi}]; expected scores need finite bounds")
        first, last = math.ceil(lo), math.floor(hi)
        if last - first + 1 > 256:
            raise ValueError(f"item {item} allows {last - first + 1} integer scores; expected scoring supports at most 256")
        if last < first:
            raise ValueError(f"item {item} range [{lo}, {hi}] holds no integer score")
        values = tuple(float(v) for v in range(first, last + 1))
        return cls(tuple(spec.format_value(v, item) for v in values), values)

    def _index(self, text: str) -> int | None:
        try:
            return self.texts.index(text)
        except ValueError:
            return None

    def _extends(self, text: str) -> bool:
        return any(t != text and t.startswith(text) for t in self.texts)

    def step(self, node: str, piece: str) -> tuple[str, int | str | None]:
        """Where the next token `piece` leads from `node` (the text written after the tag so far).

        Returns (DONE, choice index), (NODE, new node text) or (INVALID, None).
        """
        stem = node.lstrip(_WS)
        if piece == "":  # EOS or a special token with no text: ends a complete number
            idx = self._index(stem) if stem else None
            return (DONE, idx) if idx is not None else (INVALID, None)
        raw = node + piece
        text = raw.lstrip(_WS)
        if not text:
            # One space before the number (" 7" split as " ", "7") is allowed; other whitespace is
            # not a score, and allowing it would open a node per whitespace token.
            return (NODE, raw) if node == "" and piece == " " else (INVALID, None)
        best = None
        for i, choice in enumerate(self.texts):
            if text.startswith(choice) and (len(text) == len(choice) or text[len(choice)] not in _NUMERIC):
                if best is None or len(choice) > len(self.texts[best]):
                    best = i
        if best is not None:
            if len(text) == len(self.texts[best]) and self._extends(text):
                return (NODE, raw)  # "1" may still become "10": look one token further
            return (DONE, best)
        if any(c.startswith(text) for c in self.texts):
            return (NODE, raw)  # a proper prefix of an allowed number, e.g. "1" when only 10-20 are allowed
        return (INVALID, None)


@dataclass
class ChoiceDistribution:
    """Probability the judge writes each allowed score (not renormalised).

    probs: P(choice) per choice, from the product of next-token probabilities along its path.
    mass: sum(probs): how much the judge wanted to write an allowed score at all.
    unresolved: probability that reached a node whose continuation could not be observed
        (a server's top-k missed it); left out of both `probs` and the expectation.
    """

    probs: list[float]
    unresolved: float = 0.0
    calls: int = 0
    error: str | None = None

    @property
    def mass(self) -> float:
        return float(math.fsum(self.probs))

    @property
    def unresolved_share(self) -> float:
        """unresolved / (mass + unresolved): how much of the score's probability is unaccounted
        for; the expectation can be off by up to this share of the item's range."""
        total = self.mass + self.unresolved
        return float(self.unresolved / total) if total > 0.0 else 0.0

    def expected(self, values: tuple[float, ...], *, max_unresolved_share: float = 1.0) -> float | None:
        """Probability-weighted value over the allowed choices; None if no mass at all, or if more
        than `max_unresolved_share` of the mass could not be resolved (the value would be biased)."""
        total = self.mass
        if not total > 0.0 or self.unresolved_share > max_unresolved_share:
            return None
        return float(math.fsum(p * v for p, v in zip(self.probs, values)) / total)

    @property
    def argmax(self) -> int | None:
        """Index of the most probable choice (the argmax token's score)."""
        if not self.probs or max(self.probs) <= 0.0:
            return None
        return max(range(len(self.probs)), key=lambda i: (self.probs[i], -i))


def walk_top_logprobs(
    choices: ScoreChoices,
    root: dict[str, float],
    expand: dict[str, dict[str, float]] | None = None,
) -> tuple[ChoiceDistribution, list[str]]:
    """Distribution over choices from next-token log-probs given as {token text: logprob}.

    root: the distribution right after the tag. expand: distributions observed after some node
    texts (e.g. after "1"). Returns the distribution and the node texts still to be expanded
    (reached with probability but not in `expand`); their probability is `unresolved`.
    Several tokens may reach one node (" 1" after " "): their probabilities add.
    """
    expand = expand or {}
    probs = [0.0] * len(choices.texts)
    pending: dict[str, float] = {}
    unresolved = 0.0
    frontier: dict[str, float] = {"": 1.0}
    dist = root
    depth = 0
    while frontier and depth < 4:
        nxt: dict[str, float] = {}
        for node, reach in frontier.items():
            dist = root if node == "" else expand.get(node)
            if dist is None:
                pending[node] = pending.get(node, 0.0) + reach
                unresolved += reach
                continue
            for piece, logprob in dist.items():
                if logprob is None or not math.isfinite(logprob):
                    continue
                kind, target = choices.step(node, piece)
                p = reach * math.exp(logprob)
                if kind == DONE:
                    probs[target] += p
                elif kind == NODE:
                    nxt[target] = nxt.get(target, 0.0) + p
        frontier = nxt
        depth += 1
    return ChoiceDistribution(probs=probs, unresolved=unresolved), sorted(pending)


def distribution_from_chat_logprobs(
    tokens: list, open_tag: str, choices: ScoreChoices
) -> ChoiceDistribution | None:
    """Score distribution from a chat answer's per-token `top_logprobs` (servers without prefill).

    tokens: TokenLogprobs (text, logprob, top) of the generated answer. The score starts right
    after the last `open_tag` in the text. If that boundary falls inside a token (">7" merged),
    the tag's tail is stripped from the alternatives that share it. Nodes on the generated path
    ("1" on the way to "10") are expanded with the next position's alternatives; nodes off the
    path cannot be observed and count as `unresolved`. None when the tag is not in the answer.
    """
    text = "".join(t.text for t in tokens)
    at = text.rfind(open_tag)
    if at < 0:
        return None
    boundary = at + len(open_tag)
    offset = 0
    j = None
    for idx, t in enumerate(tokens):
        if offset <= boundary < offset + len(t.text):
            j = idx
            break
        offset += len(t.text)
    if j is None:
        return None  # the answer ends right after the tag
    head = text[offset:boundary]  # part of the tag inside token j ("" on a clean boundary)
    root = {alt[len(head):]: lp for alt, lp in tokens[j].top.items() if alt.startswith(head) and len(alt) > len(head)}
    if not root:
        root = {tokens[j].text[len(head):]: tokens[j].logprob}
    expand: dict[str, dict[str, float]] = {}
    node = ""
    piece = tokens[j].text[len(head):]
    k = j
    while True:
        kind, target = choices.step(node, piece)
        if kind != NODE or k + 1 >= len(tokens):
            break
        k += 1
        expand[target] = tokens[k].top or {tokens[k].text: tokens[k].logprob}
        node, piece = target, tokens[k].text
    dist, _ = walk_top_logprobs(choices, root, expand)
    return dist
