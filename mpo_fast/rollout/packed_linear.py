"""oneDNN-packed weights for the CPU decode loop: the same linear layers, read twice as fast.

A decode step multiplies 8 rows by every weight matrix once, so it is bound by reading the
weights. torch's `F.linear` (MKL sgemm) reads cold fp32 weights at 7.1-7.5 GB/s on one core of
this machine for an [8, 576] x [576, 1536] product, where a plain sum reads 20 GB/s; the same
product against a weight reordered once into oneDNN's blocked layout
(`torch.ops.mkldnn._reorder_linear_weight`, what inductor's CPU weight prepacking uses) reads
12.6 GB/s. On the e2e rollout (SmolLM2-135M, 8 x 64 tokens, one thread) that is 5.9 s against
7.7 s a call, packing included (0.23 s for 540 MB of weights): BENCHMARKS.md "rollout".

`packed_linears(model)` repacks every `nn.Linear` for the duration of one rollout and restores the
modules after: the weights change every update, so a packed copy lives only while they are frozen.
A peft LoRA linear layer is packed with its adapters folded in, W + sum(B @ A * scaling): the copy
is made anyway, and the rollout then runs one product a layer instead of peft's three plus the
bookkeeping (SmolLM2 with r=16 on all seven projections, 8 x 64 tokens: 7.5 s CPU a rollout
with the adapters beside the packed weights, 6.0 s folded, `generate` 10.7 s). If the adapters are switched off or changed inside the block (a judge
sharing the policy's base weights), that layer runs peft's own forward. Costs an extra
copy of the linear weights during the rollout. Float32 CPU weights only (what was measured);
anything else, or a torch without these ops, runs unpacked. Under autograd the layers fall back to
`F.linear` (the packed op has no backward).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

# The decode batch the packing is tuned for (oneDNN picks its blocking from it); prefill rows run
# through the same packed weight, correctly if less tuned.
_BATCH_HINT = 8


def packing_available(model) -> bool:
    """True where packed_linears would pack: float32 weights on the CPU and torch's oneDNN ops."""
    ops = getattr(torch.ops, "mkldnn", None)
    if ops is None or not torch.backends.mkldnn.is_available():
        return False
    if not (hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")):
        return False
    param = next(model.parameters(), None)
    return param is not None and param.device.type == "cpu" and param.dtype == torch.float32


def _lora_linear_type():
    try:
        from peft.tuners.lora.layer import Linear
    except Exception:  # peft missing or reorganised: LoRA layers are then packed layer by layer
        return None
    return Linear


def _foldable_adapters(module) -> tuple[str, ...] | None:
    """The vanilla LoRA adapters a peft Linear would apply now, or None where folding them into one
    weight would not reproduce its forward (merged, disabled, DoRA and other variants)."""
    try:
        if module.merged or module.disable_adapters:
            return None
        adapters = tuple(a for a in module.active_adapters if a in module.lora_A.keys())
        if any(a in getattr(module, "lora_variant", {}) for a in adapters):
            return None
        base = module.base_layer
    except AttributeError:
        return None
    if type(base) is not torch.nn.Linear or base.weight.dtype != torch.float32 or base.weight.device.type != "cpu":
        return None
    return adapters


def _folded_forward(module, packed: torch.Tensor, adapters: tuple[str, ...]):
    bias = module.base_layer.bias.detach() if module.base_layer.bias is not None else None
    out_features = module.base_layer.out_features
    own_forward = type(module).forward

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if (args or kwargs or torch.is_grad_enabled() or x.dtype != torch.float32
                or _foldable_adapters(module) != adapters):
            return own_forward(module, x, *args, **kwargs)
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), packed, bias, "none", [], "")
        return y.reshape(*shape[:-1], out_features)

    return forward


def _packed_forward(module: torch.nn.Linear, packed: torch.Tensor):
    bias = module.bias.detach() if module.bias is not None else None
    out_features = module.out_features

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32:
            return F.linear(x, module.weight, module.bias)
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), packed, bias, "none", [], "")
        return y.reshape(*shape[:-1], out_features)

    return forward


@contextlib.contextmanager
def packed_linears(model, enabled: bool = True) -> Iterator[int]:
    """Run `model`'s nn.Linear layers on packed weights inside the block; yields how many were packed."""
    if not enabled or not packing_available(model):
        yield 0
        return
    patched: list[torch.nn.Module] = []
    lora_type = _lora_linear_type()
    inside_folded: set[int] = set()
    try:
        for module in model.modules():  # pre-order: a LoRA layer comes before its base and adapters
            if lora_type is not None and type(module) is lora_type and "forward" not in module.__dict__:
                adapters = _foldable_adapters(module)
                if adapters is not None:
                    weight = module.base_layer.weight.detach()
                    for name in adapters:
                        weight = weight + module.get_delta_weight(name).detach()
                    packed = torch.ops.mkldnn._reorder_linear_weight(weight, _BATCH_HINT)
                    module.forward = _folded_forward(module, packed, adapters)
                    patched.append(module)
                    inside_folded.update(id(m) for m in module.modules() if m is not module)
                    continue
            if id(module) in inside_folded:
                continue  # its LoRA layer runs it (peft's forward) only when the adapters changed
            if type(module) is not torch.nn.Linear or "forward" in module.__dict__:
                continue  # subclasses may do more than x @ W.T + b; a module already patched stays as is
            if module.weight.dtype != torch.float32 or module.weight.device.type != "cpu":
                continue
            packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), _BATCH_HINT)
            module.forward = _packed_forward(module, packed)
            patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
