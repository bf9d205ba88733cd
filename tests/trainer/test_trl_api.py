"""What a TRL GRPOTrainer user passes, through MPOTrainer on the tiny model with a scripted judge:
reward_funcs + reward_weights (both schedules), callbacks (ours and transformers'), eval_dataset,
conversational prompts and streamed IterableDatasets (with exact resume)."""
from __future__ import annotations

import pytest
import torch

from mpo_fast.trainer import MPOTrainer
from mpo_fast.trainer.config import RewardSettings
from mpo_fast.trainer.checkpoint import list_checkpoints
from mpo_fast.trainer.pipeline import PipelineSettings, train_pipelined
from mpo_fast.trainer.prompt_stream import PromptStream, StreamExhaustedError
from mpo_fast.trainer.run_log import read_jsonl
from tests.tiny_models import tiny_causal_lm
from tests.trainer.conftest import PROMPTS, tiny_config
from tests.trainer.fakes import AppendingMetaJudge, ShortEssayTask, SyntheticJudge, vowel_fraction

FAST = dict(judge_timeout_s=10.0, stall_timeout_s=30.0, shutdown_timeout_s=5.0)


def short_reward(completions, **kwargs):
    """1 / (1 + length): nonzero for every response, so a schedule that dropped it would show;
    None for an empty one (not applicable)."""
    return [None if not c else 1.0 / (1 + len(c)) for c in completions]


def _trainer(tmp_path, tokenizer, *, dataset=PROMPTS, rm=None, mrm=None, **kw):
    cfg_keys = {"train", "rollout", "meta", "log", "judge", "pipeline", "resume", "reward"}
    cfg = {k: v for k, v in kw.items() if k in cfg_keys}
    if "reward" in cfg:
        cfg["reward"] = RewardSettings(**cfg["reward"])
    extra = {k: v for k, v in kw.items() if k not in cfg_keys}
    return MPOTrainer(
        tiny_causal_lm(tokenizer, seed=0), args=tiny_config(tmp_path, **cfg), train_dataset=dataset,
        judge=rm or SyntheticJudge(), meta_judge=mrm, processing_class=tokenizer, task=ShortEssayTask(), **extra,
    )


def _check_combined(samples, weight, judge_weight=1.0):
    assert samples
    for s in samples:
        f = short_reward([s["response"]])[0]
        assert s["func_rewards"] == {"short_reward": f}
        parts = ([] if judge_weight == 0 else [judge_weight * s["judge_reward"]]) + ([] if f is None else [weight * f])
        assert s["reward"] == pytest.approx(sum(parts), abs=1e-6), s


# -- reward functions -------------------------------------------------------------------------


def test_reward_funcs_combine_with_the_judge_serial(tmp_path, tokenizer):
    seen = []

    def spy(prompts, completions, completion_ids, **columns):
        seen.append((list(prompts), list(completions), [list(c) for c in completion_ids], columns))
        return short_reward(completions)

    spy.__name__ = "short_reward"
    rows = [{"prompt": p, "topic": f"t{i}"} for i, p in enumerate(PROMPTS)]
    trainer = _trainer(tmp_path, tokenizer, dataset=rows, reward_funcs=[spy], reward_weights=[0.5, 2.0],
                       train={"max_steps": 2})
    trainer.train()
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    _check_combined(samples, 0.5, judge_weight=2.0)
    prompts, completions, ids, columns = seen[0]
    assert len(prompts) == len(completions) == len(ids) == 8
    assert completions == [s["response"] for s in samples[:8]]
    assert all(tokenizer.decode(i, skip_special_tokens=True) == c for i, c in zip(ids, completions))
    assert set(columns["topic"]) <= {f"t{i}" for i in range(len(PROMPTS))} and "trainer_state" in columns
    assert columns["trainer_state"].max_steps == 2
    rows_m = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    for step, row in enumerate(rows_m, start=1):
        values = [v for v in short_reward([s["response"] for s in samples if s["step"] == step]) if v is not None]
        assert row["rewards/short_reward/mean"] == pytest.approx(sum(values) / len(values))


