import pytest

from mpo_fast.rubrics import Rubric
from mpo_fast.tasks import TASKS, get_task
from mpo_fast.tasks.example import TaskExample


def test_registry():
    assert sorted(TASKS) == ["essay", "ethics", "math", "summarization"]
    assert get_task("essay") is not get_task("essay")  # fresh instances: options never leak
    with pytest.raises(ValueError, match=r"unknown task 'poetry'; choose one of \['essay'"):
        get_task("poetry")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_initial_rubric_and_messages(name):
    task = get_task(name)
    rubric = task.initial_rubric()
    assert isinstance(rubric, Rubric) and rubric.task == name and rubric.context == task.judge_context
    assert 3 <= len(rubric.items) <= 8 and all(item.description for item in rubric.items)
    assert rubric.content_hash == task.initial_rubric().content_hash  # deterministic
    example = task.load(limit=1)[0]
    messages = task.build_messages(example)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == task.system_prompt
    assert example.prompt in messages[1]["content"]
    # The policy never sees the answer or label: dropping them changes nothing it is shown.
    assert task.build_messages(TaskExample(example.id, example.prompt)) == messages


def test_templates_carry_the_task_instructions():
    example = TaskExample("x", "PROMPT TEXT")
    assert "at most 350 words" in get_task("essay").build_messages(example)[1]["content"]
    assert "at most 60 words" in get_task("summarization").build_messages(example)[1]["content"]
    assert "<verdict>RIGHT</verdict>" in get_task("ethics").build_messages(example)[1]["content"]
    assert "\\boxed{...}" in get_task("math").build_messages(example)[1]["content"]
    assert "<verdict>WRONG</verdict>" in get_task("ethics").system_prompt
