"""Log-probs of completion tokens under the policy and under the reference model.

The fused path runs the decoder backbone for hidden states and sends only the N completion
positions through `fused_linear_logprob` against the LM head weight, in chunks: the
[tokens, vocab] logits never exist (at the paper's scale, 64 rows x 1000 tokens x 151,936 x
2 B = 19 GB of bf16 logits, plus as much again for their gradient). Models whose logits are not
a plain linear map of the last hidden state (soft-capping, logit scaling) take the logits path:
the model's own logits, then `selective_log_softmax` on the completion rows.

The reference model: with LoRA it is the same module with its adapters disabled (no second
copy); with full fine-tuning a frozen copy made at start; with kl_coef == 0 none at all.
"""
from __future__ import annotations

import contextlib

import torch

from ..ops.fused_linear_logprob import fused_linear_logprob
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


class PolicyLogprobs:
    """Completion log-probs [B, T] (0 outside the completion mask) for a TrainBatch."""

    def __init__(self, model, *, temperature: float, impl: str = "auto", ref_model=None) -> None:
        self.model = model
        self.temperature = temperature if temperature > 0 else 1.0
        self.impl = resolve_logprob_impl(model, impl)
        self.ref_model = ref_model
        self.peft = is_peft_model(model)

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

    # -- internals -------------------------------------------------------------------------

    def _logprobs(self, model, batch: TrainBatch) -> torch.Tensor:
        lm = causal_lm_of(model)
        ids = batch.completion_ids[batch.rows, batch.slots]
        if self.impl == "fused":
            backbone = getattr(lm, lm.base_model_prefix)
            out = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            head = lm.get_output_embeddings()
            flat = fused_linear_logprob(
                hidden[batch.rows, batch.cols], head.weight, ids, bias=head.bias, temperature=self.temperature
            )
        else:
            logits = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            flat = selective_log_softmax(logits[batch.rows, batch.cols], ids, temperature=self.temperature)
        out = torch.zeros(batch.completion_mask.shape, dtype=torch.float32, device=flat.device)
        return out.index_put((batch.rows, batch.slots), flat.float())


@contextlib.contextmanager
def adapters_disabled(model):
    """The frozen base of a LoRA policy (what a judge sharing the policy's weights must see)."""
    if is_peft_model(model):
        with model.disable_adapter():
            yield causal_lm_of(model)
    else:
        yield model
