import json
import random

import numpy as np
import pytest
import torch

from mpo_fast.trainer import checkpoint as ckpt
from mpo_fast.trainer.run_log import Progress, RunLog, read_jsonl, truncate_jsonl
from tests.tiny_models import tiny_causal_lm
from tests.trainer.conftest import tiny_config


def _parts(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return opt, sched


def test_checkpoint_round_trip_restores_weights_optimizer_scheduler_and_rng(tmp_path, tokenizer):
    model = tiny_causal_lm(tokenizer, seed=0)
    opt, sched = _parts(model)
    model(torch.tensor([[5, 6, 7]])).logits.sum().backward()
    opt.step()
    sched.step()
    path = ckpt.save_checkpoint(tmp_path, 3, model=model, optimizer=opt, scheduler=sched, state={"note": "x"})
    assert path.name == "step-000003" and ckpt.latest_checkpoint(tmp_path) == path
    for pt in path.glob("*.pt"):  # nothing in a checkpoint needs unpickling of arbitrary objects
        torch.load(pt, weights_only=True)
    expected = (random.random(), np.random.rand(), torch.rand(1))

    other = tiny_causal_lm(tokenizer, seed=5)
    opt2, sched2 = _parts(other)
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    state = ckpt.load_checkpoint(path, model=other, optimizer=opt2, scheduler=sched2)
    assert state["note"] == "x" and state["step"] == 3
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    for (n, a), b in zip(model.named_parameters(), other.parameters()):
        assert torch.equal(a, b), n
    assert sched2.last_epoch == 1
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])


def test_partial_checkpoints_are_invisible_and_swept_and_old_ones_pruned(tmp_path, tokenizer):
    model = tiny_causal_lm(tokenizer)
    opt, sched = _parts(model)
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, model=model, optimizer=opt, scheduler=sched, state={}, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3]
    crashed = ckpt.checkpoints_dir(tmp_path) / ".tmp-step-000004-abc"
    crashed.mkdir()
    (crashed / "trainer_state.json").write_text("{}")
    incomplete = ckpt.checkpoints_dir(tmp_path) / "step-000005"
    incomplete.mkdir()  # no trainer_state.json: never renamed into place by us
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000003"
    ckpt.sweep_partial_checkpoints(tmp_path)
    assert not crashed.exists()


def test_resuming_lora_into_a_full_model_is_refused(tmp_path, tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_causal_lm(tokenizer), LoraConfig(r=2, target_modules=["q_proj"]))
    opt, sched = _parts(model)
    path = ckpt.save_checkpoint(tmp_path, 1, model=model, optimizer=opt, scheduler=sched, state={})
    assert (path / "model" / "adapter_model.safetensors").is_file()
    full = tiny_causal_lm(tokenizer)
    with pytest.raises(ckpt.CheckpointError, match="holds a LoRA adapter.*same lora settings"):
        ckpt.load_checkpoint(path, model=full, optimizer=_parts(full)[0], scheduler=_parts(full)[1])


def test_run_log_writes_truncates_on_resume_and_rejects_missing_reporters(tmp_path):
    cfg = tiny_config(tmp_path)
    log = RunLog(cfg)
    for step in (1, 2, 3):
        log.metrics({"step": step, "loss": float("nan") if step == 2 else 0.5, "signals": []})
        log.samples([{"step": step, "response": "r"}])
    log.close()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["loss"] for r in rows] == [0.5, None, 0.5]  # NaN written as null: strict JSON
    assert (tmp_path / "run" / "config.yaml").read_text().startswith("output_dir:")
    RunLog(cfg, resume_step=2).close()
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "samples.jsonl")] == [1, 2]
    with (tmp_path / "run" / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 3, "lo')  # torn by a crash
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    truncate_jsonl(tmp_path / "run" / "metrics.jsonl", 1)
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["step"] == 1

    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ImportError, match="pip install wandb"):
            RunLog(tiny_config(tmp_path, log={"report_to": ["wandb"]}))


def test_progress_prints_one_line_per_step_off_a_terminal(capsys):
    p = Progress(3, enabled=True)
    p.step({"step": 1, "rubric_version": 2, "reward_mean": 0.25, "loss": 0.1, "kl": 0.01,
            "response_length_mean": 40, "judge_failed": 1, "step_seconds": 2.5, "rubric_evolved": 3})
    p.close()
    err = capsys.readouterr().err
    assert "step 1 | rubric v2 | reward 0.250" in err and "fail 1" in err and "-> rubric v3" in err
