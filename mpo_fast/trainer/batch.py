"""TrainBatch: rollouts laid out as tensors for the update stage.

Rows are right-padded [prompt | completion | pad]: with causal attention, trailing padding cannot
influence earlier positions, so position ids are the plain 0..L-1 and no position_ids juggling
is needed (left padding, as generation uses, would need them).
The log-prob of completion token j of row i is predicted by the hidden state at position
prompt_len_i + j - 1; `rows`/`cols`/`slots` hold those coordinates once, flat, so the update
gathers only completion positions (prompt positions never reach the LM head).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..rollout import Rollout


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [B, L] long, right-padded
    attention_mask: torch.Tensor  # [B, L] long
    completion_ids: torch.Tensor  # [B, T] long, 0 past each completion's end
    completion_mask: torch.Tensor  # [B, T] bool, True on completion tokens
    advantages: torch.Tensor  # [B] float32
    behaviour_logp: torch.Tensor | None  # [B, T] float32 from the rollout, when every row has them
    # flat coordinates of the N completion tokens: hidden[rows, cols] predicts completion_ids[rows, slots]
    rows: torch.Tensor
    cols: torch.Tensor
    slots: torch.Tensor

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def select(self, index: list[int] | torch.Tensor) -> "TrainBatch":
        """A sub-batch (a micro-batch), trimmed to its own longest row."""
        idx = torch.as_tensor(index, dtype=torch.long)
        lengths = self.attention_mask[idx].sum(dim=1)
        width = int(lengths.max())
        t_width = max(int(self.completion_mask[idx].sum(dim=1).max()), 1)
        return _assemble(
            self.input_ids[idx, :width],
            self.attention_mask[idx, :width],
            self.completion_ids[idx, :t_width],
            self.completion_mask[idx, :t_width],
            self.advantages[idx],
            None if self.behaviour_logp is None else self.behaviour_logp[idx, :t_width],
        )

    def to(self, device: torch.device) -> "TrainBatch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return TrainBatch(**moved)


def _assemble(input_ids, attention_mask, completion_ids, completion_mask, advantages, behaviour_logp) -> TrainBatch:
    prompt_lens = attention_mask.sum(dim=1) - completion_mask.sum(dim=1)
    rows, slots = completion_mask.nonzero(as_tuple=True)
    cols = prompt_lens[rows] + slots - 1
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        advantages=advantages,
        behaviour_logp=behaviour_logp,
        rows=rows,
        cols=cols,
        slots=slots,
    )


def build_train_batch(rollouts: list[Rollout], advantages: torch.Tensor, *, pad_token_id: int) -> TrainBatch:
    """Tensors for `rollouts` (one row each, in order) with their advantages [len(rollouts)]."""
    if len(rollouts) != advantages.numel():
        raise ValueError(f"{len(rollouts)} rollouts but {advantages.numel()} advantages; pass one advantage per rollout")
    if not rollouts:
        raise ValueError("no rollouts to train on")
    for r in rollouts:
        if not r.completion_ids:
            raise ValueError(
                f"rollout (prompt {r.prompt_index}, sample {r.sample_index}) has an empty completion; "
                "drop it before building the batch (it has no token to train on)"
            )
    width = max(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
    t_width = max(len(r.completion_ids) for r in rollouts)
    b = len(rollouts)
    input_ids = torch.full((b, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    completion_ids = torch.zeros((b, t_width), dtype=torch.long)
    completion_mask = torch.zeros((b, t_width), dtype=torch.bool)
    have_logp = all(r.behaviour_logprobs is not None for r in rollouts)
    behaviour = torch.zeros((b, t_width), dtype=torch.float32) if have_logp else None
    for i, r in enumerate(rollouts):
        seq = list(r.prompt_ids) + list(r.completion_ids)
        input_ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attention[i, : len(seq)] = 1
        c = len(r.completion_ids)
        completion_ids[i, :c] = torch.as_tensor(r.completion_ids, dtype=torch.long)
        completion_mask[i, :c] = True
        if behaviour is not None:
            if len(r.behaviour_logprobs) != c:
                raise ValueError(
                    f"rollout (prompt {r.prompt_index}, sample {r.sample_index}) has {len(r.behaviour_logprobs)} "
                    f"behaviour log-probs for {c} completion tokens; the backend must record one per token"
                )
            behaviour[i, :c] = torch.as_tensor(r.behaviour_logprobs, dtype=torch.float32)
    return _assemble(input_ids, attention, completion_ids, completion_mask, advantages.float().cpu(), behaviour)
