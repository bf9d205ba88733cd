"""pipeline.* in MPOConfig reaches the trainer: train() runs the overlapped schedule, a pipelined run
resumes from its checkpoint exactly, reward-hacking signals bring the meta-judge forward, and the
rollout backend a config names is built (or refused) at start-up."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from mpo_fast.trainer import MPOConfig, MPOTrainer
from mpo_fast.trainer.checkpoint import list_checkpoints
from mpo_fast.trainer.config import ConfigError, pipeline_settings
from mpo_fast.trainer.pipeline import PipelineError
from mpo_fast.trainer.run_log import read_jsonl
from tests.tiny_models import tiny_causal_lm
from tests.trainer.conftest import PROMPTS, tiny_config
from tests.trainer.fakes import AppendingMetaJudge, ShortEssayTask, SyntheticJudge

FAST = {"judge_timeout_s": 10.0, "stall_timeout_s": 30.0, "shutdown_timeout_s": 5.0}


def _trainer(root, tokenizer, *, judge=None, mrm=None, signals=None, **cfg):
    return MPOTrainer(
        tiny_causal_lm(tokenizer, seed=0), args=tiny_config(root, **cfg), train_dataset=PROMPTS,
        judge=judge or SyntheticJudge(), meta_judge=mrm, processing_class=tokenizer, task=ShortEssayTask(),
        signals=signals,
    )


# -- config ------------------------------------------------------------------------------------

def test_pipeline_section_parses_and_feeds_the_pipeline_settings():
    cfg = MPOConfig.from_dict({"judge": {"model": "embedded"}, "meta": {"interval": 7, "num_samples": 3},
                               "pipeline": {"mode": "overlapped", "max_staleness": 2, "judge_concurrency": 8}})
    s = pipeline_settings(cfg)
    assert (s.mode, s.max_staleness, s.judge_concurrency) == ("overlapped", 2, 8)
    assert (s.evolve_every, s.mpo_samples, s.max_failed_fraction) == (7, 12, cfg.judge.max_failure_rate)
    assert MPOConfig().pipeline.mode == "serial" and pipeline_settings(MPOConfig()).max_staleness == 0


@pytest.mark.parametrize(("section", "match"), [
    ({"pipeline": {"mode": "fast"}}, r"pipeline.mode = 'fast'.*'overlapped'"),
    ({"pipeline": {"mode": "overlapped", "max_staleness": 9}}, r"pipeline.max_staleness = 9: expected an integer in 0..4"),
    ({"pipeline": {"max_staleness": 1}}, r"pipeline.max_staleness = 1: expected 0 in serial mode"),
    ({"pipeline": {"mode": "overlapped", "judge_queue_size": 0}}, r"pipeline.judge_queue_size = 0"),
    ({"pipeline": {"mode": "overlapped", "judge_timeout_s": 100, "stall_timeout_s": 50}}, r"raise stall_timeout_s"),
    ({"pipeline": {"mode": "overlapped"}, "judge": {"model": "policy"}}, r"judge.model is 'policy'.*separate judge"),
    ({"rollout": {"backend": "remote"}, "judge": {"model": "embedded"}}, r"rollout.base_url is not set"),
    ({"rollout": {"backend": "vllm"}, "judge": {"model": "embedded"},
      "pipeline": {"mode": "overlapped", "max_staleness": 1}}, r"set rollout.sleep_level=null"),
    ({"rollout": {"backend": "sglang"}}, r"rollout.backend is 'sglang'; choose one of \['hf', 'vllm', 'remote'\]"),
])
def test_bad_pipeline_or_rollout_settings_fail_at_start_up_naming_the_fix(section, match):
    with pytest.raises(ConfigError, match=match):
        MPOConfig.from_dict(section)


# -- train() dispatch --------------------------------------------------------------------------

def test_train_runs_the_overlapped_pipeline_when_the_config_says_so(tmp_path, tokenizer):
    # max_staleness=1 and next_step swaps: the rubric from the meta-judge after step 2 scores steps 5-6.
    trainer = _trainer(tmp_path, tokenizer, mrm=AppendingMetaJudge(), train={"max_steps": 6},
                       pipeline={"mode": "overlapped", "max_staleness": 1, "rubric_swap": "next_step", **FAST})
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.train()
    assert result.pipeline is not None and result.pipeline["mode"] == "overlapped"
    assert result.pipeline["max_observed_staleness"] <= 1 and result.steps == 6
    assert result.judgements == 48 and result.judge_failures == 0
    assert result.last_checkpoint and result.last_checkpoint.endswith("step-000006")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(r["pipeline"] == "overlapped" for r in rows)
    assert len(result.rubric_versions) >= 2, "meta.interval=2 should have installed a new rubric"
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_serial_mode_keeps_the_trainers_own_loop(tmp_path, tokenizer):
    result = _trainer(tmp_path, tokenizer, train={"max_steps": 2}).train()
    assert result.pipeline is None and result.steps == 2


# -- resume ------------------------------------------------------------------------------------

class RecordingMetaJudge(AppendingMetaJudge):
    """AppendingMetaJudge that keeps what each call was shown."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: list[list[tuple]] = []

    def evolve(self, rubric, samples, step):
        self.shown.append([(s.step, s.prompt, s.response, s.reward, s.item_scores, s.rubric_hash) for s in samples])
        return super().evolve(rubric, samples, step)


