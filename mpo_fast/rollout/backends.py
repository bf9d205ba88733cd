"""Build a rollout backend by name (`rollout.backend` in a config), failing at start-up with the fix.

    hf      in-process transformers generate (CPU or GPU), samples from the training module itself
    vllm    an in-process vLLM engine colocated with the trainer (needs `pip install 'mpo-fast[vllm]'`)
    remote  a policy served elsewhere behind an OpenAI-compatible /v1/completions endpoint
"""
from __future__ import annotations

import importlib.util
from typing import Any

from .base import RolloutBackend

ROLLOUT_BACKENDS = ("hf", "vllm", "remote")


def require_installed(name: str) -> None:
    """ImportError naming the install command when backend `name` needs a package that is missing."""
    if name == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ImportError(
            "rollout.backend=vllm but vLLM is not installed: pip install 'mpo-fast[vllm]' (Linux with a CUDA "
            "GPU), or use rollout.backend=hf (any device) or remote (a policy served elsewhere)"
        )


def create_rollout_backend(name: str, *, model, tokenizer, **options: Any) -> RolloutBackend:
    """The backend `name` for `model`; `options` are that backend's keyword arguments.

    vllm: model_path (default: the model's name_or_path), gpu_memory_utilization, sleep_level,
    sync_mode, ... (VLLMRollout). remote: base_url (required), served_model (default: the model's
    name_or_path), api_key_env, server, ... (RemoteCompletionsRollout).
    """
    if name == "hf":
        from .hf import HFRollout

        return HFRollout(model, tokenizer, **options)
    if name == "vllm":
        require_installed(name)
        from .vllm import VLLMRollout

        path = options.pop("model_path", None) or getattr(model, "name_or_path", None)
        if not path:
            raise ValueError("rollout.backend=vllm needs the policy's checkpoint directory: pass model_path=...")
        return VLLMRollout(path, **options)
    if name == "remote":
        from .remote import RemoteCompletionsRollout

        base_url = options.pop("base_url", None)
        if not base_url:
            raise ValueError("rollout.backend=remote needs base_url, e.g. http://127.0.0.1:8000/v1 (the server that "
                             "serves the policy)")
        served = options.pop("served_model", None) or getattr(model, "name_or_path", None)
        if not served:
            raise ValueError("rollout.backend=remote needs served_model: the model name the server lists at /v1/models")
        return RemoteCompletionsRollout(base_url, served, tokenizer=tokenizer, **options)
    raise ValueError(f"rollout.backend={name!r} is unknown; choose one of {list(ROLLOUT_BACKENDS)}")
