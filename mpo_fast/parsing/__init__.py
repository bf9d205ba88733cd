"""Judge-score parsing: ScoreSpec (what a judge writes), parse_scores (read batches of judge text,
a status per score), and the token-id parser that reads scores on the GPU from generated ids.

The grammar shared by every implementation is the docstring of mpo_fast/parsing/spec.py.
"""
from .api import parse_scores, selected_text
from .spec import ParsedScores, ScoreSpec, ScoreStatus
from .tokens import ScoredAdvantages, TokenByteTable, parse_scores_and_advantages, parse_token_scores, token_byte_table

__all__ = [
    "ParsedScores",
    "ScoreSpec",
    "ScoreStatus",
    "ScoredAdvantages",
    "TokenByteTable",
    "parse_scores",
    "parse_scores_and_advantages",
    "parse_token_scores",
    "selected_text",
    "token_byte_table",
]
