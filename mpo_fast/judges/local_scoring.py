"""Exact score-choice probabilities from an in-process model (the `expected` mode's fast path).

One batched forward pass over the prefilled prompts (`...rationale<score-n>`) gives each row's
next-token logits; the `expected_score` op gathers the allowed tokens' log-probs in one read of
the [rows, vocab] block (Triton on GPU). Rows that may still be writing a longer number ("1" may
become "10") take one more step: the prompt's KV cache is reused, so that step costs one or two
tokens per row, not another pass over the prompt.

Token tables say where every vocabulary token leads from a node of the choice trie
(mpo_fast/judges/expected.py); they depend only on the tokenizer and the allowed texts, so they
are built once and cached.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..models.hf_compat import output_cache, with_cache_name
from ..ops.expected_score import expected_score
from .local_prefix import SharedPrefill
from .expected import _NUMERIC, _WS, DONE, INVALID, NODE, ChoiceDistribution, ScoreChoices

# Below this reach probability a node is not worth a forward step; its mass is "unresolved".
MIN_REACH = 1e-4
MAX_DEPTH = 3


@dataclass
class _NodeTable:
    ids: list[int]
    actions: list[tuple[str, int | str]]
    rest_done: int | None  # every token not starting a number completes this choice


class TokenPieces:
    """The text each token id decodes to, indexed by first character."""

    def __init__(self, tokenizer):
        size = len(tokenizer)
        self.pieces: list[str] = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        for i in special:
            if 0 <= i < size:
                self.pieces[i] = ""  # EOS and friends end a number, they do not spell one
        self.by_first: dict[str, list[int]] = {}
        self.by_first_stripped: dict[str, list[int]] = {}
        numeric = []
        for i, p in enumerate(self.pieces):
            if p:
                self.by_first.setdefault(p[0], []).append(i)
                if p[0] in _NUMERIC:
                    numeric.append(i)
            s = p.lstrip(_WS)
            if s:
                self.by_first_stripped.setdefault(s[0], []).append(i)
        self.numeric_ids = torch.tensor(numeric, dtype=torch.long)
        self.empty_ids = [i for i, p in enumerate(self.pieces) if p == ""]


class LocalChoiceScorer:
    """P(each allowed score) after prefilled prompts, from a causal LM in process."""

    def __init__(
        self, model, tokenizer, *, backend: str = "auto", max_batch_size: int = 16, use_cache: bool = True,
        share_prefix: bool = True,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.use_cache = use_cache
        self._pieces: TokenPieces | None = None
        self._tables: dict[tuple[tuple[str, ...], str], _NodeTable] = {}
        self._keep_arg = True  # whether the model's forward takes logits_to_keep
        # Judge prompts of one step share their rubric head, a group's its task prompt: run once.
        self.prefill = SharedPrefill(self._forward) if share_prefix and use_cache else None

    @property
    def pieces(self) -> TokenPieces:
        if self._pieces is None:
            self._pieces = TokenPieces(self.tokenizer)
        return self._pieces

    def table(self, choices: ScoreChoices, node: str) -> _NodeTable:
        key = (choices.texts, node)
        hit = self._tables.get(key)
        if hit is not None:
            return hit
        pieces = self.pieces
        stem = node.lstrip(_WS)
        rest_done = choices.texts.index(stem) if stem in choices.texts else None
        if rest_done is not None:
            # Only tokens that continue a number can lead anywhere but "done": scan those.
            scan = pieces.numeric_ids.tolist()
        elif stem:
            scan = sorted({i for ch in _NUMERIC for i in pieces.by_first.get(ch, [])})
        else:
            firsts = {t[0] for t in choices.texts}
            scan = sorted({i for ch in firsts for i in pieces.by_first_stripped.get(ch, [])} | set(pieces.by_first.get(" ", [])))
        ids, actions = [], []
        for i in scan:
            kind, target = choices.step(node, pieces.pieces[i])
            if kind == INVALID:
                continue
            ids.append(i)
            actions.append((kind, target))
        table = _NodeTable(ids, actions, rest_done)
        self._tables[key] = table
        return table

    # ---- model passes ----------------------------------------------------------------------

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _pad(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def _forward(self, **kwargs):
        kwargs = with_cache_name(self.model, kwargs)
        if self._keep_arg:
            try:
                return self.model(**kwargs, logits_to_keep=1)
            except TypeError:
                self._keep_arg = False  # older models: full logits, we take the last position
        return self.model(**kwargs)

    def shared_prefill(self) -> SharedPrefill | None:
        """The shared-prefix cache, emptied first if the weights changed since it was filled (an
        optimizer step bumps every parameter's in-place version counter)."""
        if self.prefill is not None:
            params = list(self.model.parameters())
            self.prefill.check_weights((params[0]._version, params[-1]._version, len(params)))
        return self.prefill

    def _prefix_pass(self, seqs: Sequence[Sequence[int]], want_cache: bool):
        device = self._device()
        prefill = self.shared_prefill()
        if prefill is not None and prefill.worth_it(seqs):
            logits, cache, mask, _ = prefill.run(seqs, pad_id=self._pad(), device=device, want_cache=want_cache)
            return logits, cache, mask
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self._pad(), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):  # left padding: every row's last real token is at -1
            ids[r, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[r, width - len(s):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=want_cache)
        return out.logits[:, -1, :], (output_cache(out) if want_cache else None), mask

    def _continue_pass(self, cache, mask, rows: list[int], paths: list[list[int]]) -> torch.Tensor:
        """Logits after each (prompt row, token path), reusing the prompt's KV cache."""
        from transformers import DynamicCache

        device = mask.device
        out_rows: list[torch.Tensor | None] = [None] * len(rows)
        by_len: dict[int, list[int]] = {}
        for e, p in enumerate(paths):
            by_len.setdefault(len(p), []).append(e)
        for depth, entries in by_len.items():
            index = torch.tensor([rows[e] for e in entries], dtype=torch.long, device=device)
            # Index-selecting copies the selected rows, so the prompt cache stays intact for the
            # next depth.
            data = [(layer.keys.index_select(0, index), layer.values.index_select(0, index)) for layer in cache.layers]
            sub = DynamicCache(data)
            attn = torch.cat([mask.index_select(0, index), torch.ones(len(entries), depth, dtype=mask.dtype, device=device)], 1)
            pos = mask.index_select(0, index).sum(-1, keepdim=True) + torch.arange(depth, device=device)
            tokens = torch.tensor([paths[e] for e in entries], dtype=torch.long, device=device)
            out = self._forward(input_ids=tokens, attention_mask=attn, position_ids=pos, past_key_values=sub,
                                use_cache=True)  # _forward renames the cache argument for this model
            logits = out.logits[:, -1, :]
            for j, e in enumerate(entries):
                out_rows[e] = logits[j]
        return torch.stack(out_rows)

    def _after(self, prefix: "_Prefix", rows: list[int], paths: list[list[int]]) -> torch.Tensor:
        """Next-token logits after each (prompt row, token path); an empty path is the prompt's own end."""
        out: list[torch.Tensor | None] = [None] * len(rows)
        todo = [e for e, p in enumerate(paths) if p]
        for e, p in enumerate(paths):
            if not p:
                out[e] = prefix.last_logits[rows[e]]
        if todo:
            sub_rows, sub_paths = [rows[e] for e in todo], [paths[e] for e in todo]
            if prefix.cache is not None:
                logits = self._continue_pass(prefix.cache, prefix.mask, sub_rows, sub_paths)
            else:  # no reusable cache: run prompt + path from scratch (exact, slower)
                logits, _, _ = self._prefix_pass([list(prefix.seqs[r]) + list(p) for r, p in zip(sub_rows, sub_paths)], want_cache=False)
            for j, e in enumerate(todo):
                out[e] = logits[j]
        return torch.stack(out)

    def _run_prefix(self, seqs) -> "_Prefix":
        logits, cache, mask = self._prefix_pass(seqs, want_cache=self.use_cache)
        if cache is not None and not hasattr(cache, "layers"):
            cache = None  # transformers < 5 caches: fall back to recomputation
        return _Prefix(list(seqs), logits, cache, mask)

    # ---- scoring ---------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, prefixes: Sequence[Sequence[int]], choices: Sequence[ScoreChoices]) -> list[ChoiceDistribution]:
        """One distribution per prefix (token ids ending right after the opened score tag)."""
        if len(prefixes) != len(choices):
            raise ValueError(f"{len(prefixes)} prefixes but {len(choices)} choice sets; give one per prefix")
        session = self.session(prefixes)
        return session.score([[] for _ in prefixes], choices)

    def session(self, prefixes: Sequence[Sequence[int]]) -> "ScoringSession":
        """Run the prompts once; score several positions after them (see ScoringSession)."""
        return ScoringSession(self, prefixes)

    def _score_rows(self, prefix: "_Prefix", suffixes: list[list[int]], choices: Sequence[ScoreChoices]) -> list[ChoiceDistribution]:
        rows = len(suffixes)
        root_logits = self._after(prefix, list(range(rows)), suffixes)
        tables = [self.table(c, "") for c in choices]
        width = max(1, max(len(t.ids) for t in tables))
        vocab = root_logits.shape[-1]
        ids = torch.full((rows, width), -1, dtype=torch.long)
        for r, t in enumerate(tables):
            # Tokens past the model's vocabulary (added to the tokenizer only) can never be sampled.
            ids[r, : len(t.ids)] = torch.tensor([i if i < vocab else -1 for i in t.ids], dtype=torch.long)
        ids = ids.to(root_logits.device)
        logp = expected_score(root_logits, ids, torch.zeros(ids.shape, device=ids.device), backend=self.backend).logp
        probs = [[0.0] * len(c.texts) for c in choices]
        unresolved = [0.0] * rows
        # node reach: (row, node text) -> [pooled probability, best path probability, best token path]
        frontier: dict[tuple[int, str], list] = {}
        root_p = logp.double().exp().cpu()
        for r, t in enumerate(tables):
            self._spread(r, t, root_p[r, : len(t.ids)].tolist(), 1.0, [], probs, frontier)
        numeric = self.pieces.numeric_ids
        numeric = numeric[numeric < vocab]
        depth = 1
        while frontier:
            live = sorted(k for k, v in frontier.items() if v[0] >= MIN_REACH and depth <= MAX_DEPTH)
            for key, (reach, _, _) in frontier.items():
                if reach < MIN_REACH or depth > MAX_DEPTH:
                    unresolved[key[0]] += reach
            if not live:
                break
            rows_e = [r for r, _ in live]
            paths = [frontier[k][2] for k in live]
            logits = self._after(prefix, rows_e, [suffixes[r] + p for r, p in zip(rows_e, paths)])
            node_logp = torch.log_softmax(logits.double(), dim=-1).cpu()
            reached = {k: frontier[k][0] for k in live}
            frontier = {}
            for e, (r, node) in enumerate(live):
                reach, path = reached[(r, node)], paths[e]
                table = self.table(choices[r], node)
                row = node_logp[e]
                ids = [i for i in table.ids if i < vocab]
                explicit = row[torch.tensor(ids, dtype=torch.long)].exp().tolist() if ids else []
                self._spread(r, table, explicit, reach, path, probs, frontier, ids=ids)
                if table.rest_done is not None:
                    # Everything that does not continue a number ends this one (EOS, '<', space).
                    cont = float(row[numeric].exp().sum()) if numeric.numel() else 0.0
                    probs[r][table.rest_done] += reach * max(0.0, 1.0 - cont)
            depth += 1
        return [ChoiceDistribution(probs=probs[r], unresolved=unresolved[r], calls=1) for r in range(rows)]

    @staticmethod
    def _spread(row, table, token_probs, reach, path, probs, frontier, ids=None) -> None:
        action = dict(zip(table.ids, table.actions))
        for tok, p in zip(table.ids if ids is None else ids, token_probs):
            if not p > 0.0 or not math.isfinite(p):
                continue
            kind, target = action[tok]
            if kind == DONE:
                probs[row][target] += reach * p
            elif kind == NODE:
                # Pool the probability of every path to the node; continue along the likeliest.
                entry = frontier.setdefault((row, target), [0.0, -1.0, None])
                entry[0] += reach * p
                if reach * p > entry[1]:
                    entry[1], entry[2] = reach * p, path + [tok]


@dataclass
class _Prefix:
    """One chunk of prompts after its forward pass: last-position logits and the KV cache."""

    seqs: list
    last_logits: torch.Tensor
    cache: object
    mask: torch.Tensor


class ScoringSession:
    """Prompts run once, then scored at several later positions.

    The `expected` mode with all items reads item j after "<item1>s1</item1>...<itemj>": every
    position shares the prompt and the rationale. The session keeps their KV cache, so each item
    costs a pass over its few suffix tokens instead of the whole prompt again (6 items of a
    ~900-token essay prompt: one prompt pass and six ~10-token passes instead of six prompt passes).
    """

    def __init__(self, scorer: LocalChoiceScorer, prefixes: Sequence[Sequence[int]]):
        self.scorer = scorer
        self.rows = len(prefixes)
        order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))  # similar lengths pad less
        self._chunks: list[tuple[list[int], _Prefix]] = []
        with torch.inference_mode():
            for start in range(0, len(order), scorer.max_batch_size):
                members = order[start:start + scorer.max_batch_size]
                self._chunks.append((members, scorer._run_prefix([prefixes[i] for i in members])))

    @torch.inference_mode()
    def score(self, suffixes: Sequence[Sequence[int]], choices: Sequence[ScoreChoices]) -> list[ChoiceDistribution]:
        """One distribution per prompt, after appending suffixes[i] (token ids, may be empty)."""
        if len(suffixes) != self.rows or len(choices) != self.rows:
            raise ValueError(f"the session holds {self.rows} prompts; give one suffix and one choice set per prompt")
        out: list[ChoiceDistribution | None] = [None] * self.rows
        for members, prefix in self._chunks:
            dists = self.scorer._score_rows(prefix, [list(suffixes[i]) for i in members], [choices[i] for i in members])
            for i, d in zip(members, dists):
                out[i] = d
        return out  # type: ignore[return-value]
