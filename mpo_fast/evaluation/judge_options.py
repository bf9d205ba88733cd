"""Which judge evaluates: named on the command line (`--judge.base_url URL` ...) or, by default,
the run's training judge, with a warning: a policy trained against a judge learns that judge's
tastes, so the same judge flatters it; a separate (ideally stronger) judge is the honest test."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields, replace

from ..trainer.config import MPOConfig

log = logging.getLogger("mpo_fast")

SEPARATE_JUDGE_WARNING = (
    "evaluating with the training judge: the policy was optimised against it, so its verdicts favour the trained "
    "policy. Name a separate evaluation judge with --judge.base_url URL --judge.model NAME (or --judge.model "
    "for a local model) for an honest comparison"
)


@dataclass(frozen=True)
class EvalJudgeOptions:
    """Every field None means "as the training judge". scoring: parse | constrained | expected."""

    backend: str | None = None  # local | openai
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    scoring: str | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None
    concurrency: int | None = None
    timeout_s: float | None = None

    @property
    def separate(self) -> bool:
        return self.model is not None or self.base_url is not None

    def resolved(self, config: MPOConfig) -> "EvalJudgeOptions":
        j = config.judge
        backend = self.backend or ("openai" if self.base_url else None) or j.backend
        same_judge = not self.separate
        if same_judge:
            log.warning(SEPARATE_JUDGE_WARNING)
        return replace(
            self,
            backend=backend,
            model=self.model or j.model,
            base_url=self.base_url or (j.base_url if same_judge else None),
            api_key_env=self.api_key_env or j.api_key_env,
            scoring=self.scoring or j.scoring,
            temperature=j.temperature if self.temperature is None else self.temperature,
            max_new_tokens=self.max_new_tokens or max(4 * j.max_rationale_tokens, 128),
            concurrency=self.concurrency or j.concurrency,
            timeout_s=self.timeout_s or j.timeout_s,
        )

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def build_eval_llm(options: EvalJudgeOptions, config: MPOConfig):
    """The judges' LLM for resolved options. A local judge named "policy" is the run's BASE model
    (the training judge's weights with the adapters off), never a trained checkpoint."""
    if options.backend == "openai":
        from ..judges.openai_llm import OpenAICompatibleLLM
        from ..trainer.build import _endpoint, check_endpoint

        if not options.base_url:
            raise ValueError("the evaluation judge is an OpenAI-compatible server but no URL is set; pass --judge.base_url")
        check_endpoint(options.base_url, options.api_key_env or "OPENAI_API_KEY", "judge server")
        return OpenAICompatibleLLM(_endpoint(options.base_url, options.model, options.api_key_env or "OPENAI_API_KEY",
                                             options.concurrency or 8, options.timeout_s or 120.0, 2))
    if options.backend != "local":
        raise ValueError(f"judge backend {options.backend!r}; choose local or openai")
    from ..judges.local_llm import LocalLLM
    from ..trainer.model_loading import load_causal_lm

    name = config.model.name_or_path if options.model == "policy" else options.model
    lm, tok = load_causal_lm(name, dtype=config.model.dtype, device=config.model.device)
    lm.eval().requires_grad_(False)
    return LocalLLM(lm, tok, name=name, max_batch_size=options.concurrency or 8)


def env_has_key(options: EvalJudgeOptions) -> bool:
    return bool(options.api_key_env and os.environ.get(options.api_key_env))
