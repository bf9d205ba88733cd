"""The rubric quality gates through the trainer, on the serial and the overlapped schedule: a real
MetaJudge over a scripted MRM whose refinements alternate between a nonsense replacement ("The One
Ring" story items) and a good refinement (the current rubric plus one criterion). The nonsense is
refused with its reason every time; the good refinement is installed; no stored version loses the
initial rubric."""
from __future__ import annotations

import json
import re

from mpo_fast.judges import MetaJudge, MetaSettings
from mpo_fast.judges.meta_gates import RELEVANCE_HEADER
from mpo_fast.judges.meta_merge import MERGE_HEADER
from mpo_fast.rubrics import RubricStore
from mpo_fast.trainer import MPOTrainer
from mpo_fast.trainer.report import summarise_run
from mpo_fast.trainer.run_log import read_jsonl
from tests.judges.fakes import ScriptedLLM
from tests.tiny_models import tiny_causal_lm
from tests.trainer.conftest import PROMPTS, tiny_config
from tests.trainer.fakes import ShortEssayTask, SyntheticJudge

RING = [{"title": "The One Ring", "description": "A magical artifact used by a noble family to control the land.", "max_points": 8},
        {"title": "The City", "description": "A city built on a terrible waste of earth, abandoned for long.", "max_points": 10}]
# distinct criteria (distinct words: the gates match rewordings by word overlap)
NEW = [("Concision", "No filler sentences; every sentence adds something."),
       ("Evidence", "Claims are backed by a concrete example or fact."),
       ("Voice", "A consistent tone that suits the reader.")]
_LINE = re.compile(r"^\d+\. \*\*(.+?)\*\* \(0-(\d+) points\): (.*)$", re.M)


def _current(text: str) -> list[dict]:
    section = text.split("# Current rubric\n", 1)[1].split("\n\n#", 1)[0]
    return [{"title": t, "description": d, "max_points": int(p)} for t, p, d in _LINE.findall(section)]


class AlternatingMRM:
    def __init__(self):
        self.refines = 0
        self.llm = ScriptedLLM(respond=self.respond)

    def respond(self, messages, call):
        text = messages[-1]["content"]
        if RELEVANCE_HEADER in text:
            bad = "ring" in text.lower().split("<criterion>")[1] or "city" in text.lower().split("<criterion>")[1]
            return json.dumps({"reason": "story content" if bad else "writing quality", "relevant": "no" if bad else "yes"})
        if call["constraint"] is None:
            return "Too lenient on padding."
        current = _current(text)
        extra = NEW[len(current) % len(NEW)]
        good = current + [{"title": extra[0], "description": extra[1], "max_points": 2}]
        if MERGE_HEADER in text:
            return json.dumps({"items": good})
        self.refines += 1
        return json.dumps({"items": RING if self.refines % 2 else good})


def _trainer(root, tokenizer, **cfg):
    return MPOTrainer(
        tiny_causal_lm(tokenizer, seed=0), args=tiny_config(root, **cfg), train_dataset=PROMPTS,
        judge=SyntheticJudge(), meta_judge=MetaJudge(AlternatingMRM().llm, MetaSettings(num_samples=4)),
        processing_class=tokenizer, task=ShortEssayTask(),
    )


def _check_store(root, initial_titles):
    versions = RubricStore(root / "run" / "rubrics").versions()
    assert len(versions) >= 2, "the good refinement should have been installed"
    for v in versions:
        titles = {i.title for i in v.rubric.items}
        assert initial_titles <= titles, f"rubric v{v.version} lost initial criteria"
        assert not titles & {"The One Ring", "The City"}
    assert versions[-1].rubric.items[-1].title in {t for t, _ in NEW}


def _check_item_stats(root):
    """Per-item score mean/std per step, one entry per item of the rubric that scored the step."""
    store = RubricStore(root / "run" / "rubrics")
    rows = read_jsonl(root / "run" / "metrics.jsonl")
    for r in rows:
        k = len(store.get(r["rubric_version"]).rubric.items)
        assert len(r["item_score_mean"]) == k and len(r["item_score_std"]) == k
        assert all(m is not None and m >= 0 for m in r["item_score_mean"])


def test_gates_through_the_serial_trainer(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, train={"max_steps": 5})
    trainer.train()
    initial = {i.title for i in ShortEssayTask().initial_rubric().items}
    _check_store(tmp_path, initial)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    evolved = [r for r in rows if r.get("meta_calls") is not None]
    assert [r["step"] for r in evolved] == [2, 4]
    for r in evolved:  # 4 refinements, 2 of them nonsense: 2 refusals, each with its reason
        assert r["meta_rejections"] == 2 and r["rubric_evolved"] is not None
        assert all(n["gate"] == "conservation" and "removes" in n["reason"] for n in r["meta_gate_notes"])
    _check_item_stats(tmp_path)
    notes = summarise_run(tmp_path / "run").gate_notes
    assert [n["step"] for n in notes] == [2, 2, 4, 4]


def test_gates_through_the_overlapped_pipeline(tmp_path, tokenizer):
    fast = {"judge_timeout_s": 10.0, "stall_timeout_s": 30.0, "shutdown_timeout_s": 5.0}
    trainer = _trainer(tmp_path, tokenizer, train={"max_steps": 6},
                       pipeline={"mode": "overlapped", "max_staleness": 1, "rubric_swap": "next_step", **fast})
    trainer.train()
    _check_store(tmp_path, {i.title for i in ShortEssayTask().initial_rubric().items})
    _check_item_stats(tmp_path)
    notes = summarise_run(tmp_path / "run").gate_notes
    assert notes and all(n["gate"] == "conservation" and "removes" in n["reason"] for n in notes)
