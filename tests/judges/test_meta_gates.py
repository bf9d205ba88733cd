"""A real MetaJudge over a scripted MRM: a good refinement is installed, a nonsense one is refused
with its reason, paraphrased duplicates are merged into one item; the MRM merge stage and the
relevance / discriminativeness gates (the scorer is a real RubricJudge over a scripted RM)."""
import asyncio
import json
import logging
import re

from mpo_fast.judges import JudgeSettings, MetaJudge, MetaSample, MetaSettings, RubricJudge
from mpo_fast.judges.meta_gates import RELEVANCE_HEADER, read_relevance
from mpo_fast.judges.meta_merge import MERGE_HEADER
from mpo_fast.rubrics import GateSettings, Rubric, RubricItem
from tests.judges.fakes import ScriptedLLM, response_of, score_names, tags

INITIAL = Rubric(task="essay", context="Short essays.", items=(
    RubricItem("Prompt adherence", "Answers the prompt that was asked.", 4),
    RubricItem("Clarity", "Clear prose, easy to follow.", 3),
    RubricItem("Depth", "Develops ideas with examples.", 3),
))
KEEP = [{"title": i.title, "description": i.description, "max_points": int(i.max_points)} for i in INITIAL.items]
CONCISION = {"title": "Concision", "description": "No filler sentences; every sentence adds something.", "max_points": 2}
BREVITY = {"title": "Brevity", "description": "Avoids padding: no sentence repeats an earlier one.", "max_points": 2}
RING = {"title": "The One Ring", "description": "A magical artifact used by a noble family to control the land.", "max_points": 8}
CITY = {"title": "The City", "description": "A city built on a terrible waste of earth, abandoned for long.", "max_points": 10}


def _samples(n=4):
    # responses of different lengths and rewards, so a length-sensitive item has spread
    return [MetaSample(prompt=f"Write about topic {i}.", response="word " * (5 + 10 * i),
                       item_scores=(1.0 + i % 3, 1.0 + i % 2, 1.0), reward=(3.0 + i % 3 + i % 2) / 10) for i in range(n)]


class MRM:
    """Answers each MRM stage from a script: analyses, one proposal per refine call (in order),
    the merge answer, and a relevance verdict per criterion."""

    def __init__(self, proposals, merged=None, irrelevant=("ring", "city")):
        self.proposals = iter(proposals)
        self.merged = merged
        self.irrelevant = irrelevant
        self.merge_prompts = []
        self.relevance_asked = []
        self.llm = ScriptedLLM(respond=self.respond)

    def respond(self, messages, call):
        text = messages[-1]["content"]
        if MERGE_HEADER in text:
            assert call["temperature"] == 0.0 and call["constraint"] is not None
            self.merge_prompts.append(text)
            return json.dumps({"items": self.merged}) if self.merged is not None else "no idea"
        if RELEVANCE_HEADER in text:
            assert call["temperature"] == 0.0 and call["constraint"].json_schema["properties"]["relevant"]["enum"] == ["yes", "no"]
            criterion = re.search(r"<criterion>\n(.*?)\n</criterion>", text, re.S).group(1)
            self.relevance_asked.append(criterion.split(":")[0])
            bad = any(w in criterion.lower() for w in self.irrelevant)
            return json.dumps({"reason": "about one story's content" if bad else "judges writing quality",
                               "relevant": "no" if bad else "yes"})
        if call["constraint"] is None:
            return "The rubric rewards padding; add a criterion on concision."
        return json.dumps({"items": next(self.proposals)})


def _rm(item_score):
    """A RubricJudge over a scripted RM: item_score(title, response) -> int, per rubric line."""
    def respond(messages, call):
        names = score_names(messages)
        titles = re.findall(r"^\d+\. \*\*(.+?)\*\*", messages[-1]["content"], re.M)
        return tags(names, [item_score(t, response_of(messages)) for t in titles])
    return RubricJudge(ScriptedLLM(respond=respond), JudgeSettings(scoring="parse"))


