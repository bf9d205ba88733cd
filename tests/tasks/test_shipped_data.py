import collections
import json
from importlib import resources

from mpo_fast.rubrics import normalise_text
from mpo_fast.tasks import get_task
from mpo_fast.tasks.generate_math import generate, to_jsonl

DATA = resources.files("mpo_fast.tasks").joinpath("data")


def rows(name):
    return [json.loads(line) for line in DATA.joinpath(name).read_text(encoding="utf-8").splitlines()]


def test_sizes_and_counts():
    total = sum(len(DATA.joinpath(n).read_bytes()) for n in ("essay_prompts.jsonl", "summaries.jsonl", "ethics.jsonl", "math.jsonl"))
    assert total < 1_000_000
    assert len(get_task("essay").load(split=None)) >= 120
    assert len(get_task("summarization").load(split=None)) >= 50
    assert len(get_task("ethics").load(split=None)) >= 60
    assert len(get_task("math").load(split=None)) >= 200


def test_no_duplicates_and_unique_ids():
    for name in ("essay", "summarization", "ethics", "math"):
        examples = get_task(name).load(split=None)
        keys = [normalise_text(e.prompt) for e in examples]
        assert len(set(keys)) == len(keys), name
        assert len({e.id for e in examples}) == len(examples), name


def test_every_row_has_a_split_and_test_is_a_fifth_to_a_sixth():
    for name in ("essay_prompts.jsonl", "summaries.jsonl", "ethics.jsonl", "math.jsonl"):
        splits = collections.Counter(r["split"] for r in rows(name))
        assert set(splits) == {"train", "test"}, name
        assert 0.14 <= splits["test"] / sum(splits.values()) <= 0.25, (name, splits)


def test_ethics_labels_balanced_in_each_split():
    for split in ("train", "test"):
        labels = collections.Counter(e.label for e in get_task("ethics").load(split=split))
        assert set(labels) == {"RIGHT", "WRONG"}
        assert abs(labels["RIGHT"] - labels["WRONG"]) <= 0.1 * sum(labels.values())


def test_documents_and_summaries_have_sensible_lengths():
    for example in get_task("summarization").load(split=None):
        doc_words, summary_words = len(example.prompt.split()), len(example.reference.split())
        assert 80 <= doc_words <= 200, example.id
        assert 15 <= summary_words <= 60 and summary_words < doc_words / 2, example.id


def test_essay_prompts_are_varied():
    kinds = collections.Counter(e.meta["kind"] for e in get_task("essay").load(split=None))
    assert set(kinds) == {"story", "argument", "reflection"} and min(kinds.values()) >= 30


def test_math_file_is_exactly_the_generator_output():
    # use_sympy=False: the rows are identical, only the optional cross-check is skipped (~3 s).
    assert DATA.joinpath("math.jsonl").read_text(encoding="utf-8") == to_jsonl(generate(use_sympy=False))
    kinds = collections.Counter(r["meta"]["kind"] for r in rows("math.jsonl"))
    assert len(kinds) >= 5
