"""Log-probs of completion tokens under the policy and under the reference model.

The fused path runs the decoder backbone for hidden states and sends only the N completion
positions through `fused_linear_logprob` against the LM head weight, in chunks: the
[tokens, vocab] logits never exist (at the paper's scale, 64 rows x 1000 tokens x 151,936 x
2 B = 19 GB of bf16 logits, plus as much again for their gradient). Models whose logits are not
a plain linear map of the last hidden state (soft-capping, logit scaling) take the logits path:
the model's own logits, then `selective_log_softmax` on the completion rows.

The training loss: where the LM head is reachable and trained (full fine-tuning of a plain
nn.Linear head without bias, fused path), `policy_loss` runs `fused_linear_policy_loss` on the
completion rows' hidden states: the loss is known inside the op, so grad_hidden and grad_weight are
formed in the forward (3 GEMMs of 2NHV flops against 4 for fused_linear_logprob's recompute). A
tied head (SmolLM2: lm_head.weight is embed_tokens.weight) is one Parameter, so the op's weight
gradient and the embedding's accumulate into it. A frozen head (LoRA) keeps policy_loss over
fused_linear_logprob, whose E_p[W] forward makes it 2 GEMMs. Either way the per-token entropy of the
completion tokens comes back detached, a by-product of the softmax fold (no [N, V] logits).

The reference model: with LoRA it is the same module with its adapters disabled (no second
copy); with full fine-tuning a frozen copy made at start; with kl_coef == 0 none at all.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from ..ops.fused_linear_logprob import fused_linear_logprob
from ..ops.fused_linear_policy_loss import fused_linear_policy_loss
from ..ops.policy_loss import LossVariant, policy_loss
from ..ops.selective_log_softmax import selective_log_softmax
from .batch import TrainBatch

# Config attributes that mean "logits are not just lm_head(hidden)": Gemma 2/3 soft-capping,
# Cohere logit_scale, Granite logits_scaling. Any of them set sends `auto` to the logits path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def causal_lm_of(model):
    """The transformers causal LM inside `model` (a peft model keeps its LoRA layers injected
    into this very module, so calling it still applies the adapters)."""
    return model.get_base_model() if is_peft_model(model) else model


def resolve_logprob_impl(model, requested: str) -> str:
    if requested not in ("auto", "fused", "logits"):
        raise ValueError(f"logprob_impl {requested!r} unknown; choose auto, fused or logits")
    lm = causal_lm_of(model)
    head = lm.get_output_embeddings()
    plain_head = isinstance(head, torch.nn.Linear)
    configs = [lm.config]
    text_config = getattr(lm.config, "get_text_config", None)
    if text_config is not None:
        configs.append(text_config())
    transformed = [
        name for cfg in configs for name in _LOGIT_TRANSFORMS if getattr(cfg, name, None) not in (None, 1, 1.0)
    ]
    if requested == "fused" and (not plain_head or transformed):
        why = f"its config sets {transformed}" if transformed else f"its output layer is {type(head).__name__}"
        raise ValueError(
            f"model.logprob_impl is 'fused' but {type(lm).__name__}'s logits are not a plain linear map of the hidden "
            f"state ({why}); use model.logprob_impl=logits (or auto)"
        )
    if requested == "auto":
        return "fused" if plain_head and not transformed else "logits"
    return requested


class MicroBatchLoss(NamedTuple):
    """The policy loss of one micro-batch and what the update logs of it."""

    loss: torch.Tensor  # 0-dim, differentiable
    metrics: dict[str, torch.Tensor]  # policy_loss's metrics, no gradient
    logp: torch.Tensor  # [B, T] float32, detached, 0 outside the completion mask
    entropy: torch.Tensor  # [B, T] float32, detached, 0 outside the completion mask
    values: torch.Tensor | None  # [B, T] float32 from value_head (PPO), differentiable; else None


def trainable_plain_head(model) -> bool:
    """True when the LM head's weight is a plain, trained, unsharded tensor the loss op can take
    whole: an nn.Linear without bias (the op has none), requires_grad (full fine-tuning; LoRA
    freezes it), not a DTensor shard (FSDP2 gathers it only inside lm_head's own forward)."""
    head = causal_lm_of(model).get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or not head.weight.requires_grad:
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed
        return True
    return not isinstance(head.weight, DTensor)


class PolicyLogprobs:
    """Completion log-probs [B, T] (0 outside the completion mask) for a TrainBatch, and the
    micro-batch policy loss (`policy_loss`) by the cheapest path the model allows.

    fused_loss: None (auto) uses fused_linear_policy_loss whenever impl is "fused" and the head is a
    trained plain nn.Linear (`trainable_plain_head`); False always takes logp, then the loss op;
    True insists and names what is missing."""

    def __init__(self, model, *, temperature: float, impl: str = "auto", ref_model=None,
                 fused_loss: bool | None = None) -> None:
        self.model = model
        self.temperature = temperature if temperature > 0 else 1.0
        self.impl = resolve_logprob_impl(model, impl)
        self.ref_model = ref_model
        self.peft = is_peft_model(model)
        if fused_loss and not self._fused_loss_eligible():
            raise ValueError(
                "fused_loss=True needs the fused log-prob path (model.logprob_impl auto/fused on a model without "
                "logit transforms) and a trained LM head that is a plain nn.Linear without bias (full fine-tuning, "
                "not LoRA); leave fused_loss unset to pick the path automatically"
            )
        self._fused_loss = fused_loss

    def _fused_loss_eligible(self) -> bool:
        return self.impl == "fused" and trainable_plain_head(self.model)

    @property
    def fused_loss(self) -> bool:
        """Whether policy_loss runs fused_linear_policy_loss. Decided at each call, not once: the
        model may be wrapped (sharded, frozen) after this object is built."""
        return self._fused_loss is not False and self._fused_loss_eligible()

    # -- public ----------------------------------------------------------------------------

    def policy(self, batch: TrainBatch) -> torch.Tensor:
        return self._logprobs(self.model, batch)

    @torch.no_grad()
    def reference(self, batch: TrainBatch) -> torch.Tensor:
        if self.peft:
            with self.model.disable_adapter():
                return self._logprobs(self.model, batch)
        if self.ref_model is None:
            raise RuntimeError(
                "reference log-probs asked for, but there is no reference model: with full fine-tuning and "
                "kl_coef > 0 the trainer keeps a frozen copy; pass ref_model=..."
            )
        return self._logprobs(self.ref_model, batch)

    @torch.no_grad()
    def policy_and_values(self, batch: TrainBatch, value_head) -> tuple[torch.Tensor, torch.Tensor]:
        """(logp, values) [B, T] of the policy, no gradient: PPO's sampling-policy pass."""
        logp, _, values = self._forward(self.model, batch, value_head=value_head)
        return logp, values

    def policy_loss(self, batch: TrainBatch, *, old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None,
                    variant: LossVariant, advantages: torch.Tensor | None = None, value_head=None) -> MicroBatchLoss:
        """policy_loss of the policy on `batch` (one forward, gradient attached to the model).

        old_logp None: on-policy single pass, the ratio against this forward's own log-probs (1).
        advantages: [B] or [B, T] (PPO's token advantages); default batch.advantages.
        value_head: also V(s_t) [B, T] from the same forward's last hidden state (PPO).
        Same loss, gradients and metrics whichever path runs (tests/trainer/test_fused_policy_loss.py)."""
        loss_kw = dict(ref_logp=ref_logp, clip_low=variant.clip_low, clip_high=variant.clip_high,
                       kl_coef=variant.kl_coef, kl_estimator=variant.kl_estimator, aggregation=variant.aggregation,
                       max_tokens=variant.max_tokens)
        mask = batch.completion_mask
        adv = batch.advantages if advantages is None else advantages
        if self.fused_loss:
            lm = causal_lm_of(self.model)
            rows = self._hidden(lm, batch)[batch.rows, batch.cols]
            # [B, T, H] in completion slots (the op's layout; slots outside the mask are zeros it drops)
            slots = rows.new_zeros((*mask.shape, rows.shape[-1])).index_put((batch.rows, batch.slots), rows)
            out = fused_linear_policy_loss(
                slots, lm.get_output_embeddings().weight, batch.completion_ids, old_logp, adv, mask,
                temperature=self.temperature, token_stats=True, **loss_kw)
            values = self._scatter(batch, value_head(rows)) if value_head is not None else None
            return MicroBatchLoss(out.loss, out.metrics, out.logp.float(), out.entropy.float(), values)
        logp, entropy, values = self._forward(self.model, batch, entropy=True, value_head=value_head)
        old = logp.detach() if old_logp is None else old_logp
        loss, metrics = policy_loss(logp, old, adv, mask, **loss_kw)
        return MicroBatchLoss(loss, metrics, logp.detach(), entropy, values)

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _hidden(lm, batch: TrainBatch) -> torch.Tensor:
        backbone = getattr(lm, lm.base_model_prefix)
        out = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    @staticmethod
    def _scatter(batch: TrainBatch, flat: torch.Tensor) -> torch.Tensor:
        """[N] completion-token values -> [B, T] float32, 0 outside the completion mask."""
        out = torch.zeros(batch.completion_mask.shape, dtype=torch.float32, device=flat.device)
        return out.index_put((batch.rows, batch.slots), flat.float())

    def _logprobs(self, model, batch: TrainBatch) -> torch.Tensor:
        return self._forward(model, batch)[0]

    def _forward(self, model, batch: TrainBatch, *, entropy: bool = False, value_head=None):
        """(logp [B, T], entropy [B, T] detached or None, values [B, T] or None) from one forward.

        The entropy is the fold's by-product on the fused path (entropy_grad=False keeps a frozen
        head's 2-GEMM form) and the logits' softmax on the logits path."""
        lm = causal_lm_of(model)
        ids = batch.completion_ids[batch.rows, batch.slots]
        if self.impl == "fused":
            rows = self._hidden(lm, batch)[batch.rows, batch.cols]
            head = lm.get_output_embeddings()
            flat = fused_linear_logprob(rows, head.weight, ids, bias=head.bias, temperature=self.temperature,
                                        return_entropy=entropy, entropy_grad=False)
        else:
            out = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                     output_hidden_states=value_head is not None)
            rows = out.hidden_states[-1][batch.rows, batch.cols] if value_head is not None else None
            flat = selective_log_softmax(out.logits[batch.rows, batch.cols], ids, temperature=self.temperature,
                                         return_entropy=entropy)
        flat_lp, flat_ent = (flat.logp, flat.entropy.detach()) if entropy else (flat, None)
        return (self._scatter(batch, flat_lp), self._scatter(batch, flat_ent) if entropy else None,
                self._scatter(batch, value_head(rows)) if value_head is not None else None)


@contextlib.contextmanager
def adapters_disabled(model):
    """The frozen base of a LoRA policy (what a judge sharing the policy's weights must see)."""
    if is_peft_model(model):
        with model.disable_adapter():
            yield causal_lm_of(model)
    else:
        yield model
