import math

import pytest
import torch

from mpo_fast.rollout import Rollout
from mpo_fast.trainer import stages
from mpo_fast.trainer.batch import build_train_batch
from tests.trainer.fakes import SyntheticJudge


def _rollout(p, s, prompt, completion, logp=True, finished=True):
    return Rollout(p, s, prompt, completion, "x" * len(completion),
                   [-0.5] * len(completion) if logp else None, finished, 0)


def test_batch_coordinates_point_at_the_predicting_positions():
    rollouts = [_rollout(0, 0, [5, 6, 7], [8, 9]), _rollout(0, 1, [5, 6, 7], [10, 11, 12, 13]),
                _rollout(1, 0, [4], [14])]
    batch = build_train_batch(rollouts, torch.tensor([1.0, -1.0, 0.5]), pad_token_id=0)
    assert batch.input_ids.shape == (3, 7) and batch.completion_ids.shape == (3, 4)
    # the hidden state at cols predicts the next input token, which is the completion token
    assert torch.equal(batch.input_ids[batch.rows, batch.cols + 1], batch.completion_ids[batch.rows, batch.slots])
    assert batch.num_tokens == 7
    assert batch.completion_mask.sum(1).tolist() == [2, 4, 1]
    assert batch.behaviour_logp is not None and batch.behaviour_logp[1, 3] == -0.5
    sub = batch.select([0, 2])  # trimmed to its own longest row
    assert sub.input_ids.shape == (2, 5) and sub.completion_ids.shape == (2, 2)
    assert torch.equal(sub.input_ids[sub.rows, sub.cols + 1], sub.completion_ids[sub.rows, sub.slots])
    assert sub.advantages.tolist() == [1.0, 0.5]


def test_batch_rejects_mismatches():
    with pytest.raises(ValueError, match="2 rollouts but 1 advantages"):
        build_train_batch([_rollout(0, 0, [1], [2]), _rollout(0, 1, [1], [2])], torch.zeros(1), pad_token_id=0)
    with pytest.raises(ValueError, match="empty completion"):
        build_train_batch([_rollout(0, 0, [1], [])], torch.zeros(1), pad_token_id=0)
    bad = _rollout(0, 0, [1], [2, 3])
    bad.behaviour_logprobs = [0.0]
    with pytest.raises(ValueError, match="1 behaviour log-probs for 2 completion tokens"):
        build_train_batch([bad], torch.zeros(1), pad_token_id=0)


@pytest.mark.parametrize(
    "judge, rule, w, finished, penalty, expected",
    [
        (0.8, None, 0.5, True, 0.0, 0.8),
        (None, None, 0.5, True, 0.0, None),  # failed judgement: masked, never 0
        (0.8, 1.0, 0.5, True, 0.0, 0.9),
        (None, 1.0, 0.5, True, 0.0, None),  # mixed reward with a failed half is masked
        (None, 1.0, 1.0, True, 0.0, 1.0),  # rule only: the judge does not matter
        (0.8, None, 0.5, False, 0.25, 0.55),  # cut at max_new_tokens
        (float("nan"), None, 0.5, True, 0.0, None),  # a NaN "reward" is a failure
    ],
)
def test_combine_reward(judge, rule, w, finished, penalty, expected):
    got = stages.combine_reward(judge, rule, rule_weight=w, finished=finished, missing_eos_penalty=penalty)
    assert (got is None and expected is None) or got == pytest.approx(expected)


def test_combine_reward_rejects_nonfinite_rule():
    with pytest.raises(ValueError, match="rule_reward returned nan"):
        stages.combine_reward(0.5, math.nan, rule_weight=0.5, finished=True, missing_eos_penalty=0)