def test_reward_funcs_from_config_on_the_overlapped_schedule(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, train={"max_steps": 2},
                       reward={"funcs": ["tests.trainer.test_trl_api:short_reward"], "weights": [0.25]},
                       pipeline={"mode": "overlapped"})
    train_pipelined(trainer, PipelineSettings(mode="overlapped", max_staleness=0, **FAST))
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert len(samples) == 16
    _check_combined(samples, 0.25)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all("rewards/short_reward/mean" in r for r in rows)


@pytest.mark.parametrize("mode", ["serial", "overlapped"])
def test_failed_judgements_stay_masked_unless_the_judge_weight_is_zero(tmp_path, tokenizer, mode):
    fail = dict(fail_when=lambda call, i, req: len(req.response) % 3 == 0)  # per sample, whatever the batching
    common = dict(reward_funcs=[short_reward], train={"max_steps": 1}, judge={"max_failure_rate": 0.9},
                  pipeline={"mode": mode})

    def run(path, weights):
        trainer = _trainer(path, tokenizer, rm=SyntheticJudge(**fail), reward_weights=weights, **common)
        if mode == "overlapped":
            train_pipelined(trainer, PipelineSettings(mode="overlapped", max_staleness=0, judge_concurrency=1,
                                                      max_failed_fraction=0.9, **FAST))
        else:
            trainer.train()
        return read_jsonl(path / "run" / "samples.jsonl")

    masked = run(tmp_path / "w1", [1.0, 1.0])
    failed = [s for s in masked if s["judge_reward"] is None]
    assert failed and all(s["reward"] is None and not s["valid"] for s in failed)  # never 0
    kept = run(tmp_path / "w0", [1.0, 0.0])
    failed = [s for s in kept if s["judge_reward"] is None]
    assert failed and [s["reward"] for s in failed] == pytest.approx([short_reward([s["response"]])[0] for s in failed], rel=1e-6)


# -- callbacks --------------------------------------------------------------------------------


class Recorder:
    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def on_train_begin(self, trainer):
        self.events.append(("begin", trainer.step))

    def on_step_end(self, trainer, step, metrics):
        self.events.append(("step", step, metrics["step"]))
        if step == self.stop_at:
            trainer.control.should_training_stop = True

    def on_evolve(self, trainer, step, rubric_version):
        self.events.append(("evolve", step, rubric_version.version))

    def on_train_end(self, trainer):
        self.events.append(("end", trainer.step))


@pytest.mark.parametrize("mode", ["serial", "overlapped"])
def test_callbacks_see_every_step_and_evolution_and_can_stop(tmp_path, tokenizer, mode):
    rec = Recorder()
    trainer = _trainer(tmp_path / "a", tokenizer, mrm=AppendingMetaJudge(), callbacks=[rec],
                       meta={"interval": 2}, pipeline={"mode": mode})
    if mode == "overlapped":
        train_pipelined(trainer, PipelineSettings(mode="overlapped", max_staleness=0, evolve_every=2,
                                                  rubric_swap="next_step", **FAST))
    else:
        trainer.train()
    steps = [e[1] for e in rec.events if e[0] == "step"]
    assert rec.events[0] == ("begin", 0) and rec.events[-1] == ("end", 4) and steps == [1, 2, 3, 4]
    assert all(e[1] == e[2] for e in rec.events if e[0] == "step")
    evolved = [e for e in rec.events if e[0] == "evolve"]
    assert evolved and evolved[0][2] == 2 and evolved[0][1] in (2, 3)

    stopper = Recorder(stop_at=3)
    trainer = _trainer(tmp_path / "b", tokenizer, callbacks=[stopper], log={"save_steps": 0}, pipeline={"mode": mode})
    result = trainer.train() if mode == "serial" else None
    if mode == "overlapped":
        train_pipelined(trainer, PipelineSettings(mode="overlapped", max_staleness=0, **FAST))
    assert [e[1] for e in stopper.events if e[0] == "step"] == [1, 2, 3]
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "run")] == [3]  # saved where it stopped
    assert [r["step"] for r in read_jsonl(tmp_path / "b" / "run" / "metrics.jsonl")] == [1, 2, 3]
    if result is not None:
        assert result.steps == 3


