"""OpenAIJudge / OpenAICompatibleLLM against a scripted local server: retries, timeouts,
Retry-After, garbage, concurrency and rate limits, structured output and logprob scoring."""
import asyncio
import math
import time

import pytest

from mpo_fast.judges import EndpointConfig, JudgeRequest, JudgeSettings, OpenAIJudge
from mpo_fast.judges.expected import ScoreChoices
from mpo_fast.http_client import EndpointClient, retry_after_seconds
from mpo_fast.judges.openai_llm import OpenAICompatibleLLM
from mpo_fast.ratelimit import RateLimiter, TokenBucket
from mpo_fast.parsing import ScoreSpec
from mpo_fast.rubrics import Rubric, RubricItem
from tests.judges.fakes import score_names, tags
from tests.judges.fault_server import FaultServer, Reply, chat_body, ok

RUBRIC = Rubric(task="essay", context="", items=(RubricItem("Clarity", "Clear.", 5), RubricItem("Depth", "Deep.", 5)))
FAST = dict(backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=2.0, structured_output="openai")


def _cfg(server, **kw):
    return EndpointConfig(base_url=server.url, model="judge-model", **{**FAST, **kw})


def _judge_reply(path, body):
    """A well-behaved judge: reads the score names from the prompt and gives each a 3."""
    return ok(chat_body(tags(score_names(body["messages"]), [3] * len(score_names(body["messages"])))))


def _reqs(n):
    return [JudgeRequest("Prompt", f"Response {i}", RUBRIC) for i in range(n)]


async def _generate(server, script_cfg=None, **kw):
    llm = OpenAICompatibleLLM(_cfg(server, **(script_cfg or {})))
    try:
        return await llm.generate([[{"role": "user", "content": "hi"}]], max_tokens=8, **kw), llm
    finally:
        await llm.aclose()


def test_500s_are_retried_then_succeed():
    async def main():
        async with FaultServer([Reply(500, "boom"), Reply(503, "busy"), ok(chat_body("fine"))]) as srv:
            (g,), llm = await _generate(srv)
            assert g.ok and g.text == "fine" and g.calls == 3
            c = llm.client.counters
            assert c.retries == 2 and c.errors == {"server_error": 2} and c.failed_requests == 0

    asyncio.run(main())


def test_429_retry_after_is_honoured():
    async def main():
        async with FaultServer([Reply(429, "slow down", {"Retry-After": "0.3"}), ok(chat_body("fine"))]) as srv:
            t0 = time.perf_counter()
            (g,), llm = await _generate(srv)
            assert g.ok and time.perf_counter() - t0 >= 0.3
            assert llm.client.counters.errors == {"rate_limited": 1}

    asyncio.run(main())


def test_garbage_is_retried_then_masked_and_counted():
    async def main():
        async with FaultServer([Reply(200, "<html>not json"), Reply(200, {"choices": []})]) as srv:
            judge = OpenAIJudge(_cfg(srv, max_retries=2), JudgeSettings(parse_retries=0))
            out = await judge.judge(_reqs(2))
            await judge.aclose()
            assert all(not j.ok and j.reward is None and j.error.startswith("http:bad_response") for j in out)
            assert all(j.calls == 3 for j in out)  # 1 + 2 retries each
            snap = judge.stats_snapshot()
            assert snap["failed"] == 2 and snap["http"]["errors"]["bad_response"] == 6 and snap["http"]["failed_requests"] == 2

    asyncio.run(main())


def test_hanging_server_times_out_within_the_bound():
    async def main():
        async with FaultServer([Reply(hang=True)]) as srv:
            t0 = time.perf_counter()
            (g,), _ = await _generate(srv, {"timeout_s": 0.2, "max_retries": 1})
            elapsed = time.perf_counter() - t0
            assert g.finish_reason == "error" and g.error.startswith("http:timeout") and g.calls == 2
            assert elapsed < 2 * (0.2 + 0.05) + 1.0  # (retries + 1) x (timeout + max backoff), plus slack

    asyncio.run(main())


