"""Math word and symbolic problems with a checked final answer in \\boxed{}."""

from __future__ import annotations

from typing import Any

from ..rubrics import RubricItem
from .base import Task
from .example import TaskExample
from .math_answers import answers_match, extract_boxed


class MathTask(Task):
    name = "math"
    data_file = "math.jsonl"
    requires_reference = True
    system_prompt = (
        "You solve math problems carefully. Reason step by step, check your result, and give the final "
        "answer exactly once as \\boxed{...}. Give exact answers: integers, or fractions in lowest terms "
        "such as \\frac{3}{4}, unless the problem asks for a decimal."
    )
    judge_context = (
        "The response solves the math problem shown. It should reason step by step and give its final "
        "answer once as \\boxed{...}. The reference answer is shown for checking: a response whose boxed "
        "answer differs from it is incorrect, however good the rest looks. Judge the reasoning as well as "
        "the answer."
    )

    def format_prompt(self, example: TaskExample) -> str:
        return f"Solve the problem. Show your reasoning, then give the final answer as \\boxed{{...}}.\n\n{example.prompt}"

    def normalise_reference(self, reference: Any, where: str) -> str | None:
        """Accept a full worked solution (as in the MATH dataset): its last \\boxed{} is the answer."""
        text = super().normalise_reference(reference, where)
        if text is not None and ("\\boxed" in text or "\\fbox" in text):
            boxed = extract_boxed(text)
            if boxed is None:
                raise ValueError(f"{where}: the reference contains \\boxed but no complete \\boxed{{...}}; fix the row")
            return boxed
        return text

    def rule_reward(self, example: TaskExample, response: str) -> float | None:
        """1.0 when the last \\boxed{} equals the reference answer, else 0.0 (no box is 0.0)."""
        if example.reference is None:
            return None
        boxed = extract_boxed(response)
        return 1.0 if boxed is not None and answers_match(boxed, example.reference) else 0.0

    def initial_rubric_items(self) -> tuple[RubricItem, ...]:
        return (
            RubricItem(
                "Correct final answer",
                "The boxed final answer equals the reference answer (equivalent forms such as 3/4 and 0.75 "
                "count). A wrong, missing or unboxed answer earns 0.",
                5,
            ),
            RubricItem(
                "Valid steps",
                "Every step follows from the previous ones: no arithmetic or algebra errors, even ones that "
                "happen to cancel out, and no unjustified claims.",
                5,
            ),
            RubricItem(
                "Complete reasoning",
                "Shows the steps a reader needs to follow the solution from the problem to the answer; no "
                "unexplained jumps and no answer stated without work.",
                3,
            ),
            RubricItem(
                "Checks the result",
                "Verifies the answer, for example by substitution, an estimate or a units check, and the "
                "check is actually carried out.",
                2,
            ),
            RubricItem(
                "Clear presentation",
                "Concise and easy to follow, with one final \\boxed{} answer; no rambling, restarts or "
                "contradictory answers.",
                2,
            ),
        )
