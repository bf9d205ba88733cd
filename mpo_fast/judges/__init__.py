"""Reward model (RM) and meta-reward model (MRM): LocalJudge, OpenAIJudge, MetaJudge.

Scoring modes (issue 8): parse, constrained, expected; call modes: per_item, all_items. See
mpo_fast/judges/judge.py for the RM, meta.py for the MRM, and hacking.py for the signals that
can trigger the MRM early.
"""
from ..http_client import EndpointConfig, EndpointError
from .cache import JudgeCache, judgement_key
from .constrained import Constraint
from .expected import ChoiceDistribution, ScoreChoices
from .hacking import HackingDetector, HackingSignal
from .judge import RubricJudge

from .llm import LLM, Generation
from .local import LocalJudge
from .local_llm import LocalLLM
from .meta import Evolution, MetaFailure, MetaJudge, MetaSample, MetaSettings, prescreen
from .openai import OpenAIJudge
from .openai_llm import ChatRenderer, OpenAICompatibleLLM
from .settings import JudgeSettings
from .types import CallMode, Judgement, JudgeRequest, JudgeStats, ScoringMode, judgement_metrics

__all__ = [
    "CallMode",
    "ChatRenderer",
    "ChoiceDistribution",
    "Constraint",
    "EndpointConfig",
    "EndpointError",
    "Evolution",
    "Generation",
    "HackingDetector",
    "HackingSignal",
    "JudgeCache",
    "JudgeRequest",
    "JudgeSettings",
    "JudgeStats",
    "Judgement",
    "LLM",
    "LocalJudge",
    "LocalLLM",
    "MetaFailure",
    "MetaJudge",
    "MetaSample",
    "MetaSettings",
    "OpenAICompatibleLLM",
    "OpenAIJudge",
    "RubricJudge",
    "ScoreChoices",
    "ScoringMode",
    "judgement_key",
    "judgement_metrics",
    "prescreen",
]
