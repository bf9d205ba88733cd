"""The overlapped and serial schedules: staleness bound, one rubric version per group, ordering,
clean shutdown (stage errors, a hung judge, a judge that blocks its event loop, full queues).

Stage work is simulated with sleeps (tests/trainer/pipeline_fakes.py), so every test runs in well
under a second or two of wall time and almost no CPU.
"""
from __future__ import annotations

import dataclasses
import json
import random
import threading
import time

import pytest
import torch

from mpo_fast.trainer.pipeline import (
    JudgeFailureError,
    PipelineConfigError,
    PipelineError,
    PipelineSettings,
    RubricMixError,
    StageStalled,
    StalenessViolation,
    compare_rewards,
    make_pipeline,
)
from mpo_fast.trainer.pipeline.batch_assembly import BatchAssembler
from mpo_fast.trainer.pipeline.errors import FailureBoard
from mpo_fast.trainer.pipeline.protocol import PromptItem, ScoredSample
from mpo_fast.trainer.pipeline.staleness import StalenessGate
from mpo_fast.rollout import Rollout

from .pipeline_fakes import FakeStages, base_rubric

FAST = dict(judge_timeout_s=5.0, stall_timeout_s=10.0, shutdown_timeout_s=2.0)


def overlapped(**kw) -> PipelineSettings:
    return PipelineSettings(**{"mode": "overlapped", "evolve_every": 0, **FAST, **kw})


def serial(**kw) -> PipelineSettings:
    return PipelineSettings(**{"mode": "serial", "max_staleness": 0, "evolve_every": 0, **FAST, **kw})


def run(stages, settings, steps, **kw):
    return make_pipeline(stages, settings, rubric=base_rubric(), **kw).run(steps)


def no_pipeline_threads_alive(timeout=3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t.name.startswith("mpo-") and t.is_alive()]:
            return True
        time.sleep(0.02)
    return False


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, fix", [
    ("max_staleness", -1, "0 for exact on-policy"),
    ("max_staleness", 9, "0 for exact on-policy"),
    ("judge_queue_size", 0, "at least one slot"),
    ("train_queue_size", 0, "at least one slot"),
    ("judge_concurrency", 0, "at least one slot"),
    ("mode", "async", "overlapped"),
    ("judge_timeout_s", 0, "timeouts must be > 0"),
    ("rubric_swap", "later", "next_step"),
])
def test_bad_settings_name_the_field_and_the_fix(field, value, fix):
    with pytest.raises(PipelineConfigError, match=rf"pipeline\.{field}") as info:
        PipelineSettings(**{field: value})
    assert fix in str(info.value)


def test_serial_mode_refuses_staleness_and_concurrency_over_queue():
    with pytest.raises(PipelineConfigError, match="max_staleness"):
        PipelineSettings(mode="serial", max_staleness=1)
    with pytest.raises(PipelineConfigError, match="judge_queue_size"):
        PipelineSettings(judge_concurrency=8, judge_queue_size=4)
    with pytest.raises(PipelineConfigError, match="unknown pipeline settings"):
        PipelineSettings.from_dict({"max_stale": 1})


# -- staleness ----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_staleness", [0, 1, 2])
def test_staleness_bound_is_reached_and_never_exceeded(max_staleness):
    # Instant producer and judges, slow trainer: the producer runs as far ahead as the gate allows.
    stages = FakeStages(train_s=0.03)
    report = run(stages, overlapped(max_staleness=max_staleness), 8)
    staleness = [u["step"] - u["behaviour"] for u in stages.updates]
    assert [u["step"] for u in stages.updates] == list(range(8))
    assert max(staleness) <= max_staleness
    assert report.max_observed_staleness == max(staleness)
    # the bound is reached once the producer has had time to run ahead (not a vacuous pass)
    assert max(staleness[max_staleness:]) == max_staleness
    for step, version in stages.generated:
        assert step - max_staleness <= version <= step
    if max_staleness == 0:
        assert all(u["behaviour"] == u["step"] == u["trainer_version"] for u in stages.updates)


def test_staleness_holds_under_random_stage_timings():
    rng = random.Random(7)
    for trial in range(3):
        s = rng.choice([1, 2])
        stages = FakeStages(gen_s=rng.uniform(0, 0.01), train_s=rng.uniform(0, 0.02), judge_s=lambda: rng.uniform(0, 0.01),
                            prompts_per_step=rng.choice([1, 3]))
        run(stages, overlapped(max_staleness=s, prompts_per_chunk=rng.choice([1, 2])), 6)
        assert all(0 <= u["step"] - u["behaviour"] <= s for u in stages.updates), (trial, stages.updates)


