"""Tasks: essay, summarization, ethics and math, with prompts, data loaders and initial rubrics."""

from .base import Task
from .essay import EssayTask
from .ethics import EthicsTask, read_verdicts
from .example import TaskExample
from .math_answers import answers_match, extract_boxed, normalise_answer, parse_number
from .math_problems import MathTask
from .registry import TASKS, get_task
from .summarization import SummarizationTask

__all__ = [
    "TASKS",
    "EssayTask",
    "EthicsTask",
    "MathTask",
    "SummarizationTask",
    "Task",
    "TaskExample",
    "answers_match",
    "extract_boxed",
    "get_task",
    "normalise_answer",
    "parse_number",
    "read_verdicts",
]
