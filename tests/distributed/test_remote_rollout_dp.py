"""rollout.backend=remote under torchrun (2 gloo processes) with a list of shared policy servers
and LoRA adapter sync: rank 0 alone loads each adapter, once per server (not once per rank), the
newest keep_adapters versions stay loaded, and every rank's requests name the adapter rank 0
loaded, spread over both servers."""
from __future__ import annotations

import pytest

from tests.distributed import workers
from tests.distributed.launch import all_ok, run_ranks
from tests.distributed.policy_servers import PolicyServer

pytestmark = pytest.mark.slow  # 2 Python processes and 2 HTTP servers (~10-20 s on 2 shared cores)


def test_rank0_loads_each_adapter_once_per_shared_server_and_every_rank_uses_it(tmp_path):
    pytest.importorskip("peft")
    servers = [PolicyServer(), PolicyServer()]
    try:
        urls = [s.url for s in servers]
        keep = 2  # pipeline.max_staleness = 1
        r0, r1 = all_ok(run_ranks(workers.remote_adapter_sync, 2, tmp_path / "ranks", urls, str(tmp_path / "adapters"),
                                  [1, 2, 3], keep, timeout_s=180))
    finally:
        for s in servers:
            s.close()
    assert r0 == r1 == [["policy-v1", "policy-v2", "policy-v3"]] * 2  # both ranks asked for rank 0's adapter
    for s in servers:
        loads = [q["lora_name"] for q in s.requests if q["path"].endswith("/load_lora_adapter")]
        unloads = [q["lora_name"] for q in s.requests if q["path"].endswith("/unload_lora_adapter")]
        assert loads == ["policy-v1", "policy-v2", "policy-v3"]  # once per version: not once per rank
        assert unloads == ["policy-v1"] and s.loaded == ["policy-v2", "policy-v3"]  # the newest `keep` stay loaded
    completions = [q for s in servers for q in s.requests if q["path"].endswith("/completions")]
    assert len(completions) == 2 * 3  # 2 ranks x 3 versions x 1 prompt (n=2 in one request)
    assert sorted(q["model"] for q in completions) == sorted(["policy-v1", "policy-v2", "policy-v3"] * 2)
    assert (tmp_path / "adapters" / "policy-v3" / "adapter_config.json").is_file()
