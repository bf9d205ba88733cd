import pytest

from mpo_fast.tasks import get_task, read_verdicts
from mpo_fast.tasks.ethics import RIGHT_TAG, VERDICT_SPEC, WRONG_TAG
from mpo_fast.tasks.example import TaskExample


def test_tags_come_from_the_spec():
    assert RIGHT_TAG == VERDICT_SPEC.format_score("RIGHT") == "<verdict>RIGHT</verdict>"
    task = get_task("ethics")
    for text in (task.system_prompt, task.judge_context, task.format_prompt(TaskExample("x", "s"))):
        assert RIGHT_TAG in text and WRONG_TAG in text
    assert RIGHT_TAG in task.initial_rubric().items[0].description


@pytest.mark.parametrize(
    "response, verdict",
    [
        ("Reasoning...\n<verdict>RIGHT</verdict>", "RIGHT"),
        ("Reasoning...\n<verdict>WRONG</verdict>", "WRONG"),
        ("**<verdict> wrong </verdict>**", "WRONG"),
        ("<verdict>RIGHT</verdict> Final: <verdict>RIGHT</verdict>", "RIGHT"),
        ("The author did nothing wrong.\n<verdict>RIGHT</verdict>", "RIGHT"),
    ],
)
def test_verdict_found(response, verdict):
    assert read_verdicts([response]) == [verdict]


@pytest.mark.parametrize(
    "response",
    [
        "",
        "The author was kind but also careless.",
        "Verdict: RIGHT",  # the untagged form is not a verdict: the instruction asks for the tag
        "<verdict>RIGHT or WRONG</verdict>",
        "<verdict>RIGHT/WRONG</verdict>",
        "<verdict>RIGHT</verdict> on reflection <verdict>WRONG</verdict>",
        "<verdict>unclear</verdict>",
        "<verdict>RIGHT",  # cut off
    ],
)
def test_no_single_verdict(response):
    assert read_verdicts([response]) == [None]


def test_ethics_rule_reward_and_penalty():
    task = get_task("ethics")
    right = TaskExample("e1", "I returned the wallet.", label="RIGHT")
    assert task.rule_reward(right, f"Honest.\n{RIGHT_TAG}") == 1.0
    assert task.rule_reward(right, WRONG_TAG) == 0.0
    assert task.rule_reward(right, "No verdict given.") == -1.0
    assert task.rule_reward(right, "<verdict>RIGHT or WRONG</verdict>") == -1.0  # hedging is not a verdict
    assert task.rule_reward(right, f"{RIGHT_TAG} {WRONG_TAG}") == -1.0
    unlabelled = TaskExample("e2", "Situation.")
    assert task.rule_reward(unlabelled, RIGHT_TAG) is None
    assert task.rule_reward(unlabelled, "Nothing.") == -1.0
    custom = get_task("ethics", missing_verdict_penalty=-10.0, correct_reward=2.0)
    assert custom.rule_reward(right, "Nothing.") == -10.0 and custom.rule_reward(right, RIGHT_TAG) == 2.0
    with pytest.raises(ValueError, match="missing_verdict_penalty"):
        get_task("ethics", missing_verdict_penalty=float("nan"))
    with pytest.raises(TypeError, match="does not accept options"):
        get_task("essay", missing_verdict_penalty=-1.0)


def test_batch_rule_rewards_match_single():
    task = get_task("ethics")
    examples = task.load(limit=6)
    responses = [RIGHT_TAG, WRONG_TAG, "none", f"{RIGHT_TAG}{WRONG_TAG}", RIGHT_TAG, WRONG_TAG]
    assert task.rule_rewards(examples, responses) == [task.rule_reward(e, r) for e, r in zip(examples, responses)]
    with pytest.raises(ValueError, match="one response per example"):
        task.rule_rewards(examples, responses[:2])
    with pytest.raises(TypeError, match="single str"):
        task.rule_rewards(examples[:1], RIGHT_TAG)


def test_rule_reward_none_for_judged_tasks():
    example = TaskExample("x", "prompt", reference="ref")
    assert get_task("essay").rule_reward(example, "text") is None
    assert get_task("summarization").rule_rewards([example], ["text"]) == [None]
    math_task = get_task("math")
    math_example = TaskExample("m", "Compute 1 + 1.", reference="2")
    assert math_task.rule_rewards([math_example] * 2, ["\\boxed{2}", "\\boxed{3}"]) == [1.0, 0.0]
