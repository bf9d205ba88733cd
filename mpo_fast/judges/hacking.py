"""Reward-hacking signals that can trigger the MPO step early.

A policy exploiting a fixed rubric shows up in cheap batch statistics before a person reads a
sample: responses collapsing in length (the reference's "expert" rubric drove essays to ~10
words), or the mean reward saturating while the judge's justifications shorten (the judge has
stopped finding anything to say). The detector is a small pure class: the trainer feeds it one
observation per step and calls the MPO step when it returns signals.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class HackingSignal:
    name: str  # "length_collapse" | "reward_saturation"
    step: int
    detail: str


@dataclass
class _Observation:
    step: int
    length: float
    reward: float | None
    rationale: float | None


@dataclass
class HackingDetector:
    """Compares a recent window of batch means with a baseline taken after each rubric change.

    baseline_steps: observations that form the baseline (median, robust to one odd batch).
    window: recent observations averaged before comparing (one noisy batch never fires).
    length_drop: fire "length_collapse" when recent mean response length < length_drop x baseline.
    saturation: fire "reward_saturation" when recent mean reward (in [0, 1]) >= saturation while
        the judge's rationales shrink below rationale_drop x their baseline length.
    cooldown_steps: quiet period after a signal (the trainer runs MPO and calls `rebaseline`).
    """

    baseline_steps: int = 5
    window: int = 3
    length_drop: float = 0.5
    saturation: float = 0.9
    rationale_drop: float = 0.6
    cooldown_steps: int = 10
    _history: list[_Observation] = field(default_factory=list, repr=False)
    _quiet_until: int = field(default=-1, repr=False)

    def __post_init__(self) -> None:
        if self.baseline_steps < 1 or self.window < 1 or self.cooldown_steps < 0:
            raise ValueError("HackingDetector needs baseline_steps >= 1, window >= 1, cooldown_steps >= 0")
        if not (0 < self.length_drop < 1 and 0 < self.saturation <= 1 and 0 < self.rationale_drop < 1):
            raise ValueError("HackingDetector ratios: 0 < length_drop < 1, 0 < saturation <= 1, 0 < rationale_drop < 1")

    def rebaseline(self) -> None:
        """Forget the history (call after the rubric changes: the old baseline no longer applies)."""
        self._history.clear()

    def observe(
        self,
        step: int,
        response_lengths: Sequence[float],
        rewards: Sequence[float | None],
        rationale_lengths: Sequence[float] = (),
    ) -> list[HackingSignal]:
        """Record one training step's batch; return the signals that fire now (maybe none).

        response_lengths: tokens (or characters) per response; rewards: normalised rewards, None
        for failed judgements (ignored); rationale_lengths: characters of the judge's texts.
        """
        if not response_lengths:
            raise ValueError("observe needs at least one response length")
        valid = [r for r in rewards if r is not None]
        self._history.append(_Observation(
            step,
            statistics.fmean(response_lengths),
            statistics.fmean(valid) if valid else None,
            statistics.fmean(rationale_lengths) if rationale_lengths else None,
        ))
        if len(self._history) < self.baseline_steps + self.window or step <= self._quiet_until:
            return []
        base = self._history[: self.baseline_steps]
        recent = self._history[-self.window:]
        signals = []
        base_len = statistics.median(o.length for o in base)
        recent_len = statistics.fmean(o.length for o in recent)
        if base_len > 0 and recent_len < self.length_drop * base_len:
            signals.append(HackingSignal(
                "length_collapse", step,
                f"mean response length {recent_len:.1f} over the last {self.window} steps is below "
                f"{self.length_drop:g} x the baseline {base_len:.1f}",
            ))
        rewards_recent = [o.reward for o in recent if o.reward is not None]
        rat_base = [o.rationale for o in base if o.rationale is not None]
        rat_recent = [o.rationale for o in recent if o.rationale is not None]
        if rewards_recent and rat_base and rat_recent:
            mean_reward = statistics.fmean(rewards_recent)
            base_rat = statistics.median(rat_base)
            mean_rat = statistics.fmean(rat_recent)
            if mean_reward >= self.saturation and base_rat > 0 and mean_rat < self.rationale_drop * base_rat:
                signals.append(HackingSignal(
                    "reward_saturation", step,
                    f"mean reward {mean_reward:.3f} >= {self.saturation:g} while judge rationales shrank to "
                    f"{mean_rat:.0f} chars from a baseline of {base_rat:.0f}",
                ))
        if signals:
            self._quiet_until = step + self.cooldown_steps
        return signals
