"""Parsing tests: the Triton token-id kernels run under the CPU interpreter when there is no GPU.
TRITON_INTERPRET must be set before triton is first imported (tests/conftest.py does it for the
whole suite; repeated here so this folder also runs on its own)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from .tokenizer_cache import smollm2_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def smollm2():
    return smollm2_tokenizer()


@pytest.fixture(scope="session")
def smollm2_table(smollm2):
    from mpo_fast.parsing import token_byte_table

    return token_byte_table(smollm2)
