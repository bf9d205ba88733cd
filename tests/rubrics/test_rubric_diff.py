from mpo_fast.rubrics import Rubric, RubricItem, diff_rubrics


def rubric(items, context="ctx", task="essay"):
    return Rubric(task, context, [RubricItem(t, d, p) for t, d, p in items])


OLD = rubric([("Clarity", "Clear prose.", 5), ("Evidence", "Claims supported.", 4), ("Length", "Short.", 2)])


def test_identical_rubrics():
    text = diff_rubrics(OLD, OLD, label_a="v1", label_b="v1")
    assert text.splitlines()[-1] == "(no differences)"


def test_added_removed_changed_moved():
    new = rubric(
        [
            ("Evidence", "Claims supported.", 6),
            ("clarity", "Clear, precise prose.", 5),
            ("Originality", "A fresh angle.", 3),
        ],
        context="new ctx",
    )
    lines = diff_rubrics(OLD, new, label_a="v1", label_b="v2").splitlines()
    assert lines[0] == f"--- v1 {OLD.content_hash} (3 items, 11 points)"
    assert lines[1] == f"+++ v2 {new.content_hash} (3 items, 14 points)"
    assert "~ context:" in lines and "    - ctx" in lines and "    + new ctx" in lines
    assert "- [2 pts] Length: Short." in lines
    assert "+ [3 pts] Originality: A fresh angle." in lines
    assert any(line.startswith("~ [4 pts -> 6 pts] Evidence") for line in lines)
    changed = next(line for line in lines if line.startswith("~ [5 pts] clarity"))
    assert "renamed from 'Clarity'" in changed
    # Two items swapped places: one of them is reported as moved (the other keeps its order).
    assert sum("moved" in line for line in lines) == 1
    at = lines.index(changed)
    assert lines[at + 1 : at + 3] == ["    - Clear prose.", "    + Clear, precise prose."]
    assert not any(line.startswith("=") for line in lines)


def test_unchanged_count_and_task_change():
    new = Rubric("summary", OLD.context, OLD.items[:2])
    lines = diff_rubrics(OLD, new).splitlines()
    assert "~ task: 'essay' -> 'summary'" in lines
    assert "= 2 items unchanged" in lines
    assert "- [2 pts] Length: Short." in lines
