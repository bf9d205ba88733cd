"""Accuracy of tasks with a right answer, read with the task's own checker: math (the last
\\boxed{} against the reference, mpo_fast/tasks/math_answers.py) and ethics (the verdict tag
against the label, mpo_fast/tasks/ethics.py). A response without a readable answer is wrong, as
a grader would count it; how many had none is reported beside the accuracy."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..tasks.example import TaskExample
from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, Estimate, mean_with_ci


@dataclass(frozen=True)
class AccuracyResult:
    accuracy: Estimate
    correct: int
    total: int
    unanswered: int  # no boxed answer / no single clear verdict

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy.to_dict(), "correct": self.correct, "total": self.total,
                "unanswered": self.unanswered}


def math_correct(examples: Sequence[TaskExample], responses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    from ..tasks.math_answers import answers_match, extract_boxed

    correct, answered = [], []
    for example, response in zip(examples, responses, strict=True):
        boxed = extract_boxed(response)
        answered.append(boxed is not None)
        correct.append(boxed is not None and example.reference is not None and answers_match(boxed, example.reference))
    return np.array(correct, dtype=np.float64), np.array(answered, dtype=bool)


def ethics_correct(examples: Sequence[TaskExample], responses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    from ..tasks.ethics import read_verdicts

    verdicts = read_verdicts(list(responses))
    correct = [v is not None and v == e.label for e, v in zip(examples, verdicts, strict=True)]
    return np.array(correct, dtype=np.float64), np.array([v is not None for v in verdicts], dtype=bool)


CHECKERS = {"math": math_correct, "ethics": ethics_correct}


def accuracy(task: str, examples: Sequence[TaskExample], responses: Sequence[str], *,
             resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> AccuracyResult:
    try:
        checker = CHECKERS[task]
    except KeyError:
        raise ValueError(f"task {task!r} has no answer checker; accuracy is for {sorted(CHECKERS)}") from None
    if not examples:
        raise ValueError("accuracy of zero examples; evaluate at least one")
    correct, answered = checker(examples, responses)
    return AccuracyResult(mean_with_ci(correct, resamples=resamples, seed=seed), int(correct.sum()), len(examples),
                          int((~answered).sum()))
