"""reward_funcs.py alone: TRL's reward_funcs / reward_weights semantics next to the judge's reward."""
from __future__ import annotations

import math

import pytest

from mpo_fast.tasks import TaskExample
from mpo_fast.trainer import stages
from mpo_fast.trainer.config import ConfigError, MPOConfig
from mpo_fast.trainer.reward_funcs import (
    RewardFuncError,
    RewardFuncs,
    call_funcs,
    combine,
    func_kwargs,
    func_metrics,
    load_reward_func,
)


def length_reward(completions, **kwargs):  # loaded by import path in a test below
    return [float(len(c)) for c in completions]


def _values(*vals):
    def f(completions, **kwargs):
        return list(vals)
    return f


def test_weighted_sum_matches_hand_computation_and_none_is_left_out():
    def f1(completions, **kwargs):
        return [1.0, None, 3.0, 0.5]

    def f2(completions, **kwargs):
        return [2.0, 2.0, None, float("nan")]  # NaN reads as "no value", as TRL's nansum does

    funcs = RewardFuncs.build([f1, f2], [0.5, 2.0, 3.0])  # the last weight is the judge's
    assert (funcs.weights, funcs.judge_weight, funcs.names) == ((0.5, 2.0), 3.0, ("f1", "f2"))
    per = call_funcs(funcs, {"completions": ["a", "b", "c", "d"]}, 4, run_async=None)
    got = combine(funcs, [0.5, None, 0.2, 0.1], per, finished=[True, True, False, True], missing_eos_penalty=0.1)
    # 3*0.5 + 0.5*1 + 2*2 | judge failed (weight 3): masked | 3*0.2 + 0.5*3 - EOS penalty | 3*0.1 + 0.5*0.5
    expected = [6.0, None, 0.6 + 1.5 - 0.1, 0.3 + 0.25]
    assert got[1] is None
    for g, e in zip([got[0], got[2], got[3]], [expected[0], expected[2], expected[3]]):
        assert g == pytest.approx(e, abs=1e-12)
    assert per["f2"] == [2.0, 2.0, None, None]


def test_judge_weight_zero_keeps_failed_judgements_and_masks_rows_with_no_value():
    funcs = RewardFuncs.build([_values(1.0, None, 0.25)], [2.0, 0.0])
    per = call_funcs(funcs, {"completions": ["x"] * 3}, 3, run_async=None)
    got = combine(funcs, [None, 0.9, None], per, finished=[True] * 3, missing_eos_penalty=0.0)
    assert got == [2.0, None, 0.5]  # judge ignored; row 1 has no applicable component: masked, never 0


def test_len_funcs_weights_give_the_judge_weight_one_as_trl_users_expect():
    funcs = RewardFuncs.build([_values(1.0)], [0.25])
    assert funcs.judge_weight == 1.0
    assert combine(funcs, [0.5], call_funcs(funcs, {"completions": ["a"]}, 1, None), finished=[True],
                   missing_eos_penalty=0.0) == [0.75]


def test_without_reward_funcs_the_judge_reward_is_unchanged():
    judged = [0.3, None, 0.7]
    finished = [True, True, False]
    got = combine(None, judged, {}, finished=finished, missing_eos_penalty=0.2)
    old = [stages.combine_reward(j, None, rule_weight=0.5, finished=f, missing_eos_penalty=0.2)
           for j, f in zip(judged, finished)]
    assert got == old


@pytest.mark.parametrize("weights, match", [
    ([1.0, 2.0, 3.0], "3 values for 1 reward functions"),
    ([float("inf")], "finite"),
])
def test_bad_weights_name_the_fix(weights, match):
    with pytest.raises(RewardFuncError, match=match):
        RewardFuncs.build([length_reward], weights)


def test_duplicate_names_and_weights_without_funcs_are_refused():
    with pytest.raises(RewardFuncError, match="share a name"):
        RewardFuncs.build([length_reward, length_reward])
    with pytest.raises(RewardFuncError, match="without reward_funcs"):
        RewardFuncs.build([], [1.0])
    assert RewardFuncs.build(None) is None


def test_import_paths_load_and_bad_ones_say_how_to_fix():
    assert load_reward_func("tests.trainer.test_reward_funcs:length_reward") is length_reward
    funcs = RewardFuncs.build(["tests.trainer.test_reward_funcs:length_reward"])
    assert funcs.funcs == (length_reward,)
    with pytest.raises(RewardFuncError, match="package.module:function"):
        load_reward_func("tests.trainer.test_reward_funcs.length_reward")
    with pytest.raises(RewardFuncError, match="cannot import module"):
        load_reward_func("no_such_module_xyz:f")
    with pytest.raises(RewardFuncError, match="has no attribute"):
        load_reward_func("tests.trainer.test_reward_funcs:nope")
    with pytest.raises(ConfigError, match="package.module:function"):
        MPOConfig.from_dict({"reward": {"funcs": ["mymod.f"]}})
    with pytest.raises(ConfigError, match="2 values for 0 reward.funcs"):
        MPOConfig.from_dict({"reward": {"weights": [1.0, 2.0]}})


