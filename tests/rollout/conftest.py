"""Fixtures every rollout test shares."""
import pytest
import torch

from tests.tiny_models import char_tokenizer


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only waits (see tests/trainer/conftest.py)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()
