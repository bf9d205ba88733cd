"""JudgeSettings: how a reward model scores, with one source of defaults for the trainer's config."""
from __future__ import annotations

from dataclasses import dataclass

from .types import CallMode, ScoringMode


@dataclass(frozen=True)
class JudgeSettings:
    """How a judge scores; one source of defaults for the trainer's config.

    scoring: "parse", "constrained" or "expected" (ScoringMode).
    call_mode: "per_item" or "all_items" (CallMode).
    temperature: sampling temperature of the judge's text (0 = greedy, as the reference's ~0).
    max_new_tokens: budget of a free-text answer (parse mode, chat-logprob expected mode).
    min_rationale_chars / max_rationale_chars: bounds of the justification; in constrained mode
        they are enforced by the grammar (600 characters ~ 150 tokens, about the reference's
        300-token cap for rationale plus score).
    rationale_tokens: expected mode's budget for the justification before the score is read.
    min_score_mass: expected mode: if the judge puts less probability than this on all allowed
        scores together, it was not about to write a score: the item fails (MISSING). 0.05:
        0.01 accepted a score built from 1% of the probability. Measured on the embedded
        SmolLM2-135M, nonce'd prefilled tags, all_items (the first item is always the least sure):
        demo settings (3-item demo rubric, 16 rationale tokens, 8 essays): min 0.105, p10 0.119,
        median 0.890, so the demo passes with 2x margin; 3 items / 48 rationale tokens: min 0.061;
        the 6-item essay rubric with 60 rationale tokens (`--op judge_modes --quick`): min 0.013,
        3 of 4 judgements fail: a 135M judge is not sure of a score there, and the run now says so.
        Not yet measured on a served 7B.
    max_unresolved_share: chat-logprob expected mode: a server's top-k shows only the sampled
        path, so after a sampled "7" the mass on "1" (which may become 1 or 10) cannot be
        resolved. Left out, it biases the score by up to share x the item's range; above this
        share of (resolved + unresolved) mass the item fails (MISSING, error "unresolved_mass").
        0.05: at most 0.5 points on a 0-10 item.
    parse_retries: extra attempts for items whose text did not parse (parse mode), sampled at
        `retry_temperature` so the retry can differ from a greedy first answer.
    """

    scoring: ScoringMode | str = ScoringMode.PARSE
    call_mode: CallMode | str = CallMode.ALL_ITEMS
    temperature: float = 0.0
    max_new_tokens: int = 512
    min_rationale_chars: int = 1
    max_rationale_chars: int = 600
    rationale_tokens: int = 192
    min_score_mass: float = 0.05
    max_unresolved_share: float = 0.05
    parse_retries: int = 1
    retry_temperature: float = 0.7

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "scoring", ScoringMode(self.scoring))
        except ValueError:
            raise ValueError(f"JudgeSettings.scoring={self.scoring!r}; expected one of {[m.value for m in ScoringMode]}") from None
        try:
            object.__setattr__(self, "call_mode", CallMode(self.call_mode))
        except ValueError:
            raise ValueError(f"JudgeSettings.call_mode={self.call_mode!r}; expected one of {[m.value for m in CallMode]}") from None
        if not 0.0 <= self.temperature <= 5.0 or not 0.0 <= self.retry_temperature <= 5.0:
            raise ValueError("JudgeSettings temperatures must be in [0, 5]")
        if not 0 <= self.min_rationale_chars <= self.max_rationale_chars:
            raise ValueError("JudgeSettings needs 0 <= min_rationale_chars <= max_rationale_chars")
        if self.max_new_tokens < 1 or self.rationale_tokens < 1 or self.parse_retries < 0:
            raise ValueError("JudgeSettings needs max_new_tokens >= 1, rationale_tokens >= 1, parse_retries >= 0")
        if not 0.0 <= self.min_score_mass < 1.0:
            raise ValueError(f"JudgeSettings.min_score_mass={self.min_score_mass}; expected a probability in [0, 1)")
        if not 0.0 <= self.max_unresolved_share <= 1.0:
            raise ValueError(f"JudgeSettings.max_unresolved_share={self.max_unresolved_share}; expected a share in [0, 1]")

    @property
    def mode_name(self) -> str:
        return f"{self.scoring.value}/{self.call_mode.value}"