def _rubric_history(root):
    from mpo_fast.rubrics import RubricStore

    store = RubricStore(root / "run" / "rubrics")
    return [(v.version, v.hash, v.parent) for v in store.versions()]


@pytest.mark.parametrize(("mode", "save_steps", "crash_step"), [("overlapped", 2, 3), ("overlapped", 3, 4)])
def test_pipelined_run_stopped_by_a_crash_resumes_exactly(tmp_path, tokenizer, mode, save_steps, crash_step):
    """A judge that dies mid-run stops every stage; the last checkpoint is intact, and resuming from
    it ends with the weights, rewards, samples and rubrics of an uninterrupted run (max_staleness=0:
    exact). The meta-judge runs after step 3 on the newest 16 samples, steps 2 and 3.
    save_steps=2, crash in step 3: step 2's samples come from the sample window checkpoint 2 saved.
    save_steps=3, crash in step 4: the refinement launched after step 3 had not been installed when
    checkpoint 3 was written (next_step installs it after step 4): the resumed run launches it again
    on the saved window."""
    cfg = dict(train={"max_steps": 5}, meta={"interval": 3, "num_samples": 4}, log={"save_steps": save_steps},
               pipeline={"mode": mode, "max_staleness": 0, "rubric_swap": "next_step", **FAST})
    straight_meta = RecordingMetaJudge()
    straight = _trainer(tmp_path / "a", tokenizer, mrm=straight_meta, **cfg)
    straight.train()

    crash_call = 8 * (crash_step - 1) + 4  # one judge call per sample, 8 samples a step
    crashing = _trainer(tmp_path / "b", tokenizer, judge=SyntheticJudge(crash_on_call=crash_call), mrm=RecordingMetaJudge(),
                        **cfg)
    with pytest.raises(PipelineError, match=f"injected crash on judge call {crash_call}"):
        crashing.train()
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "run")] == [save_steps]
    resumed_meta = RecordingMetaJudge()
    resumed = _trainer(tmp_path / "b", tokenizer, mrm=resumed_meta, resume=True, **cfg)
    result = resumed.train()
    assert result.steps == 5 and result.pipeline["steps"] == 5 - save_steps

    # the refinement after step 3 saw steps 2 and 3, identical in both runs
    assert [step for _, _, step in straight_meta.calls] == [3] and [n for _, n, _ in straight_meta.calls] == [16]
    assert sorted({x[0] for x in straight_meta.shown[0]}) == [2, 3]
    assert resumed_meta.shown == straight_meta.shown and resumed_meta.calls == straight_meta.calls
    assert _rubric_history(tmp_path / "a") == _rubric_history(tmp_path / "b") and len(_rubric_history(tmp_path / "a")) == 2

    a = read_jsonl(tmp_path / "a" / "run" / "metrics.jsonl")
    b = read_jsonl(tmp_path / "b" / "run" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b):
        for key in ("reward_mean", "loss", "grad_norm", "rubric_version", "rubric_hash", "policy_version"):
            assert ra[key] == rb[key], (ra["step"], key)
    assert [r["rubric_version"] for r in b] == [1, 1, 1, 1, 2]  # next_step: the step-3 rubric scores step 5
    sa = read_jsonl(tmp_path / "a" / "run" / "samples.jsonl")
    sb = read_jsonl(tmp_path / "b" / "run" / "samples.jsonl")
    assert [(s["step"], s["response"], s["reward"]) for s in sa] == [(s["step"], s["response"], s["reward"]) for s in sb]
    pa = dict(straight.model.named_parameters())
    for name, p in resumed.model.named_parameters():
        assert torch.equal(pa[name], p), name


# -- reward-hacking signals --------------------------------------------------------------------

@dataclass
class _Signal:
    name: str
    detail: str


class FiringDetector:
    """A HackingDetector stand-in that reports a signal at the steps it is told to."""

    def __init__(self, fire_at):
        self.fire_at = set(fire_at)
        self.seen: list[int] = []
        self.rebaselines = 0

    def observe(self, step, lengths, rewards, rationales):
        self.seen.append(step)
        return [_Signal("length_spike", f"step {step}")] if step in self.fire_at else []

    def rebaseline(self):
        self.rebaselines += 1