def test_kwargs_carry_dataset_columns_and_functions_get_what_they_name():
    examples = [TaskExample("a", "p1", reference="r1", meta={"topic": "cats"}),
                TaskExample("b", "p2", meta={"topic": "dogs", "extra": 1})]
    kwargs = func_kwargs(examples, ["out1", "out2"], [[5, 6], [7]])
    assert kwargs["prompts"] == ["p1", "p2"] and kwargs["completions"] == ["out1", "out2"]
    assert kwargs["completion_ids"] == [[5, 6], [7]]
    assert kwargs["reference"] == ["r1", None] and kwargs["topic"] == ["cats", "dogs"] and kwargs["extra"] == [None, 1]

    def by_topic(completions, topic):  # no **kwargs: gets only what it names
        return [1.0 if t == "cats" else 0.0 for t in topic]

    def needs_answer(completions, answer):
        return [0.0] * len(completions)

    funcs = RewardFuncs.build([by_topic])
    assert call_funcs(funcs, kwargs, 2, None) == {"by_topic": [1.0, 0.0]}
    with pytest.raises(RewardFuncError, match=r"needs \['answer'\]"):
        call_funcs(RewardFuncs.build([needs_answer]), kwargs, 2, None)


def test_bad_return_values_are_errors():
    for out, match in (([1.0], "returned 1 values for 2"), (3.0, "must return a list"), (["x", 1.0], "rewards are floats")):
        with pytest.raises(RewardFuncError, match=match):
            call_funcs(RewardFuncs.build([_values(*out) if isinstance(out, list) else (lambda **k: out)]),
                       {"completions": ["a", "b"]}, 2, None)


def test_async_reward_functions_are_awaited():
    import asyncio

    async def slow(completions, **kwargs):
        await asyncio.sleep(0)
        return [0.5 for _ in completions]

    funcs = RewardFuncs.build([slow])
    loop = asyncio.new_event_loop()
    try:
        assert call_funcs(funcs, {"completions": ["a"]}, 1, loop.run_until_complete) == {"slow": [0.5]}
    finally:
        loop.close()


def test_metrics_use_trl_names_over_applicable_samples():
    m = func_metrics({"fmt": [1.0, None, 0.0]}, prefix="eval/")
    assert m == {"eval/rewards/fmt/mean": 0.5, "eval/rewards/fmt/std": 0.5}
    assert func_metrics({"fmt": [None]})["rewards/fmt/mean"] is None
    assert not math.isnan(func_metrics({"x": [2.0]})["rewards/x/std"])


def test_import_paths_find_modules_in_the_working_directory_as_python_m_does(tmp_path, monkeypatch):
    import sys

    (tmp_path / "my_rewards_cwd_case.py").write_text("def fmt(completions, **kw):\n    return [1.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_rewards_cwd_case", raising=False)
    f = load_reward_func("my_rewards_cwd_case:fmt")
    assert f(completions=["a", "b"]) == [1.0, 1.0]
    assert str(tmp_path) not in sys.path  # the search path is left as it was


def test_the_cli_checks_reward_funcs_before_loading_any_model():
    from mpo_fast.trainer.build import check_inputs

    with pytest.raises(ConfigError, match="reward.funcs: .*cannot import module 'no_such_reward_mod'"):
        check_inputs(MPOConfig.from_dict({"reward": {"funcs": ["no_such_reward_mod:f"]}, "task": {"limit": 2}}))
    check_inputs(MPOConfig.from_dict({"reward": {"funcs": ["tests.trainer.test_reward_funcs:length_reward"]},
                                      "task": {"limit": 2}}))


def test_columns_named_like_our_arguments_do_not_override_them():
    from mpo_fast.trainer.data import as_examples

    ex = as_examples([{"prompt": "plain", "messages": "a column", "completion_ids": "x", "completion": "gold"}])
    assert ex[0].messages is None  # a 'messages' column is a column, not a conversation
    kwargs = func_kwargs(ex, ["out"], [[1, 2]])
    assert kwargs["completion_ids"] == [[1, 2]] and kwargs["messages"] == ["a column"] and "completion" not in kwargs


def test_a_reward_model_module_is_refused_with_the_fix():
    import torch

    with pytest.raises(RewardFuncError, match="wrap it in a function"):
        RewardFuncs.build([torch.nn.Linear(2, 1)])
