"""The endpoint pool: least-outstanding routing, failover with back-off, per-endpoint counters,
per-rank shares of the limits - against real loopback judge servers (one down from the start,
one stopped mid-run)."""
from __future__ import annotations

import asyncio
import logging

import pytest

from mpo_fast.http_client import EndpointConfig
from mpo_fast.judges.judge import JudgeSettings
from mpo_fast.judges.pool import EndpointPool, endpoint_urls, pooled_judge, share_limit
from mpo_fast.judges.types import JudgeRequest
from mpo_fast.rubrics import Rubric, RubricItem
from mpo_fast.testing import JudgeServer, LatencyModel
from tests.distributed.launch import free_port

RUBRIC = Rubric(task="essay", context="", items=(RubricItem("Clarity", "Clear prose.", 5), RubricItem("Depth", "Detail.", 5)))
# 20 ms per request: a batch is in flight long enough for a server to die under it.
LATENCY = LatencyModel(base_s=0.02, decode_s_per_token=0.0, prefill_s_per_token=0.0)


def _requests(n, tag):
    return [JudgeRequest("Write about rain.", f"Rain {tag}-{i} falls on the quiet roofs.", RUBRIC) for i in range(n)]


@pytest.mark.slow  # two judge servers in threads
def test_one_endpoint_down_at_start_and_one_killed_mid_run_lose_no_judgement(caplog):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    survivor, victim = JudgeServer(LATENCY).start(), JudgeServer(LATENCY).start()
    urls = [dead, survivor.base_url, victim.base_url]
    config = EndpointConfig(base_url=urls[0], model="simulated-judge", structured_output="none", max_concurrency=8,
                            timeout_s=10.0, max_retries=2)
    try:
        async def run():
            judge = pooled_judge(urls, config, JudgeSettings(scoring="parse", call_mode="all_items"))
            pool = judge.llm.client
            try:
                first = await judge.judge(_requests(24, "a"))
                after_first = {s["url"]: s["ok"] for s in pool.snapshot()}
                second_task = asyncio.ensure_future(judge.judge(_requests(48, "b")))
                await asyncio.sleep(0.03)  # the second batch is in flight on both live servers
                await asyncio.to_thread(victim.stop)
                second = await second_task
                third = await judge.judge(_requests(24, "c"))
                return first + second + third, after_first, pool.snapshot()
            finally:
                await judge.aclose()

        with caplog.at_level(logging.INFO, logger="mpo_fast"):
            judgements, after_first, snapshot = asyncio.run(run())
    finally:
        survivor.stop()
        victim.stop()
    failed = [j.error for j in judgements if not j.ok]
    assert len(judgements) == 96 and failed == []
    by_url = {s["url"]: s for s in snapshot}
    assert by_url[dead]["ok"] == 0 and by_url[dead]["failures"] >= 1 and by_url[dead]["taken_out"] >= 1
    assert after_first[survivor.base_url] > 0 and after_first[victim.base_url] > 0  # spread over both
    assert by_url[victim.base_url]["failures"] >= 1 and by_url[victim.base_url]["errors"]  # its in-flight requests moved
    assert by_url[survivor.base_url]["ok"] + by_url[victim.base_url]["ok"] == 96
    assert all(s["in_flight"] == 0 for s in snapshot)
    assert f"{dead}: 0 ok" in caplog.text and "taken out" in caplog.text  # per-endpoint counters logged


def test_least_outstanding_routing_and_client_errors_are_not_retried():
    config = EndpointConfig(base_url="http://a/v1", model="m", max_retries=1)
    pool = EndpointPool(["http://a/v1", "http://b/v1", "http://c/v1"], config)
    pool.stats[0].outstanding, pool.stats[1].outstanding, pool.stats[2].outstanding = 3, 1, 2
    assert pool._pick(set())[0] == 1
    pool.stats[1].down_until = pool.clock() + 5  # resting: the next least loaded gets it
    assert pool._pick(set())[0] == 2
    for s in pool.stats:
        s.down_until = pool.clock() + 5
    index, wait = pool._pick(set())
    assert wait > 4  # all resting: wait for the first one back rather than fail
    assert pool.max_attempts == 4
    with pytest.raises(ValueError, match="duplicate"):
        EndpointPool(["http://a/v1", "http://a/v1"], config)


def test_client_error_fails_fast_without_taking_the_endpoint_out():
    from tests.judges.fault_server import FaultServer, Reply

    from mpo_fast.http_client import EndpointError

    async def run():
        async with FaultServer([Reply(400, {"error": {"message": "bad model"}})]) as server:
            pool = EndpointPool([server.url, f"http://127.0.0.1:{free_port()}/v1"],
                                EndpointConfig(base_url=server.url, model="m"))
            pool.stats[1].down_until = pool.clock() + 60  # only the fault server is in rotation
            with pytest.raises(EndpointError) as info:
                await pool.post("chat/completions", {"x": 1}, extract=lambda b: b)
            await pool.aclose()
            return info.value, pool.snapshot()

    error, snapshot = asyncio.run(run())
    assert error.kind == "client_error" and snapshot[0]["taken_out"] == 0


def test_each_rank_takes_its_share_of_the_limits():
    config = EndpointConfig(base_url="http://a/v1", model="m", max_concurrency=16, requests_per_minute=600.0,
                            tokens_per_minute=1e6)
    pool = EndpointPool(["http://a/v1", "http://b/v1"], config, world_size=4)
    assert pool.config.max_concurrency == 4 and pool.config.requests_per_minute == 150.0
    assert all(c.config.tokens_per_minute == 250000.0 for c in pool.clients)
    assert share_limit(3, 8) == 1 and share_limit(None, 8) is None and share_limit(8, 1) == 8
    assert endpoint_urls("http://a/v1, http://b/v1") == ["http://a/v1", "http://b/v1"]
    assert endpoint_urls(["http://a/v1"]) == ["http://a/v1"] and endpoint_urls(None) == []
