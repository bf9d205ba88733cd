import json
import sys
import types

import pytest

from mpo_fast.tasks import TASKS, TaskExample, get_task


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name", sorted(TASKS))
def test_shipped_data_loads_for_each_split(name):
    task = get_task(name)
    train, test = task.load(), task.load(split="test")
    everything = task.load(split=None)
    assert train and test and len(train) + len(test) == len(everything)
    assert not {e.id for e in train} & {e.id for e in test}
    assert all(isinstance(e, TaskExample) and e.prompt for e in everything)
    assert "split" not in everything[0].meta
    assert len(task.load(limit=3)) == 3
    with pytest.raises(ValueError, match=r"no rows with split 'dev'; available splits: \['test', 'train'\]"):
        task.load(split="dev")


def test_local_jsonl_with_field_map_and_meta(tmp_path):
    path = write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"question": "Compute 2 + 2.", "solution": "2 + 2 = \\boxed{4}", "level": 1, "split": "train"},
            {"question": "Compute 3 + 3.", "solution": "6", "level": 2, "split": "test"},
        ],
    )
    task = get_task("math")
    train = task.load(path, field_map={"prompt": "question", "reference": "solution"})
    assert train == [TaskExample("math-0", "Compute 2 + 2.", reference="4")]  # boxed answer extracted
    assert train[0].meta == {"level": 1}
    test = task.load(str(path), split="test", field_map={"prompt": "question", "reference": "solution"})
    assert [e.id for e in test] == ["math-1"] and test[0].reference == "6"


def test_file_without_split_column_is_training_data(tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl", [{"id": "a", "prompt": "Write about rain."}, {"prompt": "Write about sun."}])
    task = get_task("essay")
    assert [e.id for e in task.load(path)] == ["a", "essay-1"]
    assert len(task.load(path, split=None)) == 2
    with pytest.raises(ValueError, match="no 'split' column.*pass split=None"):
        task.load(path, split="test")


def test_json_array_and_parquet(tmp_path):
    rows = [{"id": i, "prompt": f"Situation {i}.", "label": lab} for i, lab in enumerate(["right", "WRONG "])]
    array = tmp_path / "rows.json"
    array.write_text(json.dumps(rows))
    task = get_task("ethics")
    loaded = task.load(array)
    assert [(e.id, e.label) for e in loaded] == [("0", "RIGHT"), ("1", "WRONG")]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    assert task.load(parquet) == loaded


def test_missing_file_and_bad_rows_raise_clear_errors(tmp_path):
    task = get_task("summarization")
    with pytest.raises(FileNotFoundError, match="does not exist; check the path"):
        task.load(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        task.load(str(tmp_path / "nope.parquet"))
    with pytest.raises(ValueError, match="not a supported file"):
        task.load(tmp_path / "data.csv")
    with pytest.raises(FileNotFoundError, match="neither an existing"):
        task.load("not a valid name!")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        task.load(bad_json)
    no_prompt = write_jsonl(tmp_path / "np.jsonl", [{"text": "a document"}])
    with pytest.raises(ValueError, match=r"column 'prompt' \(the prompt\) is missing.*field_map=\{'prompt'"):
        task.load(no_prompt)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="holds no rows"):
        task.load(empty)
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}])
    with pytest.raises(ValueError, match="id 'x' appears in rows 0 and 1"):
        task.load(dup)
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "a", "split": "train"}, {"prompt": "b"}])
    with pytest.raises(ValueError, match="row 1 has no 'split' field"):
        task.load(mixed)
    with pytest.raises(ValueError, match="field_map key 'text'"):
        task.load(no_prompt, field_map={"text": "prompt"})
    with pytest.raises(ValueError, match="limit"):
        task.load(limit=0)


def test_task_specific_validation(tmp_path):
    labels = write_jsonl(tmp_path / "labels.jsonl", [{"prompt": "s", "label": "AUTHOR"}])
    with pytest.raises(ValueError, match="ethics label is 'AUTHOR'; it must be RIGHT"):
        get_task("ethics").load(labels)
    no_ref = write_jsonl(tmp_path / "noref.jsonl", [{"prompt": "Compute 1 + 1."}])
    with pytest.raises(ValueError, match="needs a reference answer"):
        get_task("math").load(no_ref)
    broken_box = write_jsonl(tmp_path / "box.jsonl", [{"prompt": "p", "reference": "so \\boxed{4"}])
    with pytest.raises(ValueError, match="no complete"):
        get_task("math").load(broken_box)


def test_hugging_face_source_uses_datasets(monkeypatch):
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return [{"problem": "What is 1 + 1?", "solution": "\\boxed{2}"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    examples = get_task("math").load(
        "someone/math-set", split="test", hf_config="algebra", field_map={"prompt": "problem", "reference": "solution"}
    )
    assert calls == [("someone/math-set", "algebra", "test")]
    assert examples == [TaskExample("math-0", "What is 1 + 1?", reference="2")]


def test_hugging_face_errors_are_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match="pip install datasets"):
        get_task("essay").load("someone/prompts")

    def failing(name, config, split):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=failing))
    with pytest.raises(RuntimeError, match="could not load Hugging Face dataset 'someone/prompts'.*no network"):
        get_task("essay").load("someone/prompts")


def test_parquet_without_pyarrow_names_the_fix(tmp_path, monkeypatch):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        get_task("essay").load(path)
