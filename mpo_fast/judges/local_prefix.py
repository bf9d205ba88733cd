"""Shared-prefix prefill for the in-process judge: run what the rows have in common once.

Judge prompts are laid out [system + task + rubric + instructions] [prompt] [response] [score
suffix] (prompts.py), so a batch of judge prompts shares a long head: the rubric part with every
sample of the step (and with the next step, until the rubric changes), the prompt part with every
sample of its group. Measured on SmolLM2-135M, 2 cores: 8 judge prompts of ~600 tokens take 8.4 s
as one batch (logits_to_keep=1), 3.0 s with a ~450-token head run once (PERF_FLOORS.md).

`SharedPrefill.run(seqs)` returns the same (last-position logits, KV cache, attention mask) as one
left-padded batch over `seqs`, computed in three layers:
  1. the head common to every row ("rubric prefix"): one row, kept in a small LRU keyed by its
     tokens, so the rationale pass and the scoring pass of a judge call, and later steps with the
     same rubric, reuse it (a kept head that is a prefix of a new one is extended, not redone);
  2. per group of rows sharing a further stretch ("prompt prefix"): one row per group;
  3. the rest of every row, left-padded, one batch, keeping only the last position's logits.
The cache's columns are [head | group part, right-padded | row part, left-padded]; the padding
in the middle is masked, and positions come from the mask, so attention sees exactly the tokens
of the unshared pass (logits agree to fp32 noise, ~1e-5; tests/judges/test_prefix_sharing.py).
Token-level sharing is exact whatever the tokenizer did at the boundary: the split is on ids.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch

from ..models.hf_compat import output_cache

# Below this many shared tokens a separate pass costs more than it saves (one extra forward
# call, ~5 ms of Python and kernel launches for this model, against ~2 ms of compute per token).
MIN_SHARED = 16
# Tokens at the end of a kept row that a continuation may re-tokenise differently (a BPE merge
# across the seam between the prompt and the text appended to it).
ROW_SLACK = 4


def _lcp(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _cache(layers: list[tuple[torch.Tensor, torch.Tensor]]):
    from transformers import DynamicCache

    return DynamicCache(layers)


def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


class SharedPrefill:
    """Prefill of a batch of token rows with their shared heads run once (see the module docstring).

    forward: the model call, (**kwargs) -> output with .logits and a KV cache (`cache` / `past_key_values`), keeping only
    the last position's logits (LocalChoiceScorer._forward).
    capacity: rubric heads kept between calls (each ~20 MB for 450 tokens of SmolLM2 in fp32).
    """

    def __init__(self, forward: Callable, *, min_shared: int = MIN_SHARED, capacity: int = 4, max_kept_rows: int = 16):
        self.forward = forward
        self.min_shared = min_shared
        self.capacity = capacity
        self._heads: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self.stats = {"head_hits": 0, "row_hits": 0, "head_tokens_run": 0, "group_tokens_run": 0, "row_tokens_run": 0}
        # Recent batches, newest last: (rows, cache layers, mask, ids), at most max_kept_rows rows
        # in all (16 rows x 600 tokens of SmolLM2 in fp32: ~180 MB).
        self._recent: list[tuple] = []
        self.max_kept_rows = max_kept_rows
        self._stamp = None

    def check_weights(self, stamp) -> None:
        """Drop every kept cache when `stamp` (the weights' in-place version counters) changed:
        keys and values computed by other weights are wrong, not merely stale."""
        if stamp != self._stamp:
            self.clear()
            self._stamp = stamp

    def clear(self) -> None:
        """Forget every kept cache (they hold the weights' keys and values: call after the weights change)."""
        self._heads.clear()
        self._recent = []

    # -- layer 1: the head every row shares ------------------------------------------------------

    def _head(self, tokens: tuple[int, ...], device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        hit = self._heads.get(tokens)
        if hit is not None:
            self._heads.move_to_end(tokens)
            self.stats["head_hits"] += 1
            return hit
        # The kept head sharing the most tokens with this one (the same rubric under another
        # step's fence nonce, or a head this one extends): reuse that stretch, run the rest.
        base, best = None, 0
        for key in self._heads:
            n = _lcp(key, tokens, len(tokens))
            if n > best:
                base, best = key, n
        n = len(tokens)
        if base is not None and best >= self.min_shared:
            self.stats["head_hits"] += 1
            layers = [(k[:, :, :best].clone(), v[:, :, :best].clone()) for k, v in self._heads[base]]
            if best == n:
                self._keep(tokens, layers)
                return layers
            past = _cache(layers)
        else:
            best, past = 0, None
        rest = torch.tensor([tokens[best:]], dtype=torch.long, device=device)
        out = self.forward(
            input_ids=rest, attention_mask=torch.ones(1, n, dtype=torch.long, device=device),
            position_ids=torch.arange(best, n, device=device)[None], past_key_values=past, use_cache=True,
        )
        self.stats["head_tokens_run"] += n - best
        layers = _layers(output_cache(out))
        self._keep(tokens, layers)
        return layers

    def _keep(self, tokens: tuple[int, ...], layers) -> None:
        self._heads[tokens] = layers
        while len(self._heads) > self.capacity:
            self._heads.popitem(last=False)

    # -- the whole prefill -----------------------------------------------------------------------

    def worth_it(self, seqs: Sequence[Sequence[int]]) -> bool:
        if not seqs or min(len(s) for s in seqs) < 2:
            return False
        if self._row_matches([list(s) for s in seqs]) is not None:
            return True
        limit = min(len(s) for s in seqs) - 1
        if len(seqs) > 1:
            return min(_lcp(seqs[0], s, limit) for s in seqs) >= self.min_shared
        # One row (the pipeline judges a sample per call): its head is kept, so the next sample
        # runs only what follows the part they share (rubric, instructions, often the prompt).
        return limit >= self.min_shared

    def run(self, seqs: Sequence[Sequence[int]], *, pad_id: int, device, want_cache: bool = True):
        """(last logits [rows, vocab], cache or None, mask [rows, columns], ids [rows, columns])."""
        seqs = [list(s) for s in seqs]
        reuse = self._row_matches(seqs)
        if reuse is not None:
            out = self._extend_rows(seqs, *reuse, pad_id=pad_id, device=device)
        else:
            out = self._run_shared(seqs, pad_id=pad_id, device=device)
        logits, cache, mask, ids = out
        if len(seqs) <= self.max_kept_rows:
            self._recent.append((seqs, _layers(cache), mask, ids))
            while sum(len(b[0]) for b in self._recent) > self.max_kept_rows:
                self._recent.pop(0)
        return logits, (cache if want_cache else None), mask, ids

    # -- rows that continue the last batch's rows --------------------------------------------------

    def _row_matches(self, seqs: list[list[int]]) -> tuple[int, list[tuple[int, int]]] | None:
        """(kept batch, [(its row, tokens reused)] per row) when every row continues a row of one
        recent batch: the judge's scoring pass after its rationale pass (prompt + rationale +
        score tag after the prompt alone) then runs only the few new tokens per row."""
        for b in range(len(self._recent) - 1, -1, -1):
            rows = self._match_batch(self._recent[b][0], seqs)
            if rows is not None:
                return b, rows
        return None

    def _match_batch(self, old: list[list[int]], seqs: list[list[int]]) -> list[tuple[int, int]] | None:
        out = []
        for s in seqs:
            best, best_n = -1, 0
            for i, o in enumerate(old):
                if len(o) < best_n:
                    continue
                n = _lcp(o, s, len(s) - 1)
                if n > best_n:
                    best, best_n = i, n
            # A BPE merge at the seam may cost the old row's last few tokens; more than that and
            # the row is a different sample (only its head is shared: the head path is better).
            if best < 0 or best_n < len(old[best]) - ROW_SLACK or best_n < self.min_shared:
                return None
            out.append((best, best_n))
        return out

    def _extend_rows(self, seqs, batch: int, reuse, *, pad_id: int, device):
        _, layers, old_mask, old_ids = self._recent[batch]
        rows = len(seqs)
        index = torch.tensor([i for i, _ in reuse], dtype=torch.long, device=device)
        keep = torch.tensor([n for _, n in reuse], dtype=torch.long, device=device)[:, None]
        mask = old_mask.index_select(0, index)
        mask = mask * (mask.cumsum(-1) <= keep)  # drop reused rows' tokens past the common part
        ids = old_ids.index_select(0, index)
        past = _cache([(k.index_select(0, index), v.index_select(0, index)) for k, v in layers])
        tails = [s[n:] for s, (_, n) in zip(seqs, reuse)]
        self.stats["row_hits"] += rows
        return self._tail_pass(tails, past, mask, ids, pad_id=pad_id, device=device)

    def _tail_pass(self, tails, past, mask, ids, *, pad_id: int, device):
        """Every row's own tokens, left-padded so each row's last token is the last column."""
        rows = len(tails)
        width = max(len(t) for t in tails)
        t_ids = torch.full((rows, width), pad_id, dtype=torch.long)
        t_mask = torch.zeros((rows, width), dtype=torch.long)
        for r, t in enumerate(tails):
            t_ids[r, width - len(t):] = torch.tensor(t, dtype=torch.long)
            t_mask[r, width - len(t):] = 1
        t_ids, t_mask = t_ids.to(device), t_mask.to(device)
        full_mask = torch.cat([mask, t_mask], 1)
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, -width:]
        out = self.forward(input_ids=t_ids, attention_mask=full_mask, position_ids=positions, past_key_values=past, use_cache=True)
        self.stats["row_tokens_run"] += rows * width
        return out.logits[:, -1, :], output_cache(out), full_mask, torch.cat([ids, t_ids], 1)

    # -- shared heads ------------------------------------------------------------------------------

    def _run_shared(self, seqs: list[list[int]], *, pad_id: int, device):
        rows = len(seqs)
        limit = min(len(s) for s in seqs) - 1  # every row keeps >= 1 token of its own: its logits
        head_len = min(_lcp(seqs[0], s, limit) for s in seqs) if rows > 1 else limit
        head = tuple(seqs[0][:head_len])
        layers = self._head(head, device)

        # Layer 2: rows that share a further stretch (a group's task prompt) run it once per group.
        groups: list[list[int]] = []
        shared: list[int] = []  # tokens past the head each group shares
        for r in range(rows):
            for g, members in enumerate(groups):
                n = _lcp(seqs[members[0]][head_len:], seqs[r][head_len:], len(seqs[r]) - head_len - 1)
                if n >= self.min_shared:
                    members.append(r)
                    shared[g] = min(shared[g], n)
                    break
            else:
                groups.append([r])
                shared.append(len(seqs[r]) - head_len - 1)
        shared = [n if len(m) > 1 and n >= self.min_shared else 0 for m, n in zip(groups, shared)]
        group_of = [0] * rows
        for g, members in enumerate(groups):
            for r in members:
                group_of[r] = g
        g_width = max(shared)
        ng = len(groups)
        head_mask = torch.ones(1, head_len, dtype=torch.long, device=device)
        if g_width:
            g_ids = torch.full((ng, g_width), pad_id, dtype=torch.long)
            g_mask = torch.zeros((ng, g_width), dtype=torch.long)
            for g, members in enumerate(groups):  # right padding: the row part follows directly
                part = seqs[members[0]][head_len:head_len + shared[g]]
                if part:
                    g_ids[g, : len(part)] = torch.tensor(part, dtype=torch.long)
                    g_mask[g, : len(part)] = 1
            g_ids, g_mask = g_ids.to(device), g_mask.to(device)
            past = _cache([(k.expand(ng, -1, -1, -1).contiguous(), v.expand(ng, -1, -1, -1).contiguous()) for k, v in layers])
            out = self.forward(
                input_ids=g_ids, attention_mask=torch.cat([head_mask.expand(ng, -1), g_mask], 1),
                position_ids=head_len + torch.arange(g_width, device=device)[None].expand(ng, -1),
                past_key_values=past, use_cache=True,
            )
            self.stats["group_tokens_run"] += ng * g_width
            layers = _layers(output_cache(out))
            mask = torch.cat([head_mask.expand(ng, -1), g_mask], 1)
            ids = torch.cat([torch.tensor([list(head)] * ng, dtype=torch.long, device=device).reshape(ng, head_len), g_ids], 1)
        else:
            mask = head_mask
            ids = torch.tensor([list(head)], dtype=torch.long, device=device).reshape(1, head_len)
            group_of = [0] * rows

        # Layer 3: every row's own part, left-padded.
        index = torch.tensor(group_of, dtype=torch.long, device=device)
        past = _cache([(k.index_select(0, index), v.index_select(0, index)) for k, v in layers])
        mask, ids = mask.index_select(0, index), ids.index_select(0, index)
        tails = [s[head_len + (shared[group_of[r]] if g_width else 0):] for r, s in enumerate(seqs)]
        return self._tail_pass(tails, past, mask, ids, pad_id=pad_id, device=device)
