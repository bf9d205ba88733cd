"""Rubrics: the criteria a judge scores against, their versions on disk, merge and diff."""

from .diff import diff_rubrics
from .gates import GateRejection, GateSettings
from .merge import merge_rubrics
from .model import Rubric, RubricItem
from .proposal import ProposalLimits, normalise_proposal
from .rubric_file import load_rubric, save_rubric_file
from .store import RubricNotFoundError, RubricStore, RubricStoreError, RubricVersion
from .text_key import normalise_text

__all__ = [
    "GateRejection",
    "GateSettings",
    "ProposalLimits",
    "Rubric",
    "RubricItem",
    "RubricNotFoundError",
    "RubricStore",
    "RubricStoreError",
    "RubricVersion",
    "diff_rubrics",
    "load_rubric",
    "merge_rubrics",
    "normalise_proposal",
    "normalise_text",
    "save_rubric_file",
]