def test_transformers_trainer_callback_gets_state_control_and_logs(tmp_path, tokenizer):
    from transformers import TrainerCallback

    class HF(TrainerCallback):
        def __init__(self):
            self.calls = []

        def on_train_begin(self, args, state, control, **kw):
            self.calls.append(("begin", state.global_step, state.max_steps, args.output_dir))

        def on_step_end(self, args, state, control, **kw):
            self.calls.append(("step_end", state.global_step, len(state.log_history)))
            assert kw["model"] is not None and kw["optimizer"] is not None
            if state.global_step == 2:
                control.should_training_stop = True
            return control

        def on_log(self, args, state, control, logs=None, **kw):
            self.calls.append(("log", state.global_step, logs["reward_mean"]))

        def on_save(self, args, state, control, **kw):
            self.calls.append(("save", state.global_step))

        def on_train_end(self, args, state, control, **kw):
            self.calls.append(("end", state.global_step))

    cb = HF()
    trainer = _trainer(tmp_path, tokenizer, callbacks=[cb], log={"save_steps": 1})
    result = trainer.train()
    assert result.steps == 2
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert cb.calls == [
        ("begin", 0, 4, str(tmp_path / "run")),
        ("step_end", 1, 1), ("log", 1, rows[0]["reward_mean"]), ("save", 1),
        ("step_end", 2, 2), ("log", 2, rows[1]["reward_mean"]), ("save", 2),
        ("end", 2),
    ]
    with pytest.raises(TypeError, match="pass an instance"):
        _trainer(tmp_path / "x", tokenizer, callbacks=[HF])
    with pytest.raises(TypeError, match="has none of"):
        _trainer(tmp_path / "y", tokenizer, callbacks=[object()])


# -- evaluation -------------------------------------------------------------------------------


def test_eval_dataset_is_judged_every_eval_steps_and_never_trained_on(tmp_path, tokenizer):
    eval_rows = ["zebra", "quiet hills"]
    judge = SyntheticJudge()
    from transformers import TrainerCallback

    class OnEvaluate(TrainerCallback):
        evaluated: list = []

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            self.evaluated.append(metrics)

    hf = OnEvaluate()
    trainer = _trainer(tmp_path / "e", tokenizer, rm=judge, eval_dataset=eval_rows, reward_funcs=[short_reward],
                       train={"max_steps": 4, "eval_steps": 2}, callbacks=[hf])
    trainer.train()
    rows = read_jsonl(tmp_path / "e" / "run" / "metrics.jsonl")
    assert ["eval/reward_mean" in r for r in rows] == [False, True, False, True]
    eval_requests = [r for call in judge.requests for r in call if r.prompt in eval_rows]
    assert len(eval_requests) == 2 * len(eval_rows) * 4  # 2 evaluations x 2 prompts x group 4
    for row in (rows[1], rows[3]):
        assert row["eval/samples"] == 8 and row["eval/valid_samples"] == 8 and row["eval/rubric_version"] == 1
        assert 0.0 <= row["eval/judge_reward_mean"] <= 1.0 and "eval/rewards/short_reward/mean" in row
    samples = read_jsonl(tmp_path / "e" / "run" / "samples.jsonl")
    assert not {s["prompt"] for s in samples} & set(eval_rows)
    # Evaluation draws its samples in a forked RNG: the training run is the same as without it.
    assert [sorted(m)[:2] for m in hf.evaluated] == [["eval_eos_fraction", "eval_judge_failed"]] * 2
    assert hf.evaluated[0]["eval_reward_mean"] == rows[1]["eval/reward_mean"]
    plain = _trainer(tmp_path / "p", tokenizer, reward_funcs=[short_reward], train={"max_steps": 4})
    plain.train()
    assert [s["response"] for s in samples] == [s["response"] for s in read_jsonl(tmp_path / "p" / "run" / "samples.jsonl")]
    assert set(trainer.evaluate()) >= {"eval/reward_mean", "eval/reward_std", "eval/judge_failed"}


