"""Summarising a short document (bills, notices, reports, news) in a few sentences."""

from __future__ import annotations

from ..rubrics import RubricItem
from .base import Task
from .example import TaskExample

MAX_WORDS = 60


class SummarizationTask(Task):
    name = "summarization"
    data_file = "summaries.jsonl"
    system_prompt = (
        "You write accurate, concise summaries. Summarise only what the document says, keep the facts "
        "that matter to a reader (who, what, amounts, dates, conditions), and never add information "
        f"that is not in the document. Use at most {MAX_WORDS} words of plain prose."
    )
    judge_context = (
        "The response is a summary of the document shown in the prompt. The writer was asked for an "
        f"accurate summary of at most {MAX_WORDS} words, in prose, containing only information from the "
        "document. A reference summary may be shown: use it as a guide to what matters, not as the "
        "only acceptable wording."
    )

    def format_prompt(self, example: TaskExample) -> str:
        return (
            f"Summarise the following document in at most {MAX_WORDS} words.\n\n"
            f"Document:\n{example.prompt}"
        )

    def initial_rubric_items(self) -> tuple[RubricItem, ...]:
        return (
            RubricItem(
                "Faithful to the document",
                "Every statement can be checked against the document. Any invented or altered fact, "
                "number, date, name or condition earns 0 on this item.",
                5,
            ),
            RubricItem(
                "Covers what matters",
                "States the document's main purpose or event and the specifics a reader needs to act on "
                "it: who is affected, amounts, dates and deadlines, key conditions.",
                5,
            ),
            RubricItem(
                "Concise",
                f"At most {MAX_WORDS} words, with no repetition, minor details, padding or commentary on "
                "the document. Over the limit earns at most 1.",
                4,
            ),
            RubricItem(
                "Reads on its own",
                "Fluent, self-contained prose that a reader who never saw the document understands; no "
                "fragments copied out of context, no references to 'the document' in place of content.",
                3,
            ),
        )