def test_slow_answer_within_timeout_succeeds():
    async def main():
        async with FaultServer([Reply(200, chat_body("late but fine"), delay_s=0.2)]) as srv:
            (g,), llm = await _generate(srv, {"timeout_s": 1.0})
            assert g.ok and g.text == "late but fine" and llm.client.counters.retries == 0

    asyncio.run(main())


def test_client_errors_are_not_retried():
    async def main():
        async with FaultServer([Reply(400, {"error": "unknown field structured_outputs"})]) as srv:
            (g,), llm = await _generate(srv)
            assert g.error.startswith("http:client_error") and "unknown field" in g.error and g.calls == 1

    asyncio.run(main())


def test_connection_refused_is_retried_and_reported():
    async def main():
        async with FaultServer([ok({})]) as srv:
            port = srv.port
        cfg = EndpointConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1, **FAST)
        llm = OpenAICompatibleLLM(cfg)
        (g,) = await llm.generate([[{"role": "user", "content": "hi"}]], max_tokens=4)
        await llm.aclose()
        assert g.error.startswith("http:connection") and g.calls == 2

    asyncio.run(main())


def test_judge_batch_survives_sprinkled_failures_and_respects_concurrency():
    state = {"n": 0}

    def script(path, body):
        state["n"] += 1
        if state["n"] % 3 == 0:
            return Reply(500, "flaky")
        reply = _judge_reply(path, body)
        reply.delay_s = 0.05
        return reply

    async def main():
        async with FaultServer(script) as srv:
            judge = OpenAIJudge(_cfg(srv, max_concurrency=2), JudgeSettings(call_mode="per_item"))
            out = await judge.judge(_reqs(4))
            await judge.aclose()
            assert all(j.ok and j.item_scores == (3.0, 3.0) and j.reward == pytest.approx(0.6) for j in out)
            assert srv.max_in_flight <= 2
            assert judge.stats_snapshot()["http"]["retries"] >= 2

    asyncio.run(main())


def test_api_key_comes_from_the_environment(monkeypatch):
    async def main():
        async with FaultServer([ok(chat_body("x"))]) as srv:
            monkeypatch.setenv("MPO_TEST_JUDGE_KEY", "sk-test-123")
            await _generate(srv, {"api_key_env": "MPO_TEST_JUDGE_KEY"})
            assert srv.requests[0][3]["authorization"] == "Bearer sk-test-123"

    asyncio.run(main())
    monkeypatch.delenv("MPO_TEST_JUDGE_KEY")
    with pytest.raises(ValueError, match=r"\$MPO_TEST_JUDGE_KEY"):
        EndpointConfig(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="MPO_TEST_JUDGE_KEY").api_key()


def test_structured_output_flavour_is_detected_and_sent():
    def script(path, body):
        if path.endswith("/models"):
            return ok({"data": [{"id": "judge-model", "owned_by": "vllm"}]})
        return _judge_reply(path, body)

    async def main():
        async with FaultServer(script) as srv:
            cfg = EndpointConfig(base_url=srv.url, model="judge-model", **{**FAST, "structured_output": "auto"})
            judge = OpenAIJudge(cfg, JudgeSettings(scoring="constrained"))
            out = await judge.judge(_reqs(1))
            await judge.aclose()
            assert out[0].ok
            sent = srv.requests[-1][2]
            assert "regex" in sent["structured_outputs"] and "<item1-" in sent["structured_outputs"]["regex"]

    asyncio.run(main())


def test_constrained_json_for_llama_cpp():
    def script(path, body):
        schema = body["response_format"]["schema"]
        import json

        return ok(chat_body(json.dumps({"justification": "ok", **{k: 4 for k in schema["properties"] if k != "justification"}})))

    async def main():
        async with FaultServer(script) as srv:
            judge = OpenAIJudge(_cfg(srv, structured_output="llama.cpp"), JudgeSettings(scoring="constrained"))
            out = await judge.judge(_reqs(2))
            await judge.aclose()
            assert all(j.ok and j.item_scores == (4.0, 4.0) for j in out)
            assert srv.requests[0][2]["response_format"]["type"] == "json_object"

    asyncio.run(main())


