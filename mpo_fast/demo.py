"""`mpo-fast demo`: MPO on the embedded SmolLM2-135M-Instruct, end to end on a CPU.

The model is loaded once and serves as the policy (with LoRA adapters), the reward model and
the meta-reward model (both the frozen base, adapters switched off): see configs/demo.yaml.
The run ends with a summary: reward per rubric version, the rubric diff, the best sample of the
first and the last step, the judge failure rate measured in the run and the wall time.
"""
from __future__ import annotations

import time
from importlib.resources import files
from typing import Sequence

DEMO_CONFIG = "demo.yaml"


def demo_config_path() -> str:
    return str(files("mpo_fast") / "configs" / DEMO_CONFIG)


def run_demo(overrides: Sequence[str] = ()):
    """Train with the demo config (plus overrides), print and return the RunSummary (also
    written to <output_dir>/summary.json). A re-run starts over in the demo's directory."""
    from .cli import run_config
    from .trainer.config import MPOConfig

    started = time.perf_counter()
    config = MPOConfig.from_yaml(demo_config_path(), ["overwrite=true", *overrides])
    return run_config(config, started=started)