def test_judge_stage_masks_failures_and_advantages_ignore_them():
    import asyncio

    from mpo_fast.tasks import TaskExample, get_task

    task = get_task("essay")
    prompts = [stages.PromptItem(TaskExample("a", "p0"), "p0", [1]), stages.PromptItem(TaskExample("b", "p1"), "p1", [2])]
    texts = ["aaaa", "bbbb", "abab", "zzzz", "eeee", "eebb"]
    rollouts = [Rollout(i // 3, i % 3, [1], [3], t, None, True, 0) for i, t in enumerate(texts)]
    judge = SyntheticJudge(fail_when=lambda call, i, req: i == 1)
    loop = asyncio.new_event_loop()
    try:
        scored = stages.judge(judge, loop.run_until_complete, rollouts, prompts, task.initial_rubric(), task,
                              rule_weight=0.5, missing_eos_penalty=0.0)
    finally:
        loop.close()
    assert scored.valid.tolist() == [True, False, True, True, True, True]
    assert scored.failures == 1 and scored.judge_rewards[1] is None
    assert [r.prompt for r in judge.requests[0]] == ["p0"] * 3 + ["p1"] * 3
    adv = stages.advantages(scored, group_size=3, mode="grpo", eps=1e-6)
    assert adv.advantages[1] == 0
    # group 0 has two valid members (1.0 and 0.5): their advantages are symmetric
    assert adv.advantages[0] == pytest.approx(-adv.advantages[2])
    assert int(adv.masked_members) == 1


def test_meta_buffer_is_bounded_and_round_trips():
    from mpo_fast.judges import MetaSample

    buf = stages.MetaSampleBuffer(capacity=6)
    buf.add([MetaSample("p", f"r{i}", (float(i), None), float(i) if i % 3 else None, "why", "h", 1) for i in range(10)])
    assert [s.response for s in buf.samples] == [f"r{i}" for i in range(4, 10)]
    again = stages.MetaSampleBuffer(capacity=6)
    again.load_state(buf.state())
    assert again.samples == buf.samples


def test_signal_monitor_replay_reaches_the_same_detector_state():
    from mpo_fast.judges import HackingDetector, Judgement
    from mpo_fast.parsing import ScoreStatus

    def step_data(length, reward):
        rollouts = [Rollout(0, i, [1], [2] * length, "", None, True, 0) for i in range(2)]
        j = Judgement((reward,), (ScoreStatus.OK,), reward, True, "m", 1, 0.0, rationale="r" * 40)
        scored = stages.ScoredRollouts(torch.tensor([reward] * 2), torch.tensor([True, True]), [j, j], [reward] * 2, [None] * 2)
        return rollouts, scored

    lengths = [40, 40, 40, 40, 40, 10, 10, 10, 10, 10]
    live = stages.SignalMonitor(HackingDetector(baseline_steps=3, window=2, cooldown_steps=3))
    fired = [live.observe(s + 1, *step_data(n, 0.5)) for s, n in enumerate(lengths[:6])]
    resumed = stages.SignalMonitor(HackingDetector(baseline_steps=3, window=2, cooldown_steps=3))
    resumed.load_state(live.state())
    rest_live = [live.observe(s + 1, *step_data(n, 0.5)) for s, n in enumerate(lengths) if s >= 6]
    rest_resumed = [resumed.observe(s + 1, *step_data(n, 0.5)) for s, n in enumerate(lengths) if s >= 6]
    assert rest_live == rest_resumed
    assert any(f and f[0].startswith("length_collapse") for f in fired + rest_live)


def test_generate_stage_checks_backend_contract():
    class Bad:
        def generate(self, prompts, *, n, sampling, policy_version):
            return [Rollout(0, 1, [1], [2], "", None, True, 0), Rollout(0, 0, [1], [2], "", None, True, 0)]

    from mpo_fast.rollout import SamplingParams
    from mpo_fast.tasks import TaskExample

    items = [stages.PromptItem(TaskExample("a", "p"), "p", [1])]
    with pytest.raises(RuntimeError, match="prompt-major"):
        stages.generate(Bad(), items, n=2, sampling=SamplingParams(), policy_version=0)
    with pytest.raises(RuntimeError, match="returned 2 samples"):
        stages.generate(Bad(), items, n=3, sampling=SamplingParams(), policy_version=0)


def test_render_prompts_rejects_long_prompts_and_missing_template(tokenizer):
    from mpo_fast.tasks import TaskExample, get_task

    task = get_task("essay")
    items = stages.render_prompts([TaskExample("a", "cats")], task, tokenizer, max_prompt_tokens=4096)
    assert items[0].text.endswith("cats") and tokenizer.decode(items[0].ids).endswith("<|assistant|>")
    with pytest.raises(ValueError, match="over task.max_prompt_tokens=10"):
        stages.render_prompts([TaskExample("a", "cats")], task, tokenizer, max_prompt_tokens=10)
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(ValueError, match="has no chat_template"):
        stages.render_prompts([TaskExample("a", "cats")], task, bare, max_prompt_tokens=4096)
