"""`mpo-fast` end to end on a tiny saved model: bad input fails before training with the fix
named; train runs with a real LocalJudge; rubric show/diff read the run directory."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from mpo_fast.cli import EXIT_BAD_INPUT, main
from tests.tiny_models import char_tokenizer, tiny_causal_lm


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only waits (see tests/trainer/conftest.py)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    tok = char_tokenizer()
    tiny_causal_lm(tok, seed=1).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _config(tmp_path, tiny_dir, **sections) -> str:
    data = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(tiny_dir)},
        "lora": {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "task": {"name": "essay", "limit": 4, "max_prompt_tokens": 4096},
        "rollout": {"prompts_per_step": 1, "num_generations": 2, "max_new_tokens": 6, "temperature": 1.0},
        # min_score_mass 0: the random tiny judge puts ~1.5% on the allowed scores (the 0.05 default rejects it).
        "judge": {"model": "policy", "scoring": "expected", "max_rationale_tokens": 4, "min_judged": 2, "min_score_mass": 0.0},
        "meta": {"enabled": False},
        "train": {"max_steps": 2, "kl_coef": 0.05},
        "log": {"save_steps": 1, "report_to": ["none"], "progress": False},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train.learnin_rate=1e-5"], "section 'train': unknown key(s) ['learnin_rate']; valid keys are"),
        (["task.data=/nonexistent/prompts.jsonl"], "task.data is '/nonexistent/prompts.jsonl', which does not exist"),
        (["judge.backend=openai", "judge.base_url=http://127.0.0.1:9/v1"], "unreachable"),
        (["judge.backend=openai"], "judge.base_url is not set"),
        (["model.name_or_path=/nonexistent/model"], "cannot load model '/nonexistent/model'"),
        (["pipeline.mode=overlapped"], "judge.model is 'policy': that judge shares the policy's weights"),
        (["pipeline.mode=overlapped", "pipeline.max_staleness=7"], "pipeline.max_staleness = 7: expected an integer in 0..4"),
        (["rollout.backend=remote", "rollout.base_url=http://127.0.0.1:9/v1"], "rollout server at http://127.0.0.1:9/v1"),
    ],
)
def test_bad_input_fails_before_training_naming_the_fix(tmp_path, tiny_dir, capsys, args, message):
    code = main(["train", "--config", _config(tmp_path, tiny_dir), *args])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert message in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_rubric_file_without_items_is_rejected(tmp_path, tiny_dir, capsys):
    rubric = tmp_path / "rubric.yaml"
    rubric.write_text("task: essay\ncontext: c\nitems: []\n")
    code = main(["train", "--config", _config(tmp_path, tiny_dir), f"task.rubric={rubric}"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "has no items" in err and "add an 'items:' list" in err


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err


def test_train_then_resume_then_rubric_commands(tmp_path, tiny_dir, capsys):
    config = _config(tmp_path, tiny_dir)
    assert main(["train", "--config", config]) == 0
    out = capsys.readouterr()
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["judge_mode"] == "expected/all_items" for s in samples)
    assert all(s["valid"] and 0.0 <= s["reward"] <= 1.0 for s in samples)  # expected mode never fails to parse
    assert (run / "judgements.jsonl").is_file() and (run / "summary.json").is_file()
    assert "Reward per rubric version" in out.out

    # the same command again refuses to overwrite; resume continues to the new max_steps
    assert main(["train", "--config", config]) == EXIT_BAD_INPUT
    assert "resume=true" in capsys.readouterr().err
    assert main(["train", "--config", config, "resume=true", "train.max_steps=3"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    capsys.readouterr()

    assert main(["rubric", "show", str(run)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("rubric v1 (") and "1. **Answers the prompt**" in shown
    assert main(["rubric", "diff", str(run)]) == 0
    assert "(no differences)" in capsys.readouterr().out
    assert main(["rubric", "show", str(run), "--version", "v9"]) == EXIT_BAD_INPUT


def test_rubric_show_of_a_file(tmp_path, capsys):
    from mpo_fast.rubrics import save_rubric_file
    from mpo_fast.tasks import get_task

    path = tmp_path / "r.yaml"
    save_rubric_file(get_task("math").initial_rubric(), path)
    assert main(["rubric", "show", str(path)]) == 0
    assert "task math" in capsys.readouterr().out


def test_train_overlapped_from_the_command_line_then_resume(tmp_path, tiny_dir, capsys):
    """pipeline.mode=overlapped through the CLI: a separate judge model, max_staleness=1, a summary
    line for the pipeline, and a resumed run that continues the same schedule."""
    config = _config(tmp_path, tiny_dir, judge={"model": str(tiny_dir)})
    overrides = ["pipeline.mode=overlapped", "pipeline.max_staleness=1", "pipeline.judge_timeout_s=60",
                 "pipeline.stall_timeout_s=120"]
    assert main(["train", "--config", config, *overrides]) == 0
    out = capsys.readouterr().out
    assert "overlapped, max_staleness 1:" in out
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["pipeline"] == "overlapped" and r["staleness"] <= 1 for r in rows)
    assert main(["train", "--config", config, *overrides, "resume=true", "train.max_steps=3"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]



def test_train_ppo_from_the_command_line(tmp_path, tiny_dir, capsys):
    # LoRA policy, its frozen base as judge and reference, PPO with the KL per token in the reward
    config = _config(tmp_path, tiny_dir)
    assert main(["train", "--config", config, "train.algorithm=ppo", "train.kl_in=reward"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("value_loss" in r and r["loss"] == r["loss"] for r in rows)
    capsys.readouterr()
    assert main(["train", "--config", config, "train.algorithm=ppo"]) == EXIT_BAD_INPUT  # KL in the loss
    assert "kl_in: reward" in capsys.readouterr().err
