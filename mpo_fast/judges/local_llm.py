"""An in-process transformers model behind the judges' LLM interface.

Generation is batched (left padding, rows sorted by length so a batch pads little) and runs in a
worker thread, so an asyncio trainer keeps rolling out while the judge thinks. One lock
serialises calls into the model: two threads interleaving `generate` on one model would compete
for the same cores and gain nothing.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Sequence

import torch

from ..models.hf_compat import with_cache_name
from .constrained import Constraint, GrammarCompiler
from .expected import ChoiceDistribution, ScoreChoices
from .llm import Conversation, Generation, check_choice_rows, cut_at_stop, per_row_constraints
from .local_scoring import LocalChoiceScorer


class LocalLLM:
    """LLM interface over a causal LM and its tokenizer (chat template required)."""

    constraint_form = "regex"
    can_score_prefill = True
    can_chat_logprobs = False

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch_size: int = 16,
        backend: str = "auto",
        name: str | None = None,
        share_prefix: bool = True,
    ):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "the judge tokenizer has no chat template; load an instruct model's tokenizer (or set "
                "tokenizer.chat_template) so judge prompts are rendered the way the model was trained"
            )
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.max_batch_size = max_batch_size
        self.scoring_rows = max_batch_size  # rows per scoring session (bounds the KV cache it holds)
        self.model_id = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self.scorer = LocalChoiceScorer(model, tokenizer, backend=backend, max_batch_size=max_batch_size, share_prefix=share_prefix)
        # Rationale generation prefills through the scorer's shared-prefix cache too: the rubric
        # head it runs is the one the scoring pass after it reuses.
        self.share_prefix = share_prefix
        self._grammars: GrammarCompiler | None = None
        self._lock = threading.Lock()
        self._stops: dict[tuple[str, ...], object] = {}

    async def prepare(self) -> None:
        """Nothing to discover in process (the interface's capability probe)."""

    # ---- prompts ---------------------------------------------------------------------------

    def render(self, conversation: Conversation, prefill: str = "") -> list[int]:
        """Token ids of the chat-templated conversation, the assistant turn opened (and prefilled)."""
        text = self.tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text + prefill, add_special_tokens=False)["input_ids"]

    def _grammar(self) -> GrammarCompiler:
        if self._grammars is None:
            vocab = int(getattr(self.model.config, "vocab_size", 0) or len(self.tokenizer))
            self._grammars = GrammarCompiler(self.tokenizer, vocab)
        return self._grammars

    # ---- generation ------------------------------------------------------------------------

    async def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        constraints: Sequence[Constraint | None] | None = None,
        stop: Sequence[str] | None = None,
        top_logprobs: int = 0,
    ) -> list[Generation]:
        if top_logprobs:
            raise ValueError("LocalLLM scores choices exactly with score_choices; top_logprobs is for servers")
        cons = per_row_constraints(constraints, len(conversations))
        return await asyncio.to_thread(self._generate_sync, list(conversations), max_tokens, temperature, cons, stop)

    def _generate_sync(self, conversations, max_tokens, temperature, cons, stop) -> list[Generation]:
        prompts = [self.render(c) for c in conversations]
        # Constrained and free rows cannot share a logits processor: batch them apart.
        groups: dict[bool, list[int]] = {}
        for i, c in enumerate(cons):
            groups.setdefault(c is not None, []).append(i)
        out: list[Generation | None] = [None] * len(prompts)
        for _, members in sorted(groups.items()):
            members.sort(key=lambda i: len(prompts[i]))
            for start in range(0, len(members), self.max_batch_size):
                chunk = members[start:start + self.max_batch_size]
                gens = self._generate_batch([prompts[i] for i in chunk], [cons[i] for i in chunk], max_tokens, temperature, stop)
                for i, g in zip(chunk, gens):
                    out[i] = g
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(self, prompts, constraints, max_tokens, temperature, stop) -> list[Generation]:
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        pad = tok.pad_token_id
        prefill = self.scorer.shared_prefill() if self.share_prefix else None
        past = None
        heads = [p[:-1] for p in prompts]
        if prefill is not None and min(len(p) for p in prompts) > 1 and prefill.worth_it(heads):
            # Everything but each prompt's last token goes through the shared prefill; `generate`
            # starts from its cache (columns: head | group part | row part, padding masked).
            with self._lock:
                _, past, mask, ids = prefill.run(heads, pad_id=pad, device=device)
            last = torch.tensor([[p[-1]] for p in prompts], dtype=torch.long, device=device)
            ids = torch.cat([ids, last], 1)
            mask = torch.cat([mask, torch.ones_like(last)], 1)
        else:
            width = max(len(p) for p in prompts)
            ids = torch.full((len(prompts), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, p in enumerate(prompts):
                ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[r, width - len(p):] = 1
        width = ids.shape[1]
        kwargs = dict(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_tokens,
            pad_token_id=pad,
            do_sample=temperature > 0,
        )
        if past is not None:
            kwargs["past_key_values"] = past
        if temperature > 0:
            kwargs.update(temperature=float(temperature), top_p=1.0, top_k=0)
        processor = None
        if constraints[0] is not None:
            processor = self._grammar().logits_processor(constraints)
            kwargs["logits_processor"] = [processor]
            # The constraint's own bound always suffices to finish it (see constrained.py).
            kwargs["max_new_tokens"] = max(max_tokens, max(c.max_tokens for c in constraints))
        if stop:
            kwargs["stopping_criteria"] = [self._stop_criteria(tuple(stop))]
        with self._lock:
            out = self.model.generate(**with_cache_name(self.model, kwargs))
        new = out[:, width:].cpu()
        eos = set(self._eos_ids())
        gens = []
        for r in range(len(prompts)):
            row = new[r].tolist()
            n, finished = len(row), False
            for j, t in enumerate(row):
                if t in eos:
                    n, finished = j, True
                    break
            text = tok.decode(row[:n], skip_special_tokens=True)
            text, cut = cut_at_stop(text, stop)
            finished = finished or cut
            error = None
            if processor is not None and r in processor.rejected_rows:
                error = "constraint: the grammar refused a sampled token"
            gens.append(Generation(text=text, finish_reason="stop" if finished else "length",
                                   completion_tokens=n, prompt_tokens=len(prompts[r]), error=error))
        return gens

    def _stop_criteria(self, stop: tuple[str, ...]):
        """transformers' StopStringCriteria, built once per stop-string set: building it scans the
        whole vocabulary (0.4-1.0 s for SmolLM2's 49,152 tokens on one CPU core), which
        `generate(stop_strings=...)` would redo on every call, one call per sample in the pipeline.
        It keeps no per-call state (each call reads the ids it is given)."""
        hit = self._stops.get(stop)
        if hit is None:
            from transformers import StopStringCriteria

            hit = self._stops[stop] = StopStringCriteria(self.tokenizer, list(stop))
        return hit

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    # ---- expected scores -------------------------------------------------------------------

    async def score_choices(
        self,
        conversations: Sequence[Conversation],
        prefills: Sequence[str],
        choices: Sequence[ScoreChoices],
    ) -> list[ChoiceDistribution]:
        check_choice_rows(conversations, prefills, choices)
        return await asyncio.to_thread(self._score_sync, list(conversations), list(prefills), list(choices))

    def _score_sync(self, conversations, prefills, choices) -> list[ChoiceDistribution]:
        prefixes = [self.render(c, p) for c, p in zip(conversations, prefills)]
        with self._lock:
            return self.scorer.score(prefixes, choices)

    async def open_scoring(self, conversations: Sequence[Conversation], prefills: Sequence[str]) -> "LocalScoringSession":
        """Run the prompts (+ prefills) once; score several continuations of them (KV cache reused)."""
        if len(conversations) != len(prefills):
            raise ValueError("open_scoring needs one prefill per conversation")

        def run():
            prefixes = [self.render(c, p) for c, p in zip(conversations, prefills)]
            with self._lock:
                return self.scorer.session(prefixes)

        return LocalScoringSession(self, await asyncio.to_thread(run))


class LocalScoringSession:
    """Scores positions after the prompts of one `open_scoring` call (see local_scoring.ScoringSession)."""

    def __init__(self, llm: LocalLLM, session):
        self._llm = llm
        self._session = session

    async def score(self, suffixes: Sequence[str], choices: Sequence[ScoreChoices]) -> list[ChoiceDistribution]:
        tok = self._llm.tokenizer

        def run():
            ids = [tok(s, add_special_tokens=False)["input_ids"] if s else [] for s in suffixes]
            with self._llm._lock:
                return self._session.score(ids, choices)

        return await asyncio.to_thread(run)

    def close(self) -> None:
        self._session = None  # frees the KV cache
