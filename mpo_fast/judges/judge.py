"""The reward model: scores (prompt, response) pairs against a rubric with any LLM.

    judge = LocalJudge(model, tokenizer, JudgeSettings(scoring="expected"))
    judgements = await judge.judge([JudgeRequest(prompt, response, rubric), ...])

Scoring modes (`JudgeSettings.scoring`, see types.ScoringMode) and call modes (`call_mode`:
per_item, all_items) combine freely. All calls of a batch are issued together: a local model
batches them into few `generate` calls, a server receives them concurrently.

Reward = rubric.aggregate(item scores): by default the sum of item scores / rubric.max_total, so
rewards stay in [0, 1] when the rubric gains or loses items (pitfall items subtract; weighted and
veto_min aggregations: rubrics/model.py). Any failed item fails the judgement: reward None, the reason in `error`, counted in
`stats` and logged with the judge's text; never a 0.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..parsing import ParsedScores, ScoreSpec, ScoreStatus, parse_scores
from .cache import JudgeCache, judgement_key
from .constrained import Constraint, score_json_constraint, score_tags_constraint
from .expected import ChoiceDistribution, ScoreChoices, distribution_from_chat_logprobs
from .llm import LLM, Generation, Message
from .schema_check import ReplyMismatch, check_json, check_regex
from .prompts import PROMPT_VERSION, ScoreForm, rm_messages, score_spec
from .settings import JudgeSettings
from .types import CallMode, Judgement, JudgeRequest, JudgeStats, ScoringMode

log = logging.getLogger("mpo_fast")

# Parse failures worth a second try (a different sample may write the tag); a transport error
# was already retried by the HTTP client, and a TRUNCATED answer would be truncated again.
_RETRY_STATUSES = frozenset({ScoreStatus.MISSING, ScoreStatus.MALFORMED, ScoreStatus.OUT_OF_RANGE, ScoreStatus.AMBIGUOUS})
_LOG_TEXT_CHARS = 400
# What follows the rationale before the first prefilled tag: a header line, as the prompt asks for.
# Measured on SmolLM2-135M (4 essay judgements): probability mass on the allowed scores of the first
# item 0.04-0.17 after "\n", 0.22-0.33 after "\n\nScores:\n".
_SCORES_HEADER = "\n\nScores:\n"


@dataclass
class _Call:
    """One model call: some items of one request."""

    req: int
    items: tuple[int, ...]
    spec: ScoreSpec
    messages: list[Message]
    choices: list[ScoreChoices]
    values: list[float | None] = field(default_factory=list)
    status: list[ScoreStatus] = field(default_factory=list)
    mass: list[float | None] | None = None
    unresolved: list[float | None] | None = None
    text: str = ""
    calls: int = 0
    error: str | None = None

    def __post_init__(self) -> None:
        self.values = [None] * self.spec.k
        self.status = [ScoreStatus.MISSING] * self.spec.k

    def fail(self, error: str, calls: int = 0) -> None:
        self.error = error
        self.calls += calls
        self.values = [None] * self.spec.k
        self.status = [ScoreStatus.MISSING] * self.spec.k

    def open_tag(self, j: int) -> str:
        return f"<{self.spec.tag_name(j)}>"


class RubricJudge:
    """A reward model over any `LLM`; LocalJudge and OpenAIJudge pick the LLM."""

    def __init__(self, llm: LLM, settings: JudgeSettings | None = None, *, cache: JudgeCache | None = None, name: str | None = None):
        self.llm = llm
        self.settings = settings or JudgeSettings()
        self.cache = cache
        self.name = name or llm.model_id
        self.stats = JudgeStats()

    @property
    def judge_id(self) -> str:
        s = self.settings
        return f"{self.llm.model_id}|{s.mode_name}|T{s.temperature:g}|R{s.max_rationale_chars}|P{PROMPT_VERSION}"

    def cache_identity(self) -> str:
        """judge_id plus everything else that changes a score, hashed: every setting (logprob
        threshold, rationale budget, max_new_tokens, retries ...), where scores come from (logprob
        source, top-k, chat template) and, in constrained mode, the structured-output kind. A
        cached judgement is reused only by a judge that would have produced it the same way."""
        s = self.settings
        llm = self.llm
        parts: dict[str, Any] = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
        parts.update(
            prompt_version=PROMPT_VERSION,
            logprob_source=getattr(llm, "logprob_source", None),
            can_score_prefill=bool(llm.can_score_prefill),
            can_chat_logprobs=bool(llm.can_chat_logprobs),
        )
        endpoint = getattr(llm, "endpoint", None)
        if endpoint is not None:
            parts.update(top_logprobs=endpoint.top_logprobs, chat_template=endpoint.chat_template,
                         max_output_tokens=endpoint.max_output_tokens)
        if s.scoring == ScoringMode.CONSTRAINED:
            parts["constraint_form"] = llm.constraint_form
            parts["structured_output"] = getattr(llm, "flavour", None)
        blob = json.dumps(parts, sort_keys=True, default=str)
        return f"{self.judge_id}|{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def stats_snapshot(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        snap["mode"] = self.settings.mode_name
        client = getattr(self.llm, "client", None)
        if client is not None and hasattr(client, "counters"):
            snap["http"] = client.counters.snapshot()
        return snap

    def judge_sync(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        """`judge` for callers without an event loop."""
        return asyncio.run(self.judge(requests))

    async def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        requests = list(requests)
        for i, r in enumerate(requests):
            if not isinstance(r, JudgeRequest):
                raise TypeError(f"requests[{i}] is a {type(r).__name__}, expected JudgeRequest")
        start = time.perf_counter()
        results: list[Judgement | None] = [None] * len(requests)
        await self.llm.prepare()  # before the keys: the resolved server capabilities are part of them
        identity = self.cache_identity()
        keys = [judgement_key(identity, r.rubric.content_hash, r.prompt, r.response, r.reference) for r in requests]
        todo = []
        for i, key in enumerate(keys):
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                results[i] = hit
            else:
                todo.append(i)
        if todo:
            form = self._form()
            nonce = ScoreSpec.new_nonce()
            calls = self._plan(requests, todo, nonce, form, self._score_nonce(nonce))
            scoring = self.settings.scoring
            if scoring == ScoringMode.PARSE:
                await self._run_parse(calls)
            elif scoring == ScoringMode.CONSTRAINED:
                await self._run_constrained(calls, form)
            else:
                await self._run_expected(calls)
            elapsed = time.perf_counter() - start
            by_req: dict[int, list[_Call]] = {}
            for c in calls:
                by_req.setdefault(c.req, []).append(c)
            fresh = []
            for i in todo:
                j = self._assemble(requests[i], by_req[i], elapsed)
                results[i] = j
                fresh.append((keys[i], j))
            if self.cache is not None:
                self.cache.put_many(fresh)
            self._log_failures([j for _, j in fresh])
        elapsed = time.perf_counter() - start
        self.stats.record(results, elapsed)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    # ---- planning ---------------------------------------------------------------------------

    def _form(self) -> ScoreForm:
        if self.settings.scoring == ScoringMode.CONSTRAINED:
            form = self.llm.constraint_form
            if form is None:
                raise ValueError(
                    f"{self.llm.model_id} cannot constrain its output (structured_output='none'); use scoring='parse' "
                    "or 'expected', or configure the endpoint's structured_output flavour"
                )
            return ScoreForm("json" if form == "json_schema" else "tag")
        return ScoreForm("tag")

    def _score_nonce(self, nonce: str) -> str | None:
        """The nonce goes into every score name, in every mode (see prompts.py): free-text replies
        (parse, chat logprobs), constrained replies (a server may ignore the grammar) and the
        prefilled tag of expected mode too, where a judge that copies what followed the tag
        earlier in its context would otherwise read the policy's forged `<score>10`."""
        return nonce

    def _plan(self, requests, todo, nonce, form, score_nonce) -> list[_Call]:
        calls = []
        for i in todo:
            r = requests[i]
            k = len(r.rubric.items)
            groups = [(j,) for j in range(k)] if self.settings.call_mode == CallMode.PER_ITEM else [tuple(range(k))]
            for items in groups:
                spec = score_spec(r.rubric, items, score_nonce, form=form)
                messages = rm_messages(r, items, spec, nonce, form=form, max_chars=self.settings.max_rationale_chars)
                choices = [ScoreChoices.for_item(spec, j) for j in range(spec.k)]
                calls.append(_Call(i, items, spec, messages, choices))
        return calls

    # ---- reading text -------------------------------------------------------------------------

    @staticmethod
    def _read(calls: Sequence[_Call], gens: Sequence[Generation]) -> None:
        """Parse each call's text with its own spec (calls sharing a spec are parsed in one batch)."""
        groups: dict[ScoreSpec, list[int]] = {}
        for n, (c, g) in enumerate(zip(calls, gens)):
            c.calls += g.calls
            if g.error is not None:
                c.fail(g.error)
                continue
            c.text = g.text
            c.error = None
            groups.setdefault(c.spec, []).append(n)
        for spec, members in groups.items():
            parsed: ParsedScores = parse_scores([calls[n].text for n in members], spec)
            values = parsed.values.tolist()
            status = parsed.status.tolist()
            for row, n in enumerate(members):
                c = calls[n]
                c.status = [ScoreStatus(s) for s in status[row]]
                c.values = [v if s == ScoreStatus.OK else None for v, s in zip(values[row], c.status)]

    async def _run_parse(self, calls: list[_Call]) -> None:
        s = self.settings
        pending = calls
        for attempt in range(1 + s.parse_retries):
            temperature = s.temperature if attempt == 0 else max(s.temperature, s.retry_temperature)
            gens = await self.llm.generate([c.messages for c in pending], max_tokens=s.max_new_tokens, temperature=temperature)
            self._read(pending, gens)
            pending = [c for c in pending if c.error is None and any(st in _RETRY_STATUSES for st in c.status)]
            if not pending:
                break

    def _constraint(self, call: _Call, form: ScoreForm) -> Constraint:
        s = self.settings
        if form.kind == "json":
            return score_json_constraint(call.spec, rationale_key=form.rationale_key, max_chars=s.max_rationale_chars)
        return score_tags_constraint(call.spec, call.choices, min_chars=s.min_rationale_chars, max_chars=s.max_rationale_chars)

    async def _run_constrained(self, calls: list[_Call], form: ScoreForm) -> None:
        s = self.settings
        constraints = [self._constraint(c, form) for c in calls]
        gens = await self.llm.generate(
            [c.messages for c in calls], max_tokens=s.max_new_tokens, temperature=s.temperature, constraints=constraints
        )
        for c, g, con in zip(calls, gens, constraints):
            self._read_constrained(c, g, con)

    @staticmethod
    def _read_constrained(call: _Call, gen: Generation, constraint: Constraint) -> None:
        """Scores only from a reply that matches the exact constraint sent, read from the match.

        A server may ignore the structured-output field and answer in free text; such a reply is
        MALFORMED (or TRUNCATED when it ran out of tokens): masked and counted, never parsed.
        """
        call.calls += gen.calls
        if gen.error is not None:
            call.fail(gen.error)
            return
        call.text = gen.text
        call.error = None
        try:
            if constraint.regex is not None:
                groups = check_regex(gen.text, constraint.regex).groups()
                values = [ch.values[ch.texts.index(t)] for ch, t in zip(call.choices, groups)]
            else:
                obj = check_json(gen.text, constraint.json_schema)
                values = [float(obj[call.spec.tag_name(j)]) for j in range(call.spec.k)]
        except (ReplyMismatch, ValueError, KeyError, TypeError) as exc:
            bad = ScoreStatus.TRUNCATED if gen.finish_reason == "length" else ScoreStatus.MALFORMED
            call.values = [None] * call.spec.k
            call.status = [bad] * call.spec.k
            call.error = f"constrained_mismatch: {exc} (finish_reason={gen.finish_reason})"
            return
        if len(values) != call.spec.k:
            call.values, call.status = [None] * call.spec.k, [ScoreStatus.MALFORMED] * call.spec.k
            call.error = f"constrained_mismatch: {len(values)} scores for {call.spec.k} items"
            return
        call.values = values
        call.status = [ScoreStatus.OK] * call.spec.k

    # ---- expected scores ----------------------------------------------------------------------

    def _apply_distribution(self, call: _Call, j: int, dist: ChoiceDistribution | None) -> None:
        if call.mass is None:
            call.mass = [None] * call.spec.k
        if dist is None:
            call.status[j], call.values[j] = ScoreStatus.MISSING, None
            call.error = call.error or f"expected: no {call.open_tag(j)} tag in the answer"
            return
        call.calls += dist.calls
        if dist.error is not None:
            call.status[j], call.values[j] = ScoreStatus.MISSING, None
            call.error = call.error or dist.error
            return
        mass = dist.mass
        call.mass[j] = mass
        if call.unresolved is None:
            call.unresolved = [None] * call.spec.k
        call.unresolved[j] = dist.unresolved
        share = dist.unresolved_share
        if share > self.settings.max_unresolved_share:
            # A chat answer's top-k only shows the sampled path: after "7", the mass on "1" (-> 1
            # or 10) is unobservable; leaving it out would bias the score, so the item fails.
            call.status[j], call.values[j] = ScoreStatus.MISSING, None
            call.error = call.error or (
                f"unresolved_mass: {dist.unresolved:.4f} of the probability ({share:.0%} of the score mass) could not be "
                f"resolved for item {call.items[j] + 1} (max_unresolved_share={self.settings.max_unresolved_share})"
            )
            return
        value = dist.expected(call.choices[j].values)
        if value is None or mass < self.settings.min_score_mass or not math.isfinite(value):
            call.status[j], call.values[j] = ScoreStatus.MISSING, None
            call.error = call.error or (
                f"low_score_mass: {mass:.4f} of the probability on allowed scores for item {call.items[j] + 1} "
                f"(min_score_mass={self.settings.min_score_mass})"
            )
            return
        call.status[j], call.values[j] = ScoreStatus.OK, value

    def _rationale(self, text: str, call: _Call) -> str:
        """The justification prefilled before the first score tag (cut at the tag if the judge wrote it)."""
        cut = text.find(call.open_tag(0))
        if cut >= 0:
            text = text[:cut]
        return text[: self.settings.max_rationale_chars].rstrip()

    async def _score_items(self, live: list[_Call]) -> None:
        """Every item of every call, read at its prefilled tag after the rationale.

        Item j's tag follows the argmax scores of items < j, exactly as the judge would have
        continued writing. The session runs prompt + rationale once; each item then costs a pass
        over its short suffix only.
        """
        session = await self.llm.open_scoring([c.messages for c in live], [c.text + _SCORES_HEADER for c in live])
        try:
            written = [""] * len(live)
            for j in range(max(c.spec.k for c in live)):
                last = [min(j, c.spec.k - 1) for c in live]  # rows of a shorter rubric repeat their last item
                dists = await session.score(
                    [w + c.open_tag(i) for w, c, i in zip(written, live, last)], [c.choices[i] for c, i in zip(live, last)]
                )
                for n, (c, d) in enumerate(zip(live, dists)):
                    if j >= c.spec.k:
                        continue
                    self._apply_distribution(c, j, d)
                    best = d.argmax if d.error is None and d.argmax is not None else 0
                    written[n] += c.spec.format_score(c.choices[j].values[best], j) + "\n"
        finally:
            session.close()

    async def _run_expected(self, calls: list[_Call]) -> None:
        s = self.settings
        llm = self.llm
        if llm.can_score_prefill:
            stops = sorted({c.open_tag(0) for c in calls})
            gens = await llm.generate([c.messages for c in calls], max_tokens=s.rationale_tokens, temperature=s.temperature, stop=stops)
            live: list[_Call] = []
            for c, g in zip(calls, gens):
                c.calls += g.calls
                if g.error is not None:
                    c.fail(g.error)
                    continue
                c.text = self._rationale(g.text, c)
                live.append(c)
            # Sessions hold the prompts' KV cache: one batch of rows at a time bounds that memory
            # (16 rows x 1,000 tokens of SmolLM2 in fp32 is ~0.7 GB).
            rows = max(1, int(getattr(llm, "scoring_rows", len(live) or 1)))
            for start in range(0, len(live), rows):
                await self._score_items(live[start:start + rows])
            for c in calls:
                if c.error is None and any(st != ScoreStatus.OK for st in c.status):
                    c.error = "expected: an item got no score"
            return
        if llm.can_chat_logprobs:
            top = int(getattr(getattr(llm, "endpoint", None), "top_logprobs", 20))
            gens = await llm.generate([c.messages for c in calls], max_tokens=s.max_new_tokens, temperature=s.temperature, top_logprobs=top)
            for c, g in zip(calls, gens):
                c.calls += g.calls
                if g.error is not None:
                    c.fail(g.error)
                    continue
                c.text = g.text
                if not g.logprobs:
                    c.fail("expected: the server returned no logprobs (does it support top_logprobs?)")
                    continue
                for j in range(c.spec.k):
                    self._apply_distribution(c, j, distribution_from_chat_logprobs(g.logprobs, c.open_tag(j), c.choices[j]))
            return
        raise ValueError(
            f"{llm.model_id} cannot give score probabilities: expected scoring needs an in-process model, or an "
            "endpoint with logprobs='completions' (+ chat_template) or logprobs='chat'"
        )

    # ---- results ------------------------------------------------------------------------------

    def _assemble(self, request: JudgeRequest, calls: list[_Call], elapsed: float) -> Judgement:
        rubric = request.rubric
        k = len(rubric.items)
        values: list[float | None] = [None] * k
        status = [ScoreStatus.MISSING] * k
        mass: list[float | None] | None = None
        unresolved: list[float | None] | None = None
        for c in calls:
            for j, item in enumerate(c.items):
                values[item] = c.values[j]
                status[item] = c.status[j]
                if c.mass is not None:
                    mass = mass or [None] * k
                    mass[item] = c.mass[j]
                if c.unresolved is not None:
                    unresolved = unresolved or [None] * k
                    unresolved[item] = c.unresolved[j]
        ok = all(st == ScoreStatus.OK for st in status)
        reward = rubric.aggregate(values) if ok else None  # type: ignore[arg-type]
        error = None
        if not ok:
            error = next((c.error for c in calls if c.error), None) or "parse: " + ", ".join(
                f"item {i + 1} {st.name}" for i, st in enumerate(status) if st != ScoreStatus.OK
            )
        if len(calls) == 1:
            rationale = calls[0].text
        else:
            rationale = "\n\n".join(f"[{rubric.items[c.items[0]].title}] {c.text}" for c in calls)
        return Judgement(
            item_scores=tuple(values),
            item_status=tuple(status),
            reward=reward,
            ok=ok,
            mode=self.settings.mode_name,
            calls=sum(c.calls for c in calls),
            latency_s=elapsed,
            rationale=rationale,
            error=error,
            score_mass=None if mass is None else tuple(mass),
            unresolved_mass=None if unresolved is None else tuple(unresolved),
            rubric_hash=rubric.content_hash,
        )

    def _log_failures(self, judgements: list[Judgement]) -> None:
        failed = [j for j in judgements if not j.ok]
        if not failed:
            return
        kinds = Counter((j.error or "failed").split(":", 1)[0] for j in failed)
        example = failed[0]
        log.warning(
            "judge %s: %d of %d judgements failed (%s); masked, not scored. First: %s | judge text: %r",
            self.settings.mode_name, len(failed), len(judgements), dict(kinds), example.error,
            example.rationale[:_LOG_TEXT_CHARS],
        )
        for j in failed[1:]:
            log.debug("judge failure: %s | judge text: %r", j.error, j.rationale[:_LOG_TEXT_CHARS])
