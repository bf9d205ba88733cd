"""The simulated judge server: answers mpo_fast's real judge client in every scoring mode, scores
deterministically, and queues like a batching server with a fixed number of sequence slots."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from mpo_fast.http_client import EndpointConfig
from mpo_fast.judges.judge import JudgeSettings
from mpo_fast.judges.openai import OpenAIJudge
from mpo_fast.judges.types import JudgeRequest
from mpo_fast.rubrics import Rubric, RubricItem
from mpo_fast.testing import JudgeServer, LatencyModel
from mpo_fast.testing.judge_server import simulated_score

RUBRIC = Rubric(task="essay", context="", items=(
    RubricItem("Clarity", "Clear prose.", 5), RubricItem("Depth", "Specific detail.", 10), RubricItem("Form", "", 3),
))
FAST = LatencyModel(base_s=0.001, decode_s_per_token=0.0, prefill_s_per_token=0.0)


def _requests(n=3):
    return [JudgeRequest("Write about rain.", f"Rain {i} falls on the quiet roofs. " * (i + 2), RUBRIC) for i in range(n)]


def _expected_reward(req: JudgeRequest) -> float:
    return sum(simulated_score(req.response, it.title, 0, it.max_points) for it in RUBRIC.items) / RUBRIC.max_total


@pytest.mark.parametrize("scoring, call_mode, extra", [
    ("parse", "per_item", {}),
    ("parse", "all_items", {}),
    ("constrained", "all_items", {"structured_output": "openai"}),
    ("constrained", "all_items", {"structured_output": "llama.cpp"}),
])
def test_real_judge_client_reads_the_simulated_scores(scoring, call_mode, extra):
    reqs = _requests()
    with JudgeServer(FAST) as srv:
        async def go():
            ep = EndpointConfig(base_url=srv.base_url, model="simulated-judge",
                                structured_output=extra.get("structured_output", "none"))
            judge = OpenAIJudge(ep, JudgeSettings(scoring=scoring, call_mode=call_mode))
            try:
                return await judge.judge(reqs), await judge.judge(reqs)
            finally:
                await judge.aclose()
        first, second = asyncio.run(go())
    for req, a, b in zip(reqs, first, second):
        assert a.ok and b.ok, (a.error, b.error)
        # fresh nonces every call, same score: the server ignores the nonce
        assert a.reward == b.reward == pytest.approx(_expected_reward(req))
    assert len({j.reward for j in first}) > 1, "scores should spread across responses"
    assert first[0].calls == (3 if call_mode == "per_item" else 1)


@pytest.mark.parametrize("logprobs", ["chat", "completions"])
def test_expected_mode_reads_logprobs_peaked_on_the_simulated_score(logprobs):
    reqs = _requests(2)
    with JudgeServer(FAST) as srv:
        async def go():
            ep = EndpointConfig(base_url=srv.base_url, model="simulated-judge", structured_output="none", logprobs=logprobs,
                                chat_template="chatml" if logprobs == "completions" else None)
            judge = OpenAIJudge(ep, JudgeSettings(scoring="expected", call_mode="per_item"))
            try:
                return await judge.judge(reqs)
            finally:
                await judge.aclose()
        out = asyncio.run(go())
    for req, j in zip(reqs, out):
        assert j.ok, j.error
        # 85 % of the mass on the simulated score: the expectation lands within a point or two of it
        assert j.reward == pytest.approx(_expected_reward(req), abs=0.15)


def test_capacity_queues_requests_like_a_batching_server():
    # 2 slots, 0.2 s per request: 4 concurrent requests take two rounds (~0.4 s), 2 take one.
    lat = LatencyModel(base_s=0.2, decode_s_per_token=0.0, prefill_s_per_token=0.0, capacity=2)
    body = {"model": "simulated-judge", "messages": [{"role": "user", "content": "Grade <score-ab12>N</score-ab12>"}]}
    with JudgeServer(lat) as srv:
        async def burst(n):
            async with httpx.AsyncClient(base_url=srv.base_url + "/") as c:
                t = time.perf_counter()
                rs = await asyncio.gather(*(c.post("chat/completions", json=body) for _ in range(n)))
                assert all(r.status_code == 200 for r in rs)
                return time.perf_counter() - t
        two, four = asyncio.run(burst(2)), asyncio.run(burst(4))
        assert srv.stats.max_running == 2
    assert 0.18 < two < 0.35
    assert 0.38 < four < 0.6


def test_decode_time_grows_with_answer_length_and_batch():
    lat = LatencyModel(base_s=0.1, prefill_s_per_token=0.001, decode_s_per_token=0.01, batch_slowdown=0.5, max_slowdown=1.5)
    assert lat.service_s(100, 50, 1) == pytest.approx(0.1 + 0.1 + 0.5)
    assert lat.service_s(100, 50, 2) == pytest.approx(0.1 + 0.1 + 0.75)
    assert lat.service_s(100, 50, 9) == pytest.approx(0.1 + 0.1 + 0.75)  # capped at max_slowdown


def test_bad_requests_get_clear_errors_and_loopback_only():
    with JudgeServer(FAST) as srv:
        with httpx.Client(base_url=srv.base_url + "/") as c:
            assert c.get("models").json()["data"][0]["id"] == "simulated-judge"
            r = c.post("chat/completions", content=b"not json")
            assert r.status_code == 400 and "bad request" in r.json()["error"]["message"]
            r = c.post("chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 404 and "not served" in r.json()["error"]["message"]
            assert c.post("embeddings", json={}).status_code == 404
    with pytest.raises(ValueError, match="loopback only"):
        JudgeServer(host="0.0.0.0")
