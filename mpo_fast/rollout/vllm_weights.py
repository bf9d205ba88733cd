"""Which tensors go from the trained policy into a vLLM engine, under which names (no vLLM import).

vLLM models load weights by their Hugging Face checkpoint names ("model.layers.0.self_attn.q_proj.
weight") and fuse q/k/v and gate/up themselves inside `load_weights`. The trainer's module names
differ by the wrappers around it:

    peft      base_model.model.<hf name>, <module>.base_layer.weight, lora_A/lora_B/lora_embedding_*,
              modules_to_save.default.<param> (trained copies) and original_module (frozen copies)
    compile   _orig_mod.          DDP  module.          FSDP1  _fsdp_wrapped_module.
    activation checkpointing      _checkpoint_wrapped_module.

`vllm_param_name` strips them and drops what vLLM has no slot for. For LoRA the engine either
receives the merged weights W + scale * B @ A of the adapted modules (computed with peft's
`get_delta_weight`, so the training model is never mutated: merging in place would race with a
backward pass running at the same time in the overlapped pipeline), or loads the adapter itself
(vllm.py, adapter mode).
"""
from __future__ import annotations

from typing import Iterator

import torch

_WRAPPER_SEGMENTS = ("_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
_LORA_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector.", ".lora_dropout.")


def vllm_param_name(name: str) -> str | None:
    """The HF checkpoint name vLLM's load_weights expects for a trainer parameter, or None to skip it."""
    for wrapper in _WRAPPER_SEGMENTS:  # unambiguous wrapper names, at any depth
        name = name.replace(wrapper, "")
    if name.startswith("module."):  # DDP wraps the whole model only
        name = name[len("module."):]
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    if any(part in name for part in _LORA_PARTS) or ".original_module." in name:
        return None  # adapter factors (merged or loaded separately) and peft's frozen copies
    name = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
    return name


def _lora_layers(model: torch.nn.Module):
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, LoraLayer)]


def has_lora_layers(model: torch.nn.Module) -> bool:
    return bool(_lora_layers(model))


@torch.no_grad()
def merged_lora_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(vLLM name, W + delta) for every LoRA-adapted module of a peft model, without touching the model.

    Adapters already merged into the base weight (peft's `merged`) contribute nothing extra.
    """
    for module_name, layer in _lora_layers(model):
        base = layer.get_base_layer()
        weight = getattr(base, "weight", None)
        if weight is None:
            continue
        merged_already = set(getattr(layer, "merged_adapters", ()) or ())
        out = weight.detach().clone()
        for adapter in layer.active_adapters:
            if adapter in merged_already or adapter not in getattr(layer, "lora_A", {}) and adapter not in getattr(layer, "lora_embedding_A", {}):
                continue
            out += layer.get_delta_weight(adapter).to(out.dtype)
        name = vllm_param_name(f"{module_name}.base_layer.weight")
        if name is not None:
            yield name, out


def weights_for_vllm(model: torch.nn.Module, *, only_changed: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(vLLM name, tensor) pairs to load after an update.

    Full fine-tuning: every parameter (only the trainable ones with only_changed: frozen ones
    never differ from what the engine loaded). peft: the merged weights of adapted modules, the
    trained `modules_to_save` copies, and (only_changed=False) every other base parameter.
    Tied parameters appear once (named_parameters de-duplicates them), as vLLM expects.
    """
    lora = _lora_layers(model)
    if lora:
        yield from merged_lora_weights(model)
        adapted = {f"{name}.base_layer." for name, _ in lora}
        for name, p in model.named_parameters():
            if any(name.startswith(a) for a in adapted) or vllm_param_name(name) is None:
                continue
            if only_changed and not (p.requires_grad or ".modules_to_save." in name):
                continue
            yield vllm_param_name(name), p.detach()
        return
    for name, p in model.named_parameters():
        if only_changed and not p.requires_grad:
            continue
        mapped = vllm_param_name(name)
        if mapped is not None:
            yield mapped, p.detach()
