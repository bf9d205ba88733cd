import torch

from mpo_fast.trainer.threads import stage_threads, torch_threads


def test_overlapped_cpu_runs_give_each_stage_a_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert stage_threads("overlapped", "cpu", cores=2) == 1
    assert stage_threads("overlapped", "cpu", cores=12) == 4
    assert stage_threads("serial", "cpu", cores=12) is None  # one stage at a time: every core
    assert stage_threads("overlapped", "cuda", cores=12) is None


def test_the_users_omp_setting_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert stage_threads("overlapped", "cpu", cores=12) is None


def test_torch_threads_restores_the_setting():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