def _evolve(mrm, *, scorer=None, rubric=INITIAL, n=2, samples=None, gates=GateSettings()):
    meta = MetaJudge(mrm.llm, MetaSettings(num_samples=n, gates=gates), scorer=scorer, initial_rubric=INITIAL)
    return asyncio.run(meta.evolve(rubric, samples or _samples(), step=10))


def test_good_refinement_is_installed():
    reworded = dict(KEEP[1], description="Clear prose, easy to follow; no jargon left unexplained.")
    proposal = [KEEP[0], reworded, KEEP[2], CONCISION]
    mrm = MRM([proposal, proposal], merged=proposal)
    scorer = _rm(lambda title, response: min(2, len(response.split()) // 10))
    evo = _evolve(mrm, scorer=scorer)
    assert evo.changed and evo.merged_by == "mrm"
    assert [i.title for i in evo.rubric.items] == ["Prompt adherence", "Clarity", "Depth", "Concision"]
    assert evo.rubric.items[1].description == reworded["description"]
    assert sorted(mrm.relevance_asked) == ["Clarity", "Concision"]  # the new and the reworded item
    assert [r for r in evo.rejections if r.action != "flagged"] == []


def test_nonsense_replacement_is_rejected_with_its_reason(caplog):
    mrm = MRM([[RING, CITY], [RING, CITY]], merged=[RING, CITY])
    with caplog.at_level(logging.WARNING, logger="mpo_fast"):
        evo = _evolve(mrm)
    assert not evo.changed and evo.rubric == INITIAL
    assert [(r.gate, r.action) for r in evo.rejections] == [("conservation", "rejected")] * 2
    assert "removes 3 of 3 items" in evo.rejections[0].reason
    assert "removes 3 of 3 items" in caplog.text and "rubric" in caplog.text
    assert mrm.merge_prompts == []  # nothing reached the merge


def test_story_items_added_to_a_kept_rubric_fail_relevance():
    proposal = KEEP + [RING]
    mrm = MRM([proposal, proposal], merged=proposal)
    evo = _evolve(mrm)
    assert not evo.changed and evo.rubric == INITIAL
    assert [(r.gate, r.item, r.action) for r in evo.rejections] == [("relevance", "The One Ring", "rejected")]
    assert evo.rejections[0].reason == "about one story's content"


def test_story_rewording_of_a_kept_item_is_reverted():
    proposal = [KEEP[0], dict(KEEP[1], description="The City: a city built on a terrible waste of earth."), KEEP[2], CONCISION]
    mrm = MRM([proposal], merged=proposal)
    evo = _evolve(mrm, n=1)
    assert evo.changed
    assert evo.rubric.items[1] == INITIAL.items[1] and evo.rubric.items[3].title == "Concision"
    assert [(r.gate, r.item, r.action) for r in evo.rejections] == [("relevance", "Clarity", "reverted")]


def test_paraphrased_duplicates_are_merged_into_one_item():
    merged = KEEP + [{"title": "Concision", "max_points": 2,
                      "description": "No filler or padding: every sentence adds something new."}]
    mrm = MRM([KEEP + [CONCISION], KEEP + [BREVITY]], merged=merged)
    evo = _evolve(mrm)
    assert evo.changed and evo.merged_by == "mrm"
    assert [i.title for i in evo.rubric.items] == ["Prompt adherence", "Clarity", "Depth", "Concision"]
    # the MRM saw both paraphrases, in canonical order (same prompt whatever order refine finished in)
    (prompt,) = mrm.merge_prompts
    assert "**Concision**" in prompt and "**Brevity**" in prompt
    mrm2 = MRM([KEEP + [BREVITY], KEEP + [CONCISION]], merged=merged)
    evo2 = _evolve(mrm2)
    assert mrm2.merge_prompts == mrm.merge_prompts and evo2.rubric.content_hash == evo.rubric.content_hash
    # the deterministic merge alone keeps both paraphrases: this is what the MRM stage is for
    mrm3 = MRM([KEEP + [CONCISION], KEEP + [BREVITY]])
    evo3 = _evolve(mrm3)
    assert evo3.merged_by == "deterministic" and {"Concision", "Brevity"} <= {i.title for i in evo3.rubric.items}
    assert [f.stage for f in evo3.failures] == ["merge"]


def test_mrm_merge_output_is_canonicalised_and_a_destructive_merge_falls_back():
    # the MRM lists the new item first and the current ones shuffled: canonical order restores them
    shuffled = [CONCISION, KEEP[2], KEEP[0], KEEP[1]]
    mrm = MRM([KEEP + [CONCISION]], merged=shuffled)
    evo = _evolve(mrm, n=1)
    assert [i.title for i in evo.rubric.items] == ["Prompt adherence", "Clarity", "Depth", "Concision"]
    # a merge answer that drops the rubric is refused; the proposals are merged deterministically
    mrm = MRM([KEEP + [CONCISION]], merged=[RING])
    evo = _evolve(mrm, n=1)
    assert evo.merged_by == "deterministic" and evo.changed
    assert [i.title for i in evo.rubric.items] == ["Prompt adherence", "Clarity", "Depth", "Concision"]
    assert [(r.gate, r.action) for r in evo.rejections] == [("merge", "fallback")]


def test_items_without_spread_are_dropped_by_the_discriminativeness_gate():
    flat = {"title": "Has a title", "description": "The essay has a title line at the top.", "max_points": 2}
    proposal = KEEP + [CONCISION, flat]
    mrm = MRM([proposal] * 4, merged=proposal)
    # the RM gives "Has a title" 1 on every sample; Concision varies with length
    scorer = _rm(lambda title, response: 1 if title == "Has a title" else min(2, len(response.split()) // 10))
    evo = _evolve(mrm, scorer=scorer, n=4)
    assert evo.changed and [i.title for i in evo.rubric.items][-1] == "Concision"
    dropped = [r for r in evo.rejections if r.action == "rejected"]
    assert [(r.gate, r.item) for r in dropped] == [("discriminativeness", "Has a title")]
    assert "do not vary" in dropped[0].reason
    # with too few scored samples the gate says it did not check, and drops nothing
    evo = _evolve(MRM([proposal] * 2, merged=proposal), scorer=scorer, n=2, samples=_samples(2))
    assert {i.title for i in evo.rubric.items} >= {"Concision", "Has a title"}
    assert all(r.action == "flagged" and "not checked" in r.reason for r in evo.rejections)


def test_relevance_answers_are_read_as_json_never_evaluated():
    assert read_relevance('{"reason": "ok", "relevant": "yes"}') == (True, "ok")
    assert read_relevance('{"reason": "story", "relevant": "no"}') == (False, "story")
    assert read_relevance("yes")[0] is None and read_relevance('{"relevant": "maybe"}')[0] is None
    # an unreadable verdict keeps the item out of the reward
    proposal = KEEP + [CONCISION]
    mrm = MRM([proposal], merged=proposal)
    mrm.llm.respond = lambda m, c: "__import__('os')" if RELEVANCE_HEADER in m[-1]["content"] else mrm.respond(m, c)
    evo = _evolve(mrm, n=1)
    assert not evo.changed and "unreadable" in evo.rejections[0].reason


def test_the_mrm_sees_the_reference_answer():
    proposal = KEEP + [CONCISION]
    mrm = MRM([proposal], merged=proposal)
    samples = [MetaSample(prompt="What is 2+2?", response="5", item_scores=(1.0, 1.0, 1.0), reward=0.3, reference="4")]
    _evolve(mrm, n=1, samples=samples)
    analyze = [m for kind, m, c in mrm.llm.log if c["constraint"] is None]
    refine = [m for kind, m, c in mrm.llm.log if "# Audit of one graded sample" in m[-1]["content"]]
    assert "<reference>\n4\n</reference>" in analyze[0][-1]["content"] and "<reference>\n4\n</reference>" in refine[0][-1]["content"]
    assert "<reference>\n4\n</reference>" in mrm.merge_prompts[0]


def test_edit_refine_keeps_every_item_by_construction():
    from mpo_fast.judges.meta_edit import EDIT_HEADER

    def respond(messages, call):
        text = messages[-1]["content"]
        if EDIT_HEADER in text:
            schema = call["constraint"].json_schema
            assert schema["required"] == ["item_1", "item_2", "item_3", "new_items"]
            assert schema["properties"]["new_items"]["maxItems"] == 2
            return json.dumps({"item_1": {"description": "Answers exactly the prompt asked, to the end.", "max_points": 4},
                               "item_2": {"description": "", "max_points": 3},  # empty: the current text stays
                               "item_3": {"description": "Develops ideas with concrete examples.", "max_points": 3},
                               "new_items": [CONCISION, RING]})
        return mrm.respond(messages, call)

    mrm = MRM([], merged=None)
    mrm.llm.respond = respond
    meta = MetaJudge(mrm.llm, MetaSettings(num_samples=1, refine="edit", mrm_merge=False), initial_rubric=INITIAL)
    evo = asyncio.run(meta.evolve(INITIAL, _samples(1), step=3))
    assert evo.changed
    assert [i.title for i in evo.rubric.items] == ["Prompt adherence", "Clarity", "Depth", "Concision"]
    assert evo.rubric.items[0].description == "Answers exactly the prompt asked, to the end."
    assert evo.rubric.items[1] == INITIAL.items[1]
    assert [(r.gate, r.item) for r in evo.rejections] == [("relevance", "The One Ring")]
    # an answer that is not the edit object is a refine failure, the rubric kept
    mrm.llm.respond = lambda m, c: "[1, 2]" if EDIT_HEADER in m[-1]["content"] else mrm.respond(m, c)
    evo = asyncio.run(meta.evolve(INITIAL, _samples(1), step=4))
    assert not evo.changed and [f.stage for f in evo.failures] == ["refine"]


def test_a_rewording_that_quotes_a_sample_is_reverted_and_its_reweighting_kept():
    story = "The old house, once owned by a wealthy family, now resides in a small town by the sea."
    quoting = dict(KEEP[0], description="The old house, once owned by a wealthy family, now resides here.", max_points=6)
    proposal = [quoting, KEEP[1], KEEP[2]]
    mrm = MRM([proposal], merged=proposal, irrelevant=())  # the MRM's own relevance check says yes
    samples = [MetaSample(prompt="Write about a house.", response=story, item_scores=(1.0, 1.0, 1.0), reward=0.3)]
    evo = _evolve(mrm, n=1, samples=samples)
    assert evo.changed and evo.rubric.items[0].description == INITIAL.items[0].description
    assert evo.rubric.items[0].max_points == 6
    assert [(r.gate, r.action) for r in evo.rejections] == [("relevance", "reverted")]
    assert "quotes an analysed sample" in evo.rejections[0].reason
    assert mrm.relevance_asked == []  # refused before any model call


def test_edit_answers_repeating_one_description_keep_every_item():
    from mpo_fast.judges.meta_edit import read_edit

    same = "Clear and well written, with good ideas."
    text = json.dumps({"item_1": {"description": same, "max_points": 4}, "item_2": {"description": same, "max_points": 2},
                       "item_3": {"description": same + " ", "max_points": 3},
                       "new_items": [{"title": "Style", "description": same, "max_points": 2}, CONCISION]})
    from mpo_fast.rubrics import ProposalLimits

    out = read_edit(text, INITIAL, ProposalLimits())
    assert [i.title for i in out.items] == ["Prompt adherence", "Clarity", "Depth", "Concision"]
    assert [i.description for i in out.items[:3]] == [same, INITIAL.items[1].description, INITIAL.items[2].description]
    assert out.items[1].max_points == 2  # the points of a repeated revision still count
