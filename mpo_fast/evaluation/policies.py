"""Which policies an evaluation compares: `base` (the run's starting model) or a run directory's
checkpoint (`RUN_DIR`, `RUN_DIR:step-N`, `RUN_DIR:N`; default: its newest checkpoint).

Each policy gets a stable id, `base:<model>` or `<run dir name>:step-000012`, which names it in
the results and keys the cached generations and verdicts: a different checkpoint never reuses
another's judgements.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..trainer.checkpoint import list_checkpoints
from ..trainer.config import MPOConfig
from ..trainer.run_log import CONFIG_FILE

_STEP = re.compile(r"^(?:step-)?(\d+)$")


@dataclass(frozen=True)
class PolicySpec:
    label: str  # the id: "base:embedded", "run-mpo:step-000012"
    model_name: str  # the base model (config.model.name_or_path)
    checkpoint: Path | None = None  # None: the base model itself
    peft: bool = False

    def to_dict(self) -> dict:
        return {"id": self.label, "model": self.model_name,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None, "lora": self.peft}


def run_config(run_dir: str | os.PathLike[str]) -> MPOConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {CONFIG_FILE}; pass the output_dir of a run (mpo-fast train writes it)")
    return MPOConfig.from_yaml(path)


def checkpoint_of(run_dir: str | os.PathLike[str], step: str | None) -> tuple[int, Path]:
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (checkpoints/step-*); train with log.save_steps > 0 "
                                "or let the run finish")
    if step is None:
        return found[-1]
    match = _STEP.match(step)
    if match is None:
        raise ValueError(f"checkpoint {step!r} is not step-N or N")
    wanted = int(match.group(1))
    for number, path in found:
        if number == wanted:
            return number, path
    raise FileNotFoundError(f"{run_dir} has no checkpoint of step {wanted}; it has steps {[n for n, _ in found]}")


def resolve_policy(spec: str, *, base_run: str | os.PathLike[str], checkpoint: str | None = None) -> PolicySpec:
    """`base` (the model base_run started from) or RUN_DIR[:step-N]."""
    if spec == "base":
        model = run_config(base_run).model.name_or_path
        return PolicySpec(label=f"base:{model}", model_name=model)
    run_dir, _, step = spec.partition(":")
    if step and checkpoint:
        raise ValueError(f"{spec!r} names a checkpoint and --checkpoint names another; give one")
    config = run_config(run_dir)
    number, path = checkpoint_of(run_dir, step or checkpoint)
    state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    return PolicySpec(label=f"{Path(run_dir).resolve().name}:step-{number:06d}", model_name=config.model.name_or_path,
                      checkpoint=path, peft=bool(state.get("peft")))


def load_policy_model(spec: PolicySpec, config: MPOConfig):
    """(model, tokenizer) in eval mode: the base model, with the checkpoint's adapter or weights."""
    from ..trainer.checkpoint import _load_model_weights
    from ..trainer.model_loading import load_causal_lm

    model, tokenizer = load_causal_lm(spec.model_name, dtype=config.model.dtype, device=config.model.device)
    if spec.checkpoint is not None:
        if spec.peft:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(spec.checkpoint / "model"))
        else:
            _load_model_weights(model, spec.checkpoint / "model")
    return model.eval().requires_grad_(False), tokenizer
