"""Rollout backends by name: the right class, or a start-up error that names the fix."""
from __future__ import annotations

import importlib.util

import pytest

from mpo_fast.rollout import HFRollout
from mpo_fast.rollout.backends import create_rollout_backend
from mpo_fast.rollout.remote import RemoteCompletionsRollout
from tests.tiny_models import tiny_causal_lm


def test_hf_and_remote_are_built(tok):
    model = tiny_causal_lm(tok)
    assert isinstance(create_rollout_backend("hf", model=model, tokenizer=tok, batch_size=4), HFRollout)
    remote = create_rollout_backend("remote", model=model, tokenizer=tok, base_url="http://127.0.0.1:9/v1",
                                    served_model="policy")
    assert isinstance(remote, RemoteCompletionsRollout) and remote.model == "policy"
    remote.close()


def test_unknown_backend_lists_the_choices(tok):
    with pytest.raises(ValueError, match=r"rollout.backend='sglang' is unknown; choose one of \['hf', 'vllm', 'remote'\]"):
        create_rollout_backend("sglang", model=None, tokenizer=tok)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_not_installed_names_the_install(tok):
    with pytest.raises(ImportError, match=r"pip install 'mpo-fast\[vllm\]'"):
        create_rollout_backend("vllm", model=tiny_causal_lm(tok), tokenizer=tok)


def test_remote_without_url_or_model_name(tok):
    with pytest.raises(ValueError, match="needs base_url"):
        create_rollout_backend("remote", model=tiny_causal_lm(tok), tokenizer=tok)
    with pytest.raises(ValueError, match="needs served_model"):
        create_rollout_backend("remote", model=object(), tokenizer=tok, base_url="http://127.0.0.1:9/v1")
