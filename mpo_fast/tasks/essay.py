"""Essay writing from a short prompt (writing-prompts style), at most 350 words."""

from __future__ import annotations

from ..rubrics import RubricItem
from .base import Task
from .example import TaskExample

MAX_WORDS = 350


class EssayTask(Task):
    name = "essay"
    data_file = "essay_prompts.jsonl"
    system_prompt = (
        "You are a skilled essayist. Write a focused, original essay that answers the prompt you are "
        f"given. Stay within {MAX_WORDS} words. Write in plain prose paragraphs: no title, no bullet "
        "lists, no notes about the instructions."
    )
    judge_context = (
        "The response is a short essay written for the prompt shown. The writer was asked for a focused, "
        f"original essay of at most {MAX_WORDS} words in prose paragraphs. Judge the essay the prompt "
        "asked for: substance, reasoning and writing quality, not length for its own sake and not "
        "agreement with any particular opinion."
    )

    def format_prompt(self, example: TaskExample) -> str:
        return f"Write an essay of at most {MAX_WORDS} words in response to this prompt.\n\nPrompt: {example.prompt}"

    def initial_rubric_items(self) -> tuple[RubricItem, ...]:
        return (
            RubricItem(
                "Answers the prompt",
                "Takes up the question or situation the prompt poses and stays with it to the end. An essay "
                "about a neighbouring topic, or one that restates the prompt without answering it, earns at "
                "most 1.",
                5,
            ),
            RubricItem(
                "Clear central idea",
                "A position, insight or story the reader can state in one sentence after reading, set up "
                "early and developed: each paragraph moves it forward instead of repeating it.",
                5,
            ),
            RubricItem(
                "Specific support",
                "Claims are backed by concrete examples, details, reasons or images that belong to this "
                "prompt. Generic statements that would fit any essay earn little.",
                5,
            ),
            RubricItem(
                "Organisation",
                "A purposeful opening, a body whose order makes sense, and an ending that lands; "
                "transitions show how each part connects to the last.",
                5,
            ),
            RubricItem(
                "Language",
                "Precise, varied and grammatical sentences in a consistent voice. Deduct for filler, "
                "cliches, repeated phrases, and headings or lists in place of prose.",
                5,
            ),
            RubricItem(
                "Uses the space well",
                f"Develops the idea fully within {MAX_WORDS} words. Over the limit earns 0; an essay too "
                "short to develop its idea (roughly under 150 words) earns at most 1.",
                5,
            ),
        )
