"""LocalLLM builds transformers' StopStringCriteria once per stop-string set (it scans the vocabulary)."""
import asyncio

from mpo_fast.judges import LocalLLM
from tests.judges.tiny_models import make_model, make_tokenizer

CONV = [{"role": "user", "content": "The response is clear."}]


def test_stop_strings_stop_generation_and_are_built_once():
    tok = make_tokenizer()
    llm = LocalLLM(make_model(tok), tok)
    free = asyncio.run(llm.generate([CONV], max_tokens=12))[0]
    assert free.completion_tokens == 12 and "\n" in free.text  # this seed writes newlines
    stop = free.text[: free.text.index("\n") + 1]
    for _ in range(2):
        g = asyncio.run(llm.generate([CONV, CONV], max_tokens=12, stop=["\n"]))
        assert all(x.completion_tokens < 12 and x.finish_reason == "stop" for x in g)
        assert all(x.text == stop.rstrip("\n") for x in g)
    assert list(llm._stops) == [("\n",)]
