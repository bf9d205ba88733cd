"""The meta-reward model (MRM): evolves the rubric from samples the reward model scored.

    evolution = await MetaJudge(llm).evolve(rubric, samples, step)
    if evolution.changed: store.save(evolution.rubric, parent=..., step=step, analyses=evolution.analyses)

Every `mpo_interval` steps (or early, on a hacking signal) the trainer hands over recent samples:
1. prescreen: pick the informative ones (highest- and lowest-scored, suspiciously short or long,
   saturated or zero scores, failed judgements), deterministically;
2. analyze: one MRM call per sample, free text: where the rubric failed on it;
3. refine: one MRM call per analysis, a full rubric as schema-constrained JSON;
4. conservation gate per proposal (rubrics/gates.py): one that drops most of the rubric or every
   initial item is rejected; a removal the analyses do not name is put back;
5. merge: one MRM call (meta_merge.py: union, dedupe, re-count, rewrite; temperature 0), its answer
   canonicalised by the deterministic code; if it fails, rubrics.merge_rubrics of the proposals;
6. gates on the merged rubric (meta_gates.py): conservation again, relevance of each new or
   reworded item (MRM yes/no), discriminativeness of each new item (the RM scores it on the
   analysed samples). Every refusal is an `Evolution.rejections` entry, logged with its reason.
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

from ..rubrics import ProposalLimits, Rubric, RubricItem, merge_rubrics, normalise_proposal
from ..rubrics.gates import GateRejection, GateSettings, carry_over, changed_items, check_conservation, copied_span
from .constrained import rubric_items_schema
from .llm import LLM, Message
from .meta_edit import edit_constraint, edit_messages, read_edit
from .meta_gates import check_discriminativeness, check_relevance
from .meta_merge import canonicalise, merge_messages
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
    reference: str | None = None  # the task's reference answer or label, where it has one


@dataclass(frozen=True)
class MetaSettings:
    """num_samples: samples analysed per MPO step (the reference used 16).
    prescreen: pick informative samples (else evenly spaced ones).
    short_ratio / long_ratio: a response shorter than short_ratio x the median length (or longer
        than long_ratio x) is suspicious.
    mrm_merge: merge the proposals with an MRM call (else only rubrics.merge_rubrics).
    refine: "rubric" (the MRM writes a whole rubric, as the paper) or "edit" (meta_edit.py: each
        current item revised, at most max_new_items added; for small MRMs that cannot keep a rubric).
    gates: the rubric quality gates' thresholds (gates.enabled=False: none run).
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
    mrm_merge: bool = True
    gates: GateSettings = GateSettings()
    refine: str = "rubric"  # rubric: a whole new rubric | edit: revise each item, add up to max_new_items
    max_new_items: int = 2

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.analysis_tokens < 1:
            raise ValueError("MetaSettings needs num_samples >= 1 and analysis_tokens >= 1")
        if self.refine not in ("rubric", "edit") or self.max_new_items < 0:
            raise ValueError(f"MetaSettings.refine={self.refine!r}, max_new_items={self.max_new_items}: "
                             "refine is 'rubric' or 'edit' and max_new_items >= 0")
        if not 0 < self.short_ratio < 1 < self.long_ratio:
            raise ValueError("MetaSettings needs 0 < short_ratio < 1 < long_ratio")


@dataclass(frozen=True)
class MetaFailure:
    stage: str  # "analyze" | "refine" | "merge" (sample -1: the merge is over all proposals)
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
    rejections: list[GateRejection] = field(default_factory=list)
    merged_by: str = ""  # "mrm" | "deterministic" | "" (no merge ran)
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


def with_reference(messages: list[Message], reference: str | None) -> list[Message]:
    """The analysis prompt plus the task's reference answer or label, where the sample has one
    (math, summaries, ethics): the MRM cannot tell a lenient score from a fair one without it."""
    if not reference:
        return messages
    last = dict(messages[-1])
    last["content"] += "\n\n# Reference answer (what a correct response contains)\n<reference>\n" + reference[:1500] + "\n</reference>"
    return [*messages[:-1], last]


