"""KV-cache and peft calls use today's transformers names, so the demo prints no FutureWarning (issue 12)."""
from __future__ import annotations

import warnings

import pytest
import torch

from mpo_fast.models.hf_compat import output_cache, with_cache_name, wrap_with_peft
from tests.tiny_models import char_tokenizer, tiny_causal_lm


def test_cache_round_trip_matches_a_full_pass_without_future_warnings():
    tok = char_tokenizer()
    model = tiny_causal_lm(tok).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with torch.no_grad():
            full = model(input_ids=ids).logits[:, -1]
            first = model(input_ids=ids[:, :4], use_cache=True)
            cache = output_cache(first)
            assert cache is not None
            rest = model(**with_cache_name(model, dict(input_ids=ids[:, 4:], use_cache=True, past_key_values=cache))).logits[:, -1]
    torch.testing.assert_close(rest, full, rtol=1e-5, atol=1e-5)


def test_peft_wrap_is_silent_and_keeps_cache_names():
    pytest.importorskip("peft")
    from peft import LoraConfig

    tok = char_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = wrap_with_peft(tiny_causal_lm(tok), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    probe = {"past_key_values": None}
    assert set(with_cache_name(model, probe)) == set(with_cache_name(model.get_base_model(), probe))


def test_output_cache_reads_either_name():
    assert output_cache({"cache": 1}) == 1
    assert output_cache({"past_key_values": 2}) == 2
    assert output_cache({"logits": 3}) is None