def test_expected_through_completions_expands_multi_token_numbers():
    choices = ScoreChoices.for_item(ScoreSpec(hi=10.0), 0)

    def script(path, body):
        prompt = body["prompt"]
        if prompt.endswith(">1"):
            top = {"0": math.log(0.6), "</": math.log(0.4)}
        else:
            top = {"1": math.log(0.5), "7": math.log(0.3), " the": math.log(0.2)}
        return ok({"choices": [{"text": "x", "logprobs": {"tokens": ["x"], "top_logprobs": [top]}}]})

    async def main():
        async with FaultServer(script) as srv:
            llm = OpenAICompatibleLLM(_cfg(srv, chat_template="chatml", logprobs="completions"))
            (d,) = await llm.score_choices([[{"role": "user", "content": "grade"}]], ["Fine.\n<score>"], [choices])
            await llm.aclose()
            assert d.calls == 2 and d.expected(choices.values) == pytest.approx(6.625)
            assert srv.requests[0][2]["prompt"].startswith("<|im_start|>user\ngrade<|im_end|>\n<|im_start|>assistant\nFine.")
            assert srv.requests[0][2]["logprobs"] == 20 and srv.requests[0][2]["max_tokens"] == 1

    asyncio.run(main())


def test_expected_through_chat_logprobs():
    def script(path, body):
        names = score_names(body["messages"])
        assert body["logprobs"] is True and body["top_logprobs"] == 20
        lp = [{"token": "Ok. ", "logprob": -0.1, "top_logprobs": []}]
        for n in names:
            lp.append({"token": f"<{n}>", "logprob": -0.01, "top_logprobs": []})
            lp.append({"token": "4", "logprob": math.log(0.5), "top_logprobs": [
                {"token": "4", "logprob": math.log(0.5)}, {"token": "2", "logprob": math.log(0.5)}]})
            lp.append({"token": f"</{n}>", "logprob": -0.01, "top_logprobs": []})
        return ok(chat_body("".join(t["token"] for t in lp), lp))

    async def main():
        async with FaultServer(script) as srv:
            judge = OpenAIJudge(_cfg(srv, logprobs="chat"), JudgeSettings(scoring="expected"))
            out = await judge.judge(_reqs(1))
            await judge.aclose()
            assert out[0].ok and out[0].item_scores == pytest.approx((3.0, 3.0)) and out[0].score_mass == pytest.approx((1.0, 1.0))

    asyncio.run(main())


def test_token_bucket_and_rate_limiter():
    b = TokenBucket(6, period_s=60.0)  # 0.1 per second
    now = time.monotonic()
    assert b.wait_time(6, now) == 0.0
    b.take(6)
    assert b.wait_time(1, now) == pytest.approx(10.0, rel=1e-3)
    assert b.wait_time(100, now) == pytest.approx(60.0, rel=1e-3)  # capped at the capacity: never forever

    async def main():
        limiter = RateLimiter(requests_per_minute=2, period_s=0.2)  # 2 per 0.2 s
        t0 = time.perf_counter()
        for _ in range(4):
            await limiter.acquire(0)
        return time.perf_counter() - t0

    assert asyncio.run(main()) >= 0.18  # the 3rd and 4th request waited ~0.1 s each
    tl = RateLimiter(tokens_per_minute=1000)
    asyncio.run(tl.acquire(400))
    tl.settle(400, 100)
    assert tl.tokens.level == pytest.approx(900, abs=1.0)  # 300 unused tokens given back


def test_retry_after_parsing_and_backoff_bounds():
    assert retry_after_seconds("2.5") == 2.5
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 10) == pytest.approx(10.0)
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    client = EndpointClient(EndpointConfig(base_url="http://127.0.0.1:1/v1", model="m", backoff_base_s=1.0, backoff_max_s=4.0), seed=0)
    delays = [client.backoff(a, None) for a in range(1, 8) for _ in range(20)]
    assert all(0.0 <= d <= 4.0 for d in delays)  # full jitter, capped
    assert client.backoff(1, 9.0) == 9.0  # Retry-After wins when longer
