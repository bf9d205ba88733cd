"""`eval` against an OpenAI-compatible judge over HTTP (the judges' own client, retries included):
a scripted server that always prefers the first position and answers some calls with 500s."""
from __future__ import annotations

import asyncio
import re

from mpo_fast.evaluation.runner import EvalSettings, run_evaluation
from mpo_fast.http_client import EndpointConfig
from mpo_fast.judges.openai_llm import OpenAICompatibleLLM
from tests.evaluation.test_eval_end_to_end import PARSE, _loader
from tests.judges.fault_server import FaultServer, Reply, chat_body, ok

_NONCE = re.compile(r"<verdict-([0-9a-f]+)>X</verdict-\1>")
_PROMPT = re.compile(r"<prompt-[0-9a-f]+>\n(.*?)\n</prompt-", re.S)


def test_http_judge_position_bias_neutralised_and_500s_counted(tiny_run, tokenizer, tmp_path):
    failing_prompts: set[str] = set()

    def reply(path, body):
        text = body["messages"][-1]["content"]
        prompt = _PROMPT.search(text).group(1)
        if not failing_prompts or prompt in failing_prompts:
            failing_prompts.add(prompt)  # the first prompt seen fails in both orders, every retry
            return Reply(500, "judge overloaded")
        nonce = _NONCE.search(text).group(1)
        return ok(chat_body(f"The first is better. <verdict-{nonce}>A</verdict-{nonce}>"))

    async def main():
        async with FaultServer(reply) as srv:
            cfg = EndpointConfig(base_url=srv.url, model="judge-model", max_retries=1, backoff_base_s=0.01,
                                 backoff_max_s=0.02, timeout_s=5.0, structured_output="none")

            def evaluate():
                return run_evaluation(tiny_run, "base", tmp_path / "eval" / "http.json",
                                      settings=EvalSettings(limit=4, max_new_tokens=8, resamples=200, batch_size=2),
                                      loader=_loader(tokenizer, []), judge_llm=OpenAICompatibleLLM(cfg),
                                      judge_options=PARSE)

            return await asyncio.to_thread(evaluate), len(srv.requests)

    result, requests = asyncio.run(main())
    p = result["pairwise"]
    assert p["judge_failures"] == 1 and (p["wins"], p["ties"], p["losses"]) == (0, 3, 0)
    assert result["judge"]["failed_calls"] == 2 and requests == 2 * 2 + 6  # 2 failing calls x (1 + 1 retry) + 6 fine
    assert p["win_rate"]["value"] == 0.5 and p["position_bias"]["value"] == 1.0
    assert result["judge"]["id"].startswith("pairwise-v1|judge-model@")
