"""The meta-reward model (MRM): evolves the rubric from samples the reward model scored.

    evolution = await MetaJudge(llm).evolve(rubric, samples, step)
    if evolution.changed: store.save(evolution.rubric, parent=..., step=step, analyses=evolution.analyses)

Every `mpo_interval` steps (or early, on a hacking signal) the trainer hands over recent samples:
1. prescreen: pick the informative ones (highest- and lowest-scored, suspiciously short or long,
   saturated or zero scores, failed judgements), deterministically;
2. analyze: one MRM call per sample, free text: where the rubric failed on it;
3. refine: one MRM call per analysis, a full rubric as schema-constrained JSON;
4. merge: the valid proposals merged deterministically (rubrics.merge_rubrics).
An answer that fails validation is logged with its text and dropped; with no valid proposal the
current rubric stays in place (`changed` is False).
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Sequence

from ..rubrics import ProposalLimits, Rubric, merge_rubrics, normalise_proposal
from .constrained import rubric_items_schema
from .llm import LLM
from .meta_prompts import analyze_messages, refine_messages
from .schema_check import ReplyMismatch, check_json

log = logging.getLogger("mpo_fast")
_LOG_TEXT_CHARS = 500


@dataclass(frozen=True)
class MetaSample:
    """One scored sample for the meta-judge: what the policy saw and wrote, how the RM scored it."""

    prompt: str
    response: str
    item_scores: tuple[float | None, ...]
    reward: float | None
    rationale: str = ""
    rubric_hash: str = ""
    step: int | None = None


@dataclass(frozen=True)
class MetaSettings:
    """num_samples: samples analysed per MPO step (the reference used 16).
    prescreen: pick informative samples (else evenly spaced ones).
    short_ratio / long_ratio: a response shorter than short_ratio x the median length (or longer
        than long_ratio x) is suspicious.
    """

    num_samples: int = 16
    prescreen: bool = True
    temperature: float = 0.7
    analysis_words: int = 150
    analysis_tokens: int = 320
    limits: ProposalLimits = ProposalLimits()
    max_description_chars: int = 300
    short_ratio: float = 0.5
    long_ratio: float = 2.0

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.analysis_tokens < 1:
            raise ValueError("MetaSettings needs num_samples >= 1 and analysis_tokens >= 1")
        if not 0 < self.short_ratio < 1 < self.long_ratio:
            raise ValueError("MetaSettings needs 0 < short_ratio < 1 < long_ratio")


@dataclass(frozen=True)
class MetaFailure:
    stage: str  # "analyze" | "refine"
    sample: int  # index into the samples given to evolve
    error: str
    text: str


@dataclass
class Evolution:
    """Result of one MPO step: the rubric to use next and how it came about."""

    rubric: Rubric
    changed: bool
    parent_hash: str
    step: int
    selected: list[tuple[int, str]] = field(default_factory=list)  # (sample index, why)
    analyses: list[str] = field(default_factory=list)
    proposals: list[Rubric] = field(default_factory=list)
    failures: list[MetaFailure] = field(default_factory=list)
    calls: int = 0
    seconds: float = 0.0


def prescreen(samples: Sequence[MetaSample], n: int, *, short_ratio: float = 0.5, long_ratio: float = 2.0) -> list[tuple[int, str]]:
    """Up to n (index, reason) pairs, most informative first, deterministic for given samples.

    Categories are taken round-robin so each kind of evidence is represented: suspicious
    (saturated, zero, very short, very long, failed judgement), then highest and lowest scored.
    """
    if not samples:
        return []
    lengths = [len(s.response) for s in samples]
    median = statistics.median(lengths)
    scored = [i for i, s in enumerate(samples) if s.reward is not None]
    by_reward = sorted(scored, key=lambda i: (samples[i].reward, i))
    cats: dict[str, list[int]] = {
        "saturated": [i for i in scored if samples[i].reward >= 1.0 - 1e-9],
        "zero": [i for i in scored if samples[i].reward <= 1e-9],
        "very_short": sorted((i for i in range(len(samples)) if lengths[i] < short_ratio * median), key=lambda i: (lengths[i], i)),
        "very_long": sorted((i for i in range(len(samples)) if lengths[i] > long_ratio * median), key=lambda i: (-lengths[i], i)),
        "judge_failed": [i for i, s in enumerate(samples) if s.reward is None],
        "highest_scored": list(reversed(by_reward)),
        "lowest_scored": by_reward,
    }
    chosen: list[tuple[int, str]] = []
    seen: set[int] = set()
    cursors = {k: 0 for k in cats}
    while len(chosen) < n:
        progressed = False
        for name, members in cats.items():
            while cursors[name] < len(members) and members[cursors[name]] in seen:
                cursors[name] += 1
            if cursors[name] < len(members) and len(chosen) < n:
                i = members[cursors[name]]
                chosen.append((i, name))
                seen.add(i)
                progressed = True
        if not progressed:
            break
    return chosen


def evenly_spaced(count: int, n: int) -> list[tuple[int, str]]:
    if count <= n:
        return [(i, "sampled") for i in range(count)]
    return [(math.floor(j * count / n), "sampled") for j in range(n)]


class MetaJudge:
    """analyze -> refine -> merge with any LLM (the same interface as the reward model's)."""

    def __init__(self, llm: LLM, settings: MetaSettings | None = None):
        self.llm = llm
        self.settings = settings or MetaSettings()
        self.calls = 0

    def select(self, samples: Sequence[MetaSample]) -> list[tuple[int, str]]:
        s = self.settings
        if s.prescreen:
            return prescreen(samples, s.num_samples, short_ratio=s.short_ratio, long_ratio=s.long_ratio)
        return evenly_spaced(len(samples), s.num_samples)

    def _rubric_constraint(self):
        lim = self.settings.limits
        return rubric_items_schema(
            max_items=lim.max_items, max_points=int(lim.max_points),
            max_title_chars=lim.max_title_chars, max_description_chars=self.settings.max_description_chars,
        )

    def parse_proposal(self, text: str, rubric: Rubric) -> Rubric:
        """The rubric in an MRM answer, cleaned and bounded; raises ValueError when unusable."""
        # Validated against the very schema the refine call was sent (also when the server could
        # not enforce it): duplicate keys, extra fields, out-of-range points are rejected here.
        # check_json parses with strict=False: grammars let raw control characters into strings;
        # normalise_proposal collapses that whitespace anyway.
        try:
            data = check_json(text, self._rubric_constraint().json_schema)
        except ReplyMismatch as exc:
            raise ValueError(f"not the JSON asked for ({exc})") from None
        return normalise_proposal(data["items"], task=rubric.task, context=rubric.context, limits=self.settings.limits)

    async def evolve(self, rubric: Rubric, samples: Sequence[MetaSample], step: int) -> Evolution:
        start = time.perf_counter()
        s = self.settings
        result = Evolution(rubric=rubric, changed=False, parent_hash=rubric.content_hash, step=step)
        result.selected = self.select(samples)
        if not result.selected:
            log.warning("meta-judge step %d: no samples to analyse; rubric unchanged", step)
            return result
        await self.llm.prepare()
        k = len(rubric.items)
        convs = []
        for i, reason in result.selected:
            smp = samples[i]
            scores = tuple(smp.item_scores) if len(smp.item_scores) == k else (None,) * k
            convs.append(analyze_messages(rubric, smp.prompt, smp.response, scores, smp.rationale, reason, max_words=s.analysis_words))
        gens = await self.llm.generate(convs, max_tokens=s.analysis_tokens, temperature=s.temperature)
        result.calls += sum(g.calls for g in gens)
        analysed: list[tuple[int, str]] = []
        for (i, _), g in zip(result.selected, gens):
            text = g.text.strip()
            if g.error is not None or not text:
                self._fail(result, "analyze", i, g.error or "empty analysis", g.text)
                continue
            analysed.append((i, text))
        result.analyses = [t for _, t in analysed]
        if not analysed:
            return self._finish(result, start)
        constraint = self._rubric_constraint() if self.llm.constraint_form is not None else None
        refine = [refine_messages(rubric, a, s.limits, max_description_chars=s.max_description_chars) for _, a in analysed]
        gens = await self.llm.generate(
            refine, max_tokens=constraint.max_tokens if constraint else 2048, temperature=s.temperature,
            constraints=[constraint] * len(refine) if constraint else None,
        )
        result.calls += sum(g.calls for g in gens)
        for (i, _), g in zip(analysed, gens):
            if g.error is not None:
                self._fail(result, "refine", i, g.error, g.text)
                continue
            try:
                result.proposals.append(self.parse_proposal(g.text, rubric))
            except ValueError as exc:
                self._fail(result, "refine", i, f"invalid rubric: {exc}", g.text)
        if result.proposals:
            merged = merge_rubrics(result.proposals, max_items=s.limits.max_items, task=rubric.task, context=rubric.context)
            result.rubric = merged
            result.changed = merged.content_hash != rubric.content_hash
        return self._finish(result, start)

    def _fail(self, result: Evolution, stage: str, sample: int, error: str, text: str) -> None:
        result.failures.append(MetaFailure(stage, sample, error, text))
        log.warning("meta-judge step %d: %s of sample %d failed (%s); its answer: %r",
                    result.step, stage, sample, error, text[:_LOG_TEXT_CHARS])

    def _finish(self, result: Evolution, start: float) -> Evolution:
        self.calls += result.calls
        result.seconds = time.perf_counter() - start
        if not result.changed:
            log.warning("meta-judge step %d: %d valid proposals of %d samples; rubric %s kept",
                        result.step, len(result.proposals), len(result.selected), result.parent_hash)
        else:
            log.info("meta-judge step %d: rubric %s -> %s from %d proposals (%d items)", result.step,
                     result.parent_hash, result.rubric.content_hash, len(result.proposals), len(result.rubric.items))
        return result