def test_gate_check_rejects_a_batch_outside_the_bound():
    gate = StalenessGate(1, 0, FailureBoard())
    assert gate.check(5, 4) == 1
    with pytest.raises(StalenessViolation, match="staleness 2, allowed 0..1"):
        gate.check(5, 3)
    with pytest.raises(StalenessViolation, match="staleness -1"):
        gate.check(5, 6)


# -- rubric versions ----------------------------------------------------------------------------


def _sample(step, slot, k, rubric_version):
    prompt = PromptItem(index=slot, prompt_ids=[1], prompt_text="p")
    return ScoredSample(step, slot, prompt, Rollout(0, k, [1], [2], "t", None, True, 0), rubric_version, base_rubric())


def test_assembler_refuses_two_rubric_versions_in_one_step():
    asm = BatchAssembler(group_size=2)
    asm.open_step(0, num_prompts=1, rubric_version=3, rubric=base_rubric())
    assert asm.add(_sample(0, 0, 0, 3)) is None
    with pytest.raises(RubricMixError, match="v3 but a sample of it was judged under v4"):
        asm.add(_sample(0, 0, 1, 4))


@pytest.mark.parametrize("evolve_async", [False, True])
def test_every_group_is_scored_by_one_rubric_version_while_rubrics_swap(evolve_async):
    stages = FakeStages(prompts_per_step=3, train_s=0.01, meta_s=0.015, evolve_async=evolve_async)
    report = run(stages, overlapped(max_staleness=1, evolve_every=1, mpo_samples=4), 10)
    assert report.rubric_swaps, "the meta-judge never produced a rubric: the test would prove nothing"
    versions_seen = []
    for u in stages.updates:
        for slot, versions in u["group_rubric_versions"].items():
            assert versions == {u["batch_rubric_version"]}, (u["step"], slot, versions)
        versions_seen.append(u["batch_rubric_version"])
    assert versions_seen == sorted(versions_seen), "rubric versions must only move forward"
    assert len(set(versions_seen)) > 1


def test_next_step_rubric_swap_is_deterministic():
    stages = FakeStages(meta_s=0.05)
    report = run(stages, overlapped(max_staleness=0, evolve_every=2, rubric_swap="next_step", mpo_samples=2), 7)
    # meta-judge launched after steps 1, 3, 5; each rubric installed at the boundary after the next step
    assert report.rubric_swaps == [(2, 1), (4, 2), (6, 3)]
    assert [u["batch_rubric_version"] for u in stages.updates] == [0, 0, 0, 1, 1, 2, 2]


def test_meta_judge_runs_in_the_background():
    # A 0.3 s meta-judge every step: a blocking schedule would spend >= 0.3 s per step waiting.
    stages = FakeStages(train_s=0.01, meta_s=0.3)
    t0 = time.monotonic()
    report = run(stages, overlapped(max_staleness=1, evolve_every=1, mpo_samples=2), 6)
    assert time.monotonic() - t0 < 1.2
    assert report.meta_runs >= 1
    assert report.stages["trainer"].blocked_s < 0.1


# -- ordering and equivalence with the serial schedule ----------------------------------------


def test_batches_are_prompt_major_although_judges_finish_out_of_order():
    rng = random.Random(3)
    stages = FakeStages(prompts_per_step=3, group_size=4, judge_s=lambda: rng.uniform(0, 0.02))
    run(stages, overlapped(max_staleness=1, judge_concurrency=12), 3)
    expected = [(slot, k) for slot in range(3) for k in range(4)]
    assert all(u["order"] == expected for u in stages.updates)


def test_staleness_zero_matches_the_serial_schedule_sample_for_sample():
    a, b = FakeStages(prompts_per_step=3), FakeStages(prompts_per_step=3)
    ser = run(a, serial(), 4)
    ovl = run(b, overlapped(max_staleness=0), 4)
    cmp = compare_rewards(ser, ovl)
    assert cmp == {"matched": 24, "of": 24, "mismatched": 0, "max_abs_diff": 0.0}
    assert [u["advantages"] for u in a.updates] == [u["advantages"] for u in b.updates]