def test_eval_steps_without_an_eval_set_is_an_error(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="no eval set"):
        _trainer(tmp_path, tokenizer, train={"eval_steps": 2})


@pytest.mark.parametrize("mode, staleness", [("overlapped", 0), ("overlapped", 1), ("serial", 0)])
def test_eval_on_the_pipelined_schedules(tmp_path, tokenizer, mode, staleness):
    eval_rows = ["zebra", "quiet hills"]
    judge = SyntheticJudge()
    cfg = dict(train={"max_steps": 4, "eval_steps": 2}, pipeline={"mode": mode, "max_staleness": staleness})
    trainer = _trainer(tmp_path / "e", tokenizer, rm=judge, eval_dataset=eval_rows, reward_funcs=[short_reward], **cfg)
    train_pipelined(trainer, PipelineSettings(mode=mode, max_staleness=staleness, **FAST))
    rows = read_jsonl(tmp_path / "e" / "run" / "metrics.jsonl")
    assert ["eval/reward_mean" in r for r in rows] == [False, True, False, True]
    assert all(r["eval/valid_samples"] == 8 and "eval/rewards/short_reward/mean" in r for r in (rows[1], rows[3]))
    assert len([r for call in judge.requests for r in call if r.prompt in eval_rows]) == 16
    samples = read_jsonl(tmp_path / "e" / "run" / "samples.jsonl")
    assert len(samples) == 32 and not {s["prompt"] for s in samples} & set(eval_rows)
    if staleness == 0:  # on-policy and seeded: evaluation leaves the training samples as they were
        cfg["train"] = {"max_steps": 4}
        plain = _trainer(tmp_path / "p", tokenizer, reward_funcs=[short_reward], **cfg)
        train_pipelined(plain, PipelineSettings(mode=mode, max_staleness=0, **FAST))
        key = lambda s: (s["step"], s["prompt"], s["sample_index"])  # noqa: E731
        other = sorted(read_jsonl(tmp_path / "p" / "run" / "samples.jsonl"), key=key)
        assert [s["response"] for s in sorted(samples, key=key)] == [s["response"] for s in other]


# -- conversational prompts -------------------------------------------------------------------


def test_conversational_prompts_use_the_chat_template_and_reach_reward_funcs_as_messages(tmp_path, tokenizer):
    conv = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "cats"}]},
            {"prompt": [{"role": "user", "content": "rain"}, {"role": "assistant", "content": "Drops"},
                        {"role": "user", "content": "more"}]}]
    seen = {}

    def spy(prompts, completions, **kw):
        seen.setdefault("prompts", prompts)
        seen.setdefault("completions", completions)
        return [1.0] * len(completions)

    judge = SyntheticJudge()
    trainer = _trainer(tmp_path, tokenizer, dataset=conv, rm=judge, reward_funcs=[spy], train={"max_steps": 1})
    for row, item in zip(conv, trainer.prompts):
        text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        assert item.ids == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert "Write." not in tokenizer.decode(item.ids)  # the task's system prompt is not added
    trainer.train()
    judged = {r.prompt for call in judge.requests for r in call}
    assert judged == {"cats", "user: rain\n\nassistant: Drops\n\nuser: more"}
    assert all(isinstance(p, list) and p[-1]["role"] == "user" for p in seen["prompts"])
    assert all(c[0]["role"] == "assistant" and isinstance(c[0]["content"], str) for c in seen["completions"])
    with pytest.raises(ValueError, match="role"):
        _trainer(tmp_path / "bad", tokenizer, dataset=[{"prompt": [{"content": "no role"}]}])


