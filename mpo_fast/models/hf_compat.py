"""One place for the transformers API names that changed under us.

transformers 5.x renamed the KV-cache argument and output from `past_key_values` to `cache`
(the old name warns, and goes in 5.40) and deprecated `is_gradient_checkpointing`; the package
allows transformers >= 4.46, where only the old names exist. Callers use these helpers instead of
either name, so the demo prints no FutureWarning on today's versions and still runs on older ones.
"""
from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(forward_owner: type) -> str:
    try:
        params = inspect.signature(forward_owner.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _base(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)  # peft wrappers forward **kwargs to the base
    return get_base() if callable(get_base) else model


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned (`cache` in transformers >= 5.x, `past_key_values` before)."""
    keys = out.keys() if hasattr(out, "keys") else ()
    if "cache" in keys:
        return out["cache"]
    return out["past_key_values"] if "past_key_values" in keys else None


def wrap_with_peft(model: Any, peft_config: Any) -> Any:
    """peft.get_peft_model, without the FutureWarning peft triggers on transformers 5.

    peft (0.18) reads `model.is_gradient_checkpointing` in PeftModel.__init__; transformers 5.x
    deprecates that property. The warning is about peft's code, not the user's: silence exactly
    that message, only around this call.
    """
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, peft_config)


def with_cache_name(model: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """kwargs for model(...) or model.generate(...) with a `past_key_values` entry renamed to the
    name this model takes (`cache` on transformers 5.x, where the old name warns)."""
    if "past_key_values" not in kwargs:
        return kwargs
    name = _cache_kwarg_of(type(_base(model)))
    if name == "past_key_values":
        return kwargs
    out = dict(kwargs)
    out[name] = out.pop("past_key_values")
    return out