def test_overlap_beats_the_serial_schedule_when_judging_dominates():
    # Per step: 2 chunks x 20 ms generation, 4 judgements x 40 ms, 20 ms update. Serial: ~0.22 s;
    # overlapped judges concurrently while the next chunk generates: ~0.08 s.
    kw = dict(gen_s=0.02, judge_s=0.04, train_s=0.02)
    ser = run(FakeStages(**kw), serial(), 5)
    ovl = run(FakeStages(**kw), overlapped(max_staleness=1), 5)
    assert ovl.samples_per_s > 1.5 * ser.samples_per_s, (ser.summary(), ovl.summary())
    assert ovl.stages["judge"].to_dict()["mean_concurrency"] > 1.0


def test_resume_starts_at_the_checkpointed_step():
    stages = FakeStages()
    stages.version = stages.rollout_version = 3
    run(stages, overlapped(max_staleness=1), 2, start_step=3)
    assert [u["step"] for u in stages.updates] == [3, 4]
    assert all(u["behaviour"] >= 2 for u in stages.updates)


# -- shutdown -----------------------------------------------------------------------------------


def test_update_error_stops_every_stage_and_keeps_the_last_checkpoint(tmp_path):
    stages = FakeStages(ckpt_dir=tmp_path, fail_update_at=3, train_s=0.01)
    t0 = time.monotonic()
    with pytest.raises(PipelineError, match=r"\[trainer\] RuntimeError: injected update failure at step 3") as info:
        run(stages, overlapped(max_staleness=2), 10)
    assert time.monotonic() - t0 < 3.0
    assert isinstance(info.value.__cause__, RuntimeError)
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 3  # steps 0..2 done
    assert not list(tmp_path.glob(".ckpt-*"))
    assert no_pipeline_threads_alive()


def test_generation_error_names_the_rollout_stage(tmp_path):
    stages = FakeStages(ckpt_dir=tmp_path, fail_generate_at=2)
    with pytest.raises(PipelineError, match=r"\[rollout\] RuntimeError: injected generation failure"):
        run(stages, overlapped(max_staleness=0), 10)
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 2
    assert no_pipeline_threads_alive()


