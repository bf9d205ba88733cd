"""Pairwise judgements in both orders, combined per prompt, and the win/tie/loss statistics.

Each prompt gets two judge calls: policy A shown first, then policy B shown first. A verdict names
a position ("first" / "second"); mapped back to policies, two agreeing verdicts are a win or a
loss, two disagreeing ones a tie: a judge that always picks the first position then produces
only ties, never a win (that is what the swap neutralises). A failed call (no readable verdict)
makes the prompt a judge failure: counted and reported, left out of every rate, never a loss or
a tie.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Sequence

import numpy as np

from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, Estimate, bootstrap, weighted_mean


class Position(str, Enum):
    FIRST = "first"
    SECOND = "second"


class Outcome(str, Enum):
    """From policy A's side."""

    WIN = "win"
    TIE = "tie"
    LOSS = "loss"
    FAILED = "failed"


SCORE = {Outcome.WIN: 1.0, Outcome.TIE: 0.5, Outcome.LOSS: 0.0}


def combine(a_first: Position | None, b_first: Position | None) -> Outcome:
    """Outcome for A from the verdict with A shown first and the verdict with B shown first
    (None: that call failed)."""
    if a_first is None or b_first is None:
        return Outcome.FAILED
    a_won_first = Position(a_first) is Position.FIRST
    a_won_second = Position(b_first) is Position.SECOND
    if a_won_first and a_won_second:
        return Outcome.WIN
    if not a_won_first and not a_won_second:
        return Outcome.LOSS
    return Outcome.TIE


@dataclass(frozen=True)
class PairRecord:
    """One prompt's comparison of A and B: both verdicts and the response lengths (characters)."""

    prompt_id: str
    a_first: Position | None
    b_first: Position | None
    length_a: int
    length_b: int

    @property
    def outcome(self) -> Outcome:
        return combine(self.a_first, self.b_first)


@dataclass(frozen=True)
class PairwiseSummary:
    wins: int
    ties: int
    losses: int
    failures: int
    win_rate: Estimate  # (wins + ties / 2) / judged, from A's side
    decisive_win_rate: Estimate  # wins / (wins + losses): how often A wins when the judge is consistent
    position_bias: Estimate  # share of judged prompts whose two verdicts name the same position
    first_position_rate: float  # share of all readable verdicts that chose the first position

    @property
    def judged(self) -> int:
        return self.wins + self.ties + self.losses

    def to_dict(self) -> dict:
        return {"wins": self.wins, "ties": self.ties, "losses": self.losses, "judge_failures": self.failures,
                "judged": self.judged, "win_rate": self.win_rate.to_dict(),
                "decisive_win_rate": self.decisive_win_rate.to_dict(), "position_bias": self.position_bias.to_dict(),
                "first_position_rate": None if not np.isfinite(self.first_position_rate) else self.first_position_rate}


def scores_of(records: Sequence[PairRecord]) -> tuple[np.ndarray, np.ndarray]:
    """(per-prompt score for A in {1, 0.5, 0}, valid mask)."""
    outcomes = [r.outcome for r in records]
    valid = np.array([o is not Outcome.FAILED for o in outcomes], dtype=bool)
    scores = np.array([SCORE.get(o, 0.0) for o in outcomes], dtype=np.float64)
    return scores, valid


def summarise_pairs(records: Sequence[PairRecord], *, resamples: int = DEFAULT_RESAMPLES,
                    seed: int = DEFAULT_SEED) -> PairwiseSummary:
    if not records:
        raise ValueError("no pairs to summarise; evaluate at least one prompt")
    outcomes = [r.outcome for r in records]
    scores, valid = scores_of(records)
    n = len(records)
    decisive = valid & (scores != 0.5)
    same_position = np.array([o is Outcome.TIE for o in outcomes], dtype=np.float64)
    verdicts = [v for r in records for v in (r.a_first, r.b_first) if v is not None]
    first = sum(1 for v in verdicts if Position(v) is Position.FIRST)
    return PairwiseSummary(
        wins=outcomes.count(Outcome.WIN), ties=outcomes.count(Outcome.TIE), losses=outcomes.count(Outcome.LOSS),
        failures=outcomes.count(Outcome.FAILED),
        win_rate=bootstrap(weighted_mean(scores, valid), n, resamples=resamples, seed=seed),
        decisive_win_rate=bootstrap(weighted_mean(scores, decisive), n, resamples=resamples, seed=seed),
        # A tie is exactly "both verdicts named the same position" (see combine).
        position_bias=bootstrap(weighted_mean(same_position, valid), n, resamples=resamples, seed=seed),
        first_position_rate=first / len(verdicts) if verdicts else float("nan"),
    )