def test_a_final_assistant_message_is_continued(tmp_path, tokenizer):
    row = {"prompt": [{"role": "user", "content": "name a fruit"}, {"role": "assistant", "content": "Sure: "}]}
    trainer = _trainer(tmp_path, tokenizer, dataset=[row])
    text = tokenizer.decode(trainer.prompts[0].ids)
    assert text.endswith("Sure: ") and not text.endswith("<|assistant|>")


# -- IterableDataset --------------------------------------------------------------------------


class Rows(torch.utils.data.IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter({"prompt": f"{PROMPTS[i % len(PROMPTS)]} {i}"} for i in range(self.n))


def test_iterable_dataset_streams_in_order_and_resumes_exactly(tmp_path, tokenizer):
    cfg = dict(train={"max_steps": 4}, log={"save_steps": 2})
    straight = _trainer(tmp_path / "a", tokenizer, dataset=Rows(50), **cfg)
    straight.train()
    sa = read_jsonl(tmp_path / "a" / "run" / "samples.jsonl")
    assert [s["prompt"] for s in sa[::4]] == [f"{PROMPTS[i % 6]} {i}" for i in range(8)]  # in order, read once

    crashing = _trainer(tmp_path / "b", tokenizer, dataset=Rows(50), rm=SyntheticJudge(crash_on_call=4), **cfg)
    with pytest.raises(RuntimeError, match="injected crash"):
        crashing.train()
    resumed = _trainer(tmp_path / "b", tokenizer, dataset=Rows(50), resume=True, **cfg)
    assert resumed.sampler.state_dict() == {"kind": "stream", "consumed": 0}
    resumed.train()
    sb = read_jsonl(tmp_path / "b" / "run" / "samples.jsonl")
    assert [(s["step"], s["prompt"], s["response"]) for s in sa] == [(s["step"], s["prompt"], s["response"]) for s in sb]
    for (n, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), n


def test_iterable_dataset_on_the_overlapped_schedule_and_running_out(tmp_path, tokenizer):
    trainer = _trainer(tmp_path / "o", tokenizer, dataset=Rows(8), train={"max_steps": 4}, pipeline={"mode": "overlapped"})
    train_pipelined(trainer, PipelineSettings(mode="overlapped", max_staleness=1, **FAST))
    samples = read_jsonl(tmp_path / "o" / "run" / "samples.jsonl")
    assert sorted({s["prompt"] for s in samples}) == sorted(f"{PROMPTS[i % 6]} {i}" for i in range(8))

    short = _trainer(tmp_path / "s", tokenizer, dataset=Rows(3), train={"max_steps": 4})
    with pytest.raises(StreamExhaustedError, match="ran out after 3 rows of the 8 the run needs"):
        short.train()


def test_hf_datasets_iterable_dataset_and_generators_stream():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"prompt": f"p{i}", "topic": i} for i in range(5)]).to_iterable_dataset()
    stream = PromptStream(ds, lambda ex: ex)
    assert [stream[i].prompt for i in stream.next(3)] == ["p0", "p1", "p2"]
    assert stream[1].meta["topic"] == 1
    stream.load_state_dict({"kind": "stream", "consumed": 1})  # back: a fresh iterator, skipping 1 row
    assert [stream[i].prompt for i in stream.next(2)] == ["p1", "p2"]

    gen = PromptStream(({"prompt": f"g{i}"} for i in range(4)), lambda ex: ex)
    assert [gen[i].prompt for i in gen.next(2)] == ["g0", "g1"]
    gen.load_state_dict({"kind": "stream", "consumed": 0})
    with pytest.raises(StreamExhaustedError, match="one-shot iterator"):
        gen.next(1)
    with pytest.raises(ValueError, match="list dataset"):
        gen.load_state_dict({"epoch": 0, "position": 0, "size": 4, "seed": 0})