class MetaJudge:
    """analyze -> refine -> gate -> merge -> gate with any LLM (the same interface as the reward model's).

    scorer: the reward model (anything with an async `judge(requests)`), used by the
        discriminativeness gate to score new items on the analysed samples; None skips that gate.
    initial_rubric: the task's initial rubric, which the conservation gate requires a proposal to
        keep something of; `evolve(..., initial=...)` overrides it, and without either the first
        rubric this meta-judge evolved stands in.
    """

    def __init__(self, llm: LLM, settings: MetaSettings | None = None, *, scorer=None, initial_rubric: Rubric | None = None):
        self.llm = llm
        self.settings = settings or MetaSettings()
        self.calls = 0
        self.scorer = scorer
        self.initial_rubric = initial_rubric

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

    async def evolve(self, rubric: Rubric, samples: Sequence[MetaSample], step: int, *, initial: Rubric | None = None) -> Evolution:
        start = time.perf_counter()
        s = self.settings
        if self.initial_rubric is None:
            self.initial_rubric = initial or rubric
        initial = initial or self.initial_rubric
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
            convs.append(with_reference(
                analyze_messages(rubric, smp.prompt, smp.response, scores, smp.rationale, reason, max_words=s.analysis_words),
                getattr(smp, "reference", None)))
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
        constraint, refine = self._refine_requests(rubric, samples, analysed)
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
                parse = self.parse_proposal if s.refine == "rubric" else self._parse_edit
                result.proposals.append(parse(g.text, rubric))
            except ValueError as exc:
                self._fail(result, "refine", i, f"invalid rubric: {exc}", g.text)
        if result.proposals:
            await self._merge_and_gate(result, rubric, [samples[i] for i, _ in result.selected], initial)
        return self._finish(result, start)

    def _refine_requests(self, rubric: Rubric, samples: Sequence[MetaSample], analysed: list[tuple[int, str]]):
        """(constraint or None, one conversation per analysis) in the configured refine form."""
        s = self.settings
        can = self.llm.constraint_form is not None
        if s.refine == "edit":
            constraint = edit_constraint(rubric, s.limits, max_description_chars=s.max_description_chars,
                                         max_new=s.max_new_items) if can else None
            convs = [edit_messages(rubric, a, s.limits, max_description_chars=s.max_description_chars, max_new=s.max_new_items)
                     for _, a in analysed]
        else:
            constraint = self._rubric_constraint() if can else None
            convs = [refine_messages(rubric, a, s.limits, max_description_chars=s.max_description_chars) for _, a in analysed]
        return constraint, [with_reference(c, getattr(samples[i], "reference", None)) for (i, _), c in zip(analysed, convs)]

    def _parse_edit(self, text: str, rubric: Rubric) -> Rubric:
        return read_edit(text, rubric, self.settings.limits)

    # -- merge and quality gates ------------------------------------------------------------

    async def _merge_and_gate(self, result: Evolution, rubric: Rubric, seen: list[MetaSample], initial: Rubric) -> None:
        s, g = self.settings, self.settings.gates
        proposals = list(result.proposals)
        if g.enabled:
            kept = []
            for p in proposals:
                fixed, notes = check_conservation(rubric, p, initial=initial, analyses=result.analyses, settings=g,
                                                  max_items=s.limits.max_items)
                self._note(result, notes)
                if fixed is not None:
                    kept.append(fixed)
            proposals = kept
            if not proposals:
                return
        merged = await self._mrm_merge(result, rubric, proposals, seen, initial) if s.mrm_merge else None
        if merged is None:
            merged = merge_rubrics(proposals, max_items=s.limits.max_items, task=rubric.task, context=rubric.context)
            result.merged_by = "deterministic"
        final = await self._gate(result, rubric, merged, seen, initial) if g.enabled else merged
        if final is not None:
            final = carry_over(rubric, final, overlap=g.match_overlap)
            result.rubric = final
            result.changed = final.content_hash != rubric.content_hash

    async def _mrm_merge(self, result: Evolution, rubric: Rubric, proposals: list[Rubric], seen: list[MetaSample],
                         initial: Rubric) -> Rubric | None:
        """The MRM's merge of `proposals`, canonicalised; None (deterministic merge instead) when its
        answer fails, is invalid, or fails conservation."""
        s = self.settings
        references = sorted({smp.reference for smp in seen if getattr(smp, "reference", None)})
        messages = merge_messages(rubric, proposals, s.limits, max_description_chars=s.max_description_chars,
                                  references=references[:4])
        constraint = self._rubric_constraint() if self.llm.constraint_form is not None else None
        gen = (await self.llm.generate([messages], max_tokens=constraint.max_tokens if constraint else 2048,
                                       temperature=0.0, constraints=[constraint] if constraint else None))[0]
        result.calls += gen.calls
        if gen.error is not None:
            self._fail(result, "merge", -1, gen.error, gen.text)
            return None
        try:
            merged = self.parse_proposal(gen.text, rubric)
        except ValueError as exc:
            self._fail(result, "merge", -1, f"invalid rubric: {exc}", gen.text)
            return None
        merged = canonicalise(merged, rubric, max_items=s.limits.max_items, overlap=s.gates.match_overlap)
        if s.gates.enabled:
            fixed, notes = check_conservation(rubric, merged, initial=initial, analyses=result.analyses,
                                              settings=s.gates, max_items=s.limits.max_items)
            if fixed is None:
                self._note(result, [GateRejection("merge", None, f"MRM merge {n.reason}; merged deterministically instead",
                                                  "fallback") for n in notes])
                return None
            self._note(result, notes)
            merged = fixed
        result.merged_by = "mrm"
        return merged

    async def _gate(self, result: Evolution, rubric: Rubric, merged: Rubric, seen: list[MetaSample],
                    initial: Rubric) -> Rubric | None:
        """Conservation, relevance and discriminativeness of the merged rubric: the rubric to
        install (refused items dropped, refused rewordings reverted), or None to keep `rubric`."""
        s, g = self.settings, self.settings.gates
        fixed, notes = check_conservation(rubric, merged, initial=initial, analyses=result.analyses, settings=g,
                                          max_items=s.limits.max_items)
        self._note(result, notes)
        if fixed is None:
            return None
        items: list = list(fixed.items)
        changes = changed_items(rubric, fixed, overlap=g.match_overlap)
        # Deterministic part of relevance: a criterion quoting an analysed sample is about its content.
        sources = [t for smp in seen for t in (smp.prompt, smp.response)]
        kept_changes = []
        for ni, oi in changes:
            span = copied_span(f"{items[ni].title} {items[ni].description}", sources)
            if span is None:
                kept_changes.append((ni, oi))
            else:
                self._refuse(result, rubric, items, ni, oi, f"quotes an analysed sample ({span!r})")
        changes = kept_changes
        if g.relevance and changes:
            verdicts, calls = await check_relevance(self.llm, rubric, [items[ni] for ni, _ in changes], g)
            result.calls += calls
            for (ni, oi), (ok, why) in zip(changes, verdicts):
                if not ok:
                    self._refuse(result, rubric, items, ni, oi, why)
        new = [ni for ni, oi in changes if oi is None and items[ni] is not None]
        if g.discriminativeness and self.scorer is not None and new:
            notes, drop, calls = await check_discriminativeness(self.scorer, rubric, [items[ni] for ni in new], seen, g)
            result.calls += calls
            self._note(result, notes)
            for d in drop:
                items[new[d]] = None
        kept = [it for it in items if it is not None]
        if not kept:
            return None
        return canonicalise(Rubric(task=rubric.task, context=rubric.context, items=tuple(kept)), rubric,
                            max_items=s.limits.max_items, overlap=g.match_overlap)

    def _refuse(self, result: Evolution, rubric: Rubric, items: list, ni: int, oi: int | None, why: str) -> None:
        """Relevance refused item `ni`: a new item is dropped; a reworded one gets its current
        title and description back (a reweighting stands: points are bounded and not text)."""
        if oi is None:
            self._note(result, [GateRejection("relevance", items[ni].title, why)])
            items[ni] = None
            return
        self._note(result, [GateRejection("relevance", items[ni].title, why, "reverted")])
        old = rubric.items[oi]
        items[ni] = RubricItem(old.title, old.description, items[ni].max_points, weight=old.weight, kind=old.kind)

    def _note(self, result: Evolution, notes: list[GateRejection]) -> None:
        for n in notes:
            result.rejections.append(n)
            log.warning("meta-judge step %d: %s gate %s %s: %s", result.step, n.gate, n.action,
                        "the proposal" if n.item is None else repr(n.item), n.reason)

    def _fail(self, result: Evolution, stage: str, sample: int, error: str, text: str) -> None:
        result.failures.append(MetaFailure(stage, sample, error, text))
        log.warning("meta-judge step %d: %s of sample %d failed (%s); its answer: %r",
                    result.step, stage, sample, error, text[:_LOG_TEXT_CHARS])

    def _finish(self, result: Evolution, start: float) -> Evolution:
        self.calls += result.calls
        result.seconds = time.perf_counter() - start
        if not result.changed:
            log.warning("meta-judge step %d: %d valid proposals of %d samples, %d gate refusals; rubric %s kept",
                        result.step, len(result.proposals), len(result.selected), len(result.rejections), result.parent_hash)
        else:
            log.info("meta-judge step %d: rubric %s -> %s from %d proposals (%d items)", result.step,
                     result.parent_hash, result.rubric.content_hash, len(result.proposals), len(result.rubric.items))
        return result