def test_signals_bring_the_meta_judge_forward_in_the_pipeline(tmp_path, tokenizer):
    detector, meta = FiringDetector(fire_at={1}), AppendingMetaJudge()
    trainer = _trainer(tmp_path, tokenizer, mrm=meta, signals=detector, train={"max_steps": 4},
                       meta={"interval": 100, "min_steps_between": 1},
                       pipeline={"mode": "overlapped", "max_staleness": 0, "rubric_swap": "next_step", **FAST})
    result = trainer.train()
    assert detector.seen == [1, 2, 3, 4]
    assert [step for _, _, step in meta.calls] == [1], "the signal after step 1 should have run the meta-judge once"
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["signals"] == ["length_spike: step 1"] and rows[1]["signals"] == []
    assert result.rubric_versions == [1, 2] and detector.rebaselines == 1  # new rubric: a fresh baseline


def test_without_signals_and_with_a_long_interval_the_meta_judge_stays_idle(tmp_path, tokenizer):
    meta = AppendingMetaJudge()
    trainer = _trainer(tmp_path, tokenizer, mrm=meta, signals=FiringDetector(fire_at=()), train={"max_steps": 3},
                       meta={"interval": 100}, pipeline={"mode": "overlapped", "max_staleness": 0, **FAST})
    trainer.train()
    assert meta.calls == []


# -- rollout backends from the config ------------------------------------------------------------

def test_rollout_backends_are_built_or_refused_at_start_up(monkeypatch):
    import importlib.util

    from mpo_fast.rollout.remote import RemoteCompletionsRollout
    from mpo_fast.trainer.build import JudgeUnreachableError, build_rollout, check_servers

    hf = MPOConfig.from_dict({"judge": {"model": "embedded"}})
    assert build_rollout(hf, model=None, tokenizer=None) is None  # MPOTrainer builds HF generate itself

    remote = MPOConfig.from_dict({"judge": {"model": "embedded"}, "model": {"name_or_path": "/models/policy"},
                                  "rollout": {"backend": "remote", "base_url": "http://127.0.0.1:9/v1"}})
    with pytest.raises(JudgeUnreachableError, match=r"rollout server at http://127.0.0.1:9/v1 is unreachable"):
        check_servers(remote)
    backend = build_rollout(remote, model=None, tokenizer=None)
    try:
        assert isinstance(backend, RemoteCompletionsRollout) and backend.served_model == "/models/policy"
    finally:
        backend.close()

    vllm = MPOConfig.from_dict({"judge": {"model": "embedded"}, "rollout": {"backend": "vllm"}})
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"vLLM is not installed: pip install 'mpo-fast\[vllm\]'"):
        check_servers(vllm)
    with pytest.raises(ConfigError, match="embedded GGUF model is for CPU runs"):
        build_rollout(vllm, model=None, tokenizer=None)


@pytest.mark.parametrize(("lora", "staleness", "sync"), [(True, 0, "lora_adapter"), (True, 1, "merged_lora"),
                                                        (False, 1, "full")])
def test_vllm_backend_syncs_in_the_mode_the_schedule_can_use(monkeypatch, lora, staleness, sync):
    import mpo_fast.rollout.backends as backends
    from mpo_fast.trainer.build import build_rollout

    built = {}
    monkeypatch.setattr(backends, "create_rollout_backend", lambda name, **kw: built.update(name=name, **kw) or "engine")
    cfg = MPOConfig.from_dict({"judge": {"model": "embedded"}, "lora": {"enabled": lora},
                               "model": {"name_or_path": "/models/policy"},
                               "rollout": {"backend": "vllm", "sleep_level": None if staleness else 1},
                               "pipeline": {"mode": "overlapped", "max_staleness": staleness}})
    assert build_rollout(cfg, model=None, tokenizer=None) == "engine"
    assert (built["name"], built["model_path"], built["sync_mode"]) == ("vllm", "/models/policy", sync)


def test_a_stale_pipeline_refuses_a_vllm_engine_that_syncs_adapters(tmp_path, tokenizer):
    from mpo_fast.trainer.pipeline import PipelineConfigError, PipelineSettings
    from mpo_fast.trainer.pipeline.trainer_stages import TrainerStages

    class VLLMRollout:  # the stages recognise the engine by its class name
        sleep_level = None
        sync_mode = "lora_adapter"

        def close(self):
            pass

    trainer = _trainer(tmp_path, tokenizer)
    trainer.rollout = VLLMRollout()
    with pytest.raises(PipelineConfigError, match="sync_mode='merged_lora'"):
        TrainerStages(trainer, PipelineSettings(mode="overlapped", max_staleness=1))
    TrainerStages(trainer, PipelineSettings(mode="overlapped", max_staleness=0))  # on-policy: adapters are fine