def test_a_resumed_stream_reads_a_drawn_row_again():
    # A resumed pipelined run restores the meta-judge's sample window before its first draw: the
    # window's prompts were drawn by the interrupted run, so the fresh stream reads them again, going
    # forward only (a one-shot generator works), and then draws on from the checkpointed position.
    reads = []

    def rows():
        for i in range(10):
            reads.append(i)
            yield {"prompt": f"g{i}"}

    stream = PromptStream(rows(), lambda ex: ex)
    stream.load_state_dict({"kind": "stream", "consumed": 4})
    assert [stream[i].prompt for i in (1, 1, 3)] == ["g1", "g1", "g3"]
    assert [stream[i].prompt for i in stream.next(2)] == ["g4", "g5"]
    assert reads == [0, 1, 2, 3, 4, 5]  # every row read once
    with pytest.raises(IndexError, match="not drawn yet"):
        stream[6]


def test_task_eval_split_is_the_eval_set_from_a_config(tmp_path, tokenizer):
    cfg = tiny_config(tmp_path, train={"max_steps": 1, "eval_steps": 1})
    cfg.task.eval_split, cfg.task.eval_limit = "test", 2
    judge = SyntheticJudge()
    trainer = MPOTrainer(tiny_causal_lm(tokenizer, seed=0), args=cfg, train_dataset=PROMPTS, judge=judge,
                         processing_class=tokenizer, task=ShortEssayTask())
    expected = [e.prompt for e in ShortEssayTask().load(None, "test", limit=2)]
    assert [p.text for p in trainer.evaluator.prompts] == expected
    trainer.train()
    row = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert row["eval/samples"] == 8 and {r.prompt for call in judge.requests for r in call} >= set(expected)


def test_iterable_dataset_resumes_exactly_on_the_overlapped_schedule(tmp_path, tokenizer):
    from mpo_fast.trainer.pipeline import PipelineError

    cfg = dict(train={"max_steps": 4}, log={"save_steps": 2}, pipeline={"mode": "overlapped"})
    settings = PipelineSettings(mode="overlapped", max_staleness=1, **FAST)
    straight = _trainer(tmp_path / "a", tokenizer, dataset=Rows(50), **cfg)
    train_pipelined(straight, settings)
    # A crash in the trainer thread at step 3, after the step-2 checkpoint: the producer has drawn
    # rows for later steps by then, and the checkpoint must record only the 4 that steps 1-2 used.
    class Crash:
        def on_step_end(self, trainer, step, metrics):
            if step == 3:
                raise RuntimeError("injected crash after step 3")

    crashing = _trainer(tmp_path / "b", tokenizer, dataset=Rows(50), callbacks=[Crash()], **cfg)
    with pytest.raises(PipelineError, match="injected crash"):
        train_pipelined(crashing, settings)
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "run")] == [2]
    resumed = _trainer(tmp_path / "b", tokenizer, dataset=Rows(50), resume=True, **cfg)
    train_pipelined(resumed, settings)
    key = lambda s: (s["step"], s["prompt"], s["sample_index"])  # noqa: E731
    sa = sorted(read_jsonl(tmp_path / "a" / "run" / "samples.jsonl"), key=key)
    sb = sorted(read_jsonl(tmp_path / "b" / "run" / "samples.jsonl"), key=key)
    assert [key(s) for s in sa if s["step"] > 2] == [key(s) for s in sb if s["step"] > 2]
    assert [s["prompt"] for s in sb if s["step"] == 3][0].endswith((" 4", " 5"))  # rows 4-5: none re-read


def test_a_hf_datasets_dataset_with_chat_prompts_trains(tmp_path, tokenizer):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": p}], "topic": i} for i, p in enumerate(PROMPTS)])
    seen = []

    def by_topic(completions, topic, **kw):
        seen.extend(topic)
        return [float(t) for t in topic]

    trainer = _trainer(tmp_path, tokenizer, dataset=ds, reward_funcs=[by_topic], reward_weights=[0.1, 0.0],
                       train={"max_steps": 1})
    assert [p.text for p in trainer.prompts] == PROMPTS  # a map-style dataset: rendered up front, not streamed
    trainer.train()
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert [s["reward"] for s in samples] == pytest.approx([0.1 * PROMPTS.index(s["prompt"]) for s in samples])
    assert len(seen) == 8
