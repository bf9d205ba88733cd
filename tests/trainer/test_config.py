import pytest

from mpo_fast.trainer.config import ConfigError, MPOConfig, apply_override


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = MPOConfig()
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert MPOConfig.from_yaml(path) == cfg


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 3.0e-6\n  max_steps: 7\nlora:\n  r: 8\n")
    cfg = MPOConfig.from_yaml(path, ["train.max_steps=9", "judge.scoring=constrained", "lora.target_modules=[q_proj, v_proj]",
                                     "train.learning_rate=1e-5", "task.limit=null", "log.report_to=none"])
    assert cfg.train.max_steps == 9
    assert cfg.train.learning_rate == pytest.approx(1e-5)  # YAML reads 1e-5 as text: coerced to float
    assert cfg.lora.r == 8 and cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.judge.scoring == "constrained" and cfg.task.limit is None and cfg.log.report_to == ["none"]


def test_unknown_keys_are_rejected_with_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learnin_rate'\].*valid keys are \[.*'learning_rate'"):
        MPOConfig.from_dict({"train": {"learnin_rate": 1e-5}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['trainer'\].*'train'"):
        MPOConfig.from_dict({"trainer": {}})
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: x\n")
    with pytest.raises(ConfigError, match=r"section 'model': unknown key\(s\) \['name'\]"):
        MPOConfig.from_yaml(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_steps=ten", "train.max_steps must be an integer"),
        ("train.max_steps=0", "train.max_steps is 0; it must be >= 1"),
        ("judge.scoring=freeform", "judge.scoring is 'freeform'; choose one of"),
        ("rollout.decode=fast", "rollout.decode is 'fast'; choose one of"),
        ("rollout.cache=paged", "rollout.cache is 'paged'; choose one of"),
        ("rollout.num_generations=1", "need at least 2 samples per prompt"),
        ("rollout.temperature=0", "greedy"),
        ("lora.enabled=false", "judge would drift"),
        ("judge.backend=openai", "judge.base_url is not set"),
        ("resume=maybe", "resume must be true or false"),
        ("train.learning_rate=-1", "learning_rate"),
        ("trainmax_steps=3", "unknown key"),
        ("noequals", "is not key=value"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(tmp_path, override, message):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    with pytest.raises(ConfigError, match=message):
        MPOConfig.from_yaml(path, [override])


def test_rollout_compile_needs_the_static_loop(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    for other in ("rollout.decode=generate", "rollout.cache=dynamic"):
        with pytest.raises(ConfigError, match="set rollout.decode=loop and rollout.cache=static"):
            MPOConfig.from_yaml(path, ["rollout.compile=on", other])


def test_rollout_compile_accepts_yaml_on_off(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  cache: static\n  compile: on\n")  # YAML 1.1: a bare on is true
    assert MPOConfig.from_yaml(path).rollout.compile == "on"
    assert MPOConfig.from_yaml(path, ["rollout.compile=off"]).rollout.compile == "off"


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        MPOConfig.from_yaml(tmp_path / "nope.yaml")


def test_override_into_a_value_is_an_error():
    data = {"train": 3}
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override(data, "train.max_steps=3")


def test_shipped_configs_load():
    from importlib.resources import files

    folder = files("mpo_fast") / "configs"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".yaml"))
    assert "demo.yaml" in names
    for name in names:
        cfg = MPOConfig.from_yaml(str(folder / name))
        if cfg.task.rubric is not None:  # a rubric named relative to its config resolves next to it
            from mpo_fast.rubrics import load_rubric

            assert load_rubric(cfg.task.rubric, task=cfg.task.name).items
