"""LocalJudge: the reward model as an in-process transformers model (the demo's judge)."""
from __future__ import annotations

from .cache import JudgeCache
from .judge import RubricJudge
from .local_llm import LocalLLM
from .settings import JudgeSettings


class LocalJudge(RubricJudge):
    """Judges with a causal LM loaded in this process; calls are batched into few `generate` calls.

    backend: the `expected_score` op's backend ("auto": Triton on CUDA logits, torch on CPU).
    """

    def __init__(
        self,
        model,
        tokenizer,
        settings: JudgeSettings | None = None,
        *,
        cache: JudgeCache | None = None,
        max_batch_size: int = 16,
        backend: str = "auto",
        name: str | None = None,
    ):
        super().__init__(LocalLLM(model, tokenizer, max_batch_size=max_batch_size, backend=backend, name=name), settings, cache=cache)

    @classmethod
    def embedded(cls, settings: JudgeSettings | None = None, **kwargs) -> "LocalJudge":
        """A judge on the embedded SmolLM2-135M-Instruct (see mpo_fast/models/embedded.py).

        At 135M the model does not follow output formats (0 of 8 free-text answers parsed, see
        SMALL_JUDGES.md): use scoring="expected" or "constrained" with it.
        """
        from ..models.embedded import load_embedded

        model, tokenizer = load_embedded()
        return cls(model, tokenizer, settings, name=kwargs.pop("name", "SmolLM2-135M-Instruct"), **kwargs)
