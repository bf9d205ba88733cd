import json

import pytest

from mpo_fast.rubrics import Rubric, RubricItem, load_rubric, save_rubric_file

YAML_TEXT = """\
task: essay
context: Short essays of at most 350 words.
items:
  - title: Clarity
    description: Clear, precise prose.
    max_points: 5
  - title: Evidence
    description: Claims are supported.
    max_points: 3
"""


def test_load_yaml_and_json(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(YAML_TEXT)
    rubric = load_rubric(path)
    assert [i.title for i in rubric.items] == ["Clarity", "Evidence"] and rubric.max_total == 8
    json_path = tmp_path / "r.json"
    json_path.write_text(json.dumps(rubric.to_dict()))
    assert load_rubric(json_path).content_hash == rubric.content_hash


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_then_load_round_trips(tmp_path, suffix):
    rubric = Rubric("math", "ctx: with colon", [RubricItem("Steps – valid", "Ünïcode ok.", 2.5)])
    path = tmp_path / f"out{suffix}"
    save_rubric_file(rubric, path)
    assert load_rubric(path) == rubric


def test_file_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; check the path"):
        load_rubric(tmp_path / "missing.yaml")
    no_items = tmp_path / "empty_items.yaml"
    no_items.write_text("task: essay\ncontext: x\nitems: []\n")
    with pytest.raises(ValueError, match=r"empty_items.yaml has no items; add an 'items:' list"):
        load_rubric(no_items)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_rubric(empty)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_rubric(bad)
    wrong_suffix = tmp_path / "r.txt"
    wrong_suffix.write_text(YAML_TEXT)
    with pytest.raises(ValueError, match="use .yaml, .yml or .json"):
        load_rubric(wrong_suffix)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_rubric(listing)


def test_task_argument_fills_in_and_guards(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(YAML_TEXT)
    with pytest.raises(ValueError, match="is for task 'essay' but the run's task is 'math'"):
        load_rubric(path, task="math")
    untitled = tmp_path / "untasked.yaml"
    untitled.write_text(YAML_TEXT.replace("task: essay\n", ""))
    assert load_rubric(untitled, task="summarization").task == "summarization"


def test_yaml_cannot_run_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("task: !!python/object/apply:os.system ['echo hacked']\nitems: []\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_rubric(path)