def test_a_hung_judge_is_timed_out_masked_and_stops_the_run(tmp_path):
    stages = FakeStages(ckpt_dir=tmp_path, hang_judge_from_step=2)
    settings = overlapped(max_staleness=1, judge_timeout_s=0.3, stall_timeout_s=2.0, shutdown_timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(JudgeFailureError, match=r"step 2: 4 of 4 judgements failed.*judge_timeout_s=0.3"):
        run(stages, settings, 10)
    assert time.monotonic() - t0 < 2.5
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 2
    assert no_pipeline_threads_alive()


def test_a_judge_blocking_its_event_loop_is_caught_by_the_stall_watchdog():
    release = threading.Event()
    stages = FakeStages(block_loop_judge=release)
    settings = overlapped(max_staleness=1, judge_timeout_s=0.2, stall_timeout_s=0.5, shutdown_timeout_s=0.3)
    t0 = time.monotonic()
    try:
        with pytest.raises(StageStalled, match=r"\[judge\] nothing arrived on queue 'train' for 0.5 s"):
            run(stages, settings, 4)
        assert time.monotonic() - t0 < 2.0  # stall 0.5 s + shutdown 0.3 s per stage + slack
    finally:
        release.set()  # let the abandoned loop thread finish
    assert no_pipeline_threads_alive()


def test_no_deadlock_when_every_queue_is_full_and_the_trainer_fails():
    # One judge slot, one train-queue slot, producer allowed 2 steps ahead: the producer is blocked
    # on a full queue when the trainer dies; shutdown must still unwind it.
    stages = FakeStages(prompts_per_step=4, group_size=4, fail_update_at=1, train_s=0.05)
    settings = overlapped(max_staleness=2, judge_queue_size=1, judge_concurrency=1, train_queue_size=1)
    t0 = time.monotonic()
    with pytest.raises(PipelineError, match=r"\[trainer\]"):
        run(stages, settings, 20)
    assert time.monotonic() - t0 < 3.0
    assert no_pipeline_threads_alive()


def test_serial_schedule_names_the_failing_stage(tmp_path):
    stages = FakeStages(ckpt_dir=tmp_path, fail_update_at=1)
    with pytest.raises(PipelineError, match=r"\[trainer\] RuntimeError: injected update failure at step 1"):
        run(stages, serial(), 5)
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 1


# -- CUDA streams ------------------------------------------------------------------------------


@pytest.mark.gpu
def test_side_stream_advantages_reach_the_trainer_stream():
    from mpo_fast.trainer.pipeline.cuda_overlap import StreamSet

    streams = StreamSet("cuda")
    host = torch.randn(64)
    with streams.use("side"):
        dev = streams.to_device(host)
        doubled = dev * 2
        event = streams.record("side")
    streams.wait(event, doubled)
    assert torch.equal(doubled.cpu(), host * 2)


# -- profiler trace -------------------------------------------------------------------------------

def test_profiler_trace_shows_generation_overlapping_updates_only_when_overlapped(tmp_path):
    """The trace records every stage thread; generation and updates overlap at max_staleness=1 and
    never in the serial schedule (the same measurement shows the CUDA streams on a GPU)."""
    from mpo_fast.trainer.pipeline.trace import profile_stages, trace_overlap

    kw = dict(gen_s=0.03, train_s=0.03)
    with profile_stages(tmp_path / "overlapped.json"):
        run(FakeStages(**kw), overlapped(max_staleness=1), 6)
    with profile_stages(tmp_path / "serial.json"):
        run(FakeStages(**kw), serial(), 6)
    ovl, ser = trace_overlap(tmp_path / "overlapped.json"), trace_overlap(tmp_path / "serial.json")
    assert ovl["generate_ranges"] == 12 and ovl["update_ranges"] == 6 and ovl["threads"] == 2
    assert ovl["overlap_s"] > 0.25 * min(ovl["generate_s"], ovl["update_s"]), ovl
    assert ser["generate_ranges"] == 12 and ser["update_ranges"] == 6 and ser["overlap_s"] == 0.0, ser


def test_trace_overlap_counts_nested_and_repeated_ranges_once(tmp_path):
    import json

    from mpo_fast.trainer.pipeline.trace import trace_overlap

    def x(name, ts, dur, tid):
        return {"ph": "X", "name": name, "ts": ts, "dur": dur, "tid": tid}

    events = [x("mpo.rollout.generate", 0, 100, 1), x("mpo.rollout.generate", 10, 20, 1),  # nested
              x("mpo.trainer.update", 50, 100, 2), x("mpo.trainer.update", 300, 10, 2), x("other", 0, 1000, 3)]
    (tmp_path / "t.json").write_text(json.dumps({"traceEvents": events}))
    got = trace_overlap(tmp_path / "t.json")
    assert got["generate_s"] == 0.0001 and got["update_s"] == 0.00011 and got["overlap_s"] == 0.00005


def test_steady_throughput_leaves_out_the_pipeline_fill():
    from mpo_fast.trainer.pipeline import PipelineReport, StepRecord

    report = PipelineReport("overlapped", 1, wall_s=40.0)
    for step, done in enumerate([10.0, 20.0, 30.0, 40.0]):  # the first step also paid the fill
        report.steps.append(StepRecord(step, step, 0, 0, 8, 0, 8, 0.5, {}, done))
    assert report.steady_samples_per_s == pytest.approx(24 / 30.0)
    assert report.summary()["steady_samples_per_s"] == pytest.approx(0.8)
    assert PipelineReport("serial", 0, wall_s=1.0).steady_samples_per_s is None


def test_meta_refinement_due_before_the_new_rubric_scored_anything_is_deferred_not_dropped():
    """Right after a swap (max_staleness > 0) no trained step carries the current rubric: the due
    meta-judge runs at the first boundary that has such samples instead of being skipped."""
    from mpo_fast.trainer.pipeline import OverlappedPipeline

    stages = FakeStages()
    pipe = OverlappedPipeline(stages, overlapped(max_staleness=1, evolve_every=2, mpo_samples=4), rubric=base_rubric())
    pipe._end = 10
    pipe.rubrics.stage(base_rubric())
    pipe.rubrics.swap_at_boundary(2)  # version 1 installed; nothing scored by it yet
    launched = []
    pipe._evolve_sync = lambda fut, rubric, samples, step: launched.append((step, len(samples)))
    pipe._step_boundary(3)  # 4 updates done: due, but no sample of version 1 -> deferred
    assert launched == [] and pipe._meta_deferred
    r = Rollout(0, 0, [1], [2], "x", None, True, 0)
    for i in range(2):
        pipe.recent.add(ScoredSample(4, 0, None, dataclasses.replace(r, sample_index=i), 1, base_rubric()))
    pipe._step_boundary(4)  # not due by the interval, but deferred: launches with the new samples
    for t in [t for t in threading.enumerate() if t.name == "mpo-meta"]:
        t.join(5)
    assert [step for step, _ in launched] == [4] and launched[0][1] == 2 and not pipe._meta_deferred
