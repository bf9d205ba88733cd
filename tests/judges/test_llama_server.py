"""Judge and meta-judge through a real OpenAI-compatible server: llama-cpp-python's, serving the
embedded SmolLM2-135M GGUF on 127.0.0.1 (started here, always terminated)."""
import asyncio
import math
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from mpo_fast.judges import (
    EndpointConfig,
    JudgeRequest,
    JudgeSettings,
    MetaJudge,
    MetaSample,
    MetaSettings,
    OpenAICompatibleLLM,
    OpenAIJudge,
)
from mpo_fast.rubrics import ProposalLimits, Rubric, RubricItem
from tests.helpers import has_module

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not has_module("llama_cpp"), reason="llama-cpp-python[server] not installed: pip install 'mpo-fast[server]'"),
]
RUBRIC = Rubric(task="essay", context="Short essays.", items=(RubricItem("Clarity", "Clear, correct prose.", 5), RubricItem("Relevance", "Answers the prompt.", 5)))
READY_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mpo_fast.models.embedded import embedded_gguf_path

    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_path()), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--model_alias", "smol"]
    # A file, not a pipe: llama.cpp logs ~100 KB at load, which would fill a pipe nobody reads and block it.
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    log_file = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after {READY_TIMEOUT_S} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


def _requests(n=2):
    # Each call costs seconds on a 2-core CPU (prefill of a ~400-token prompt): keep batches small.
    return [
        JudgeRequest("Write two sentences about the sea.", "The sea is vast and blue. Waves crash on the shore every day.", RUBRIC),
        JudgeRequest("Write two sentences about the sea.", "bananas bananas bananas", RUBRIC),
    ][:n]


def _endpoint(url, **kw):
    return EndpointConfig(base_url=url, model="smol", timeout_s=120, max_retries=2, backoff_base_s=0.1, **kw)


def test_constrained_json_through_the_server(server):
    async def main():
        judge = OpenAIJudge(_endpoint(server), JudgeSettings(scoring="constrained", max_rationale_chars=80, temperature=0.7))
        out = await judge.judge(_requests(1))
        flavour = judge.llm.flavour
        await judge.aclose()
        return out, flavour, judge.stats

    out, flavour, stats = asyncio.run(main())
    assert flavour == "llama.cpp"  # detected from GET /models
    assert stats.failure_rate == 0.0, [j.error for j in out]
    for j in out:
        assert j.ok and all(0 <= s <= 5 and s == int(s) for s in j.item_scores) and 0 <= j.reward <= 1


def test_expected_scores_through_completions_logprobs(server):
    from mpo_fast.models.embedded import embedded_model_dir

    async def main():
        cfg = _endpoint(server, logprobs="completions", chat_template=str(embedded_model_dir()))
        judge = OpenAIJudge(cfg, JudgeSettings(scoring="expected", rationale_tokens=16))
        out = await judge.judge(_requests(1))
        await judge.aclose()
        return out

    out = asyncio.run(main())
    for j in out:
        assert j.ok, j.error
        assert all(0.0 <= s <= 5.0 and math.isfinite(s) for s in j.item_scores)
        assert all(0.0 < m <= 1.0 for m in j.score_mass)
        assert j.calls >= 1 + 2  # rationale, then at least one logprob request per item


def test_expected_scores_through_chat_logprobs(server):
    async def main():
        judge = OpenAIJudge(_endpoint(server, logprobs="chat"), JudgeSettings(scoring="expected", max_new_tokens=32))
        out = await judge.judge(_requests(1))
        await judge.aclose()
        return out

    # The 135M model rarely writes the tag in free text; when it does the score is read from the
    # logprobs, when it does not the judgement is masked with the reason, never scored 0.
    for j in asyncio.run(main()):
        assert (j.ok and all(0 <= s <= 5 for s in j.item_scores)) or (j.reward is None and j.error)
        if j.ok:  # a score read from chat logprobs leaves at most 5% of its mass unresolved
            assert all(u <= 0.05 * (m + u) + 1e-12 for m, u in zip(j.score_mass, j.unresolved_mass))
        else:
            assert j.error.split(":", 1)[0] in ("expected", "low_score_mass", "unresolved_mass"), j.error


def test_meta_judge_through_the_server(server):
    samples = [MetaSample("Write about the sea.", "sea", (0.0, 1.0), 0.1, "Too short.")]

    async def main():
        llm = OpenAICompatibleLLM(_endpoint(server))
        settings = MetaSettings(num_samples=1, analysis_tokens=32, limits=ProposalLimits(max_items=2, max_title_chars=24), max_description_chars=40)
        evo = await MetaJudge(llm, settings).evolve(RUBRIC, samples, step=1)
        await llm.aclose()
        return evo

    evo = asyncio.run(main())
    assert len(evo.selected) == 1 and evo.calls >= 2
    # Schema-constrained JSON: every answer is well formed; a proposal is kept or its text logged.
    assert len(evo.proposals) + len([f for f in evo.failures if f.stage == "refine"]) == len(evo.analyses)
    assert evo.changed == bool(evo.proposals) or evo.rubric.content_hash == RUBRIC.content_hash
    for item in evo.rubric.items:
        assert 1 <= item.max_points <= 10 and item.title
