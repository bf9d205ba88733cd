"""Everything a run needs, built from an MPOConfig (the CLI and the demo go through here).

Every check that can fail fast runs here, before the first training step: the config, the
dataset file, the rubric file, the judge endpoint's reachability and its API key.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..judges import (
    EndpointConfig,
    HackingDetector,
    JudgeCache,
    LocalJudge,
    LocalLLM,
    MetaJudge,
    OpenAICompatibleLLM,
    OpenAIJudge,
)
from ..judges import JudgeSettings as RMSettings
from ..judges import MetaSettings as MRMSettings
from ..judges.pool import endpoint_urls, pooled_judge, pooled_llm, share_limit
from ..rubrics import GateSettings, ProposalLimits, load_rubric
from ..tasks import get_task
from .config import ConfigError, JudgeSettings, MetaSettings, MPOConfig
from .distributed import current as current_dist
from .data_parallel import make_distributed_trainer_class
from .reward_funcs import RewardFuncError, RewardFuncs
from .distributed import is_main_process
from .model_loading import load_causal_lm, load_policy

JUDGE_CACHE_FILE = "judgements.jsonl"
log = logging.getLogger("mpo_fast")


class JudgeUnreachableError(ConfigError):
    """The judge endpoint did not answer before training started."""


@dataclass
class RunParts:
    model: Any
    tokenizer: Any
    peft_config: Any
    judge: Any
    meta_judge: Any
    signals: Any
    train_dataset: list
    judge_shares_policy: bool


def peft_config_of(config: MPOConfig):
    if not config.lora.enabled:
        return None
    from ..optional_import import describe_import_failure

    try:
        from peft import LoraConfig
    except ImportError as exc:
        raise ConfigError(describe_import_failure("peft", exc, needed_for="lora.enabled is true",
                                                  install="pip install peft (or set lora.enabled=false)")) from exc
    lora = config.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
                      task_type="CAUSAL_LM")


def check_inputs(config: MPOConfig):
    """Dataset and rubric files: readable and well-formed, or a clear error naming the fix."""
    task = get_task(config.task.name)
    if config.task.data is not None:
        path = Path(config.task.data)
        looks_local = path.suffix.lower() in (".jsonl", ".json", ".parquet") or os.sep in config.task.data
        if looks_local and not path.exists():
            raise ConfigError(
                f"task.data is {config.task.data!r}, which does not exist; fix the path, or remove task.data to use "
                f"the {task.name} prompts shipped with mpo_fast"
            )
    try:
        examples = task.load(config.task.data, config.task.split, limit=config.task.limit)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise ConfigError(f"task.data {config.task.data or '(shipped)'}: {exc}") from exc
    if config.task.rubric is not None:
        try:
            load_rubric(config.task.rubric, task=task.name)
        except (ValueError, TypeError, FileNotFoundError) as exc:
            raise ConfigError(f"task.rubric: {exc}") from exc
    try:  # reward.funcs imported now, seconds before minutes of model loading
        RewardFuncs.build(config.reward.funcs or None, config.reward.weights)
    except RewardFuncError as exc:
        raise ConfigError(f"reward.funcs: {exc}") from exc
    return examples


def _rm_settings(j: JudgeSettings) -> RMSettings:
    return RMSettings(scoring=j.scoring, call_mode=j.call_mode, temperature=j.temperature,
                      rationale_tokens=j.max_rationale_tokens, max_new_tokens=max(j.max_rationale_tokens * 2, 64),
                      max_rationale_chars=max(j.max_rationale_tokens * 4, 1), min_score_mass=j.min_score_mass)


def _endpoint(base_url: str, model: str, api_key_env: str, concurrency: int, timeout_s: float, retries: int) -> EndpointConfig:
    # A local server without auth needs no key: pass the variable's name only when it is set.
    key_env = api_key_env if os.environ.get(api_key_env) else None
    return EndpointConfig(base_url=base_url, model=model, api_key_env=key_env, max_concurrency=concurrency,
                          timeout_s=timeout_s, max_retries=retries)


def check_endpoint(base_url: str, api_key_env: str, what: str, timeout_s: float = 10.0) -> None:
    """GET {base_url}/models once, no retries: a dead URL fails in seconds, before training."""
    import httpx

    headers = {}
    if os.environ.get(api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[api_key_env]}"
    url = base_url.rstrip("/") + "/models"
    try:
        response = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise JudgeUnreachableError(
            f"the {what} at {base_url} is unreachable ({type(exc).__name__}: {exc}); start the server (e.g. "
            f"`vllm serve MODEL` or `python -m llama_cpp.server`) or fix {what.split()[0]}.base_url in the config"
        ) from exc
    if response.status_code in (401, 403):
        raise JudgeUnreachableError(
            f"the {what} at {base_url} refused the request ({response.status_code}); set the API key in the "
            f"environment variable {api_key_env} (or point {what.split()[0]}.api_key_env at the variable that holds it)"
        )


def check_endpoints(base_url, api_key_env: str, what: str) -> None:
    """One URL must answer; of a list (an endpoint pool), at least one must: the pool routes around
    the others and takes them back when they answer."""
    urls = endpoint_urls(base_url)
    if len(urls) == 1:
        check_endpoint(urls[0], api_key_env, what)
        return
    errors = []
    for url in urls:
        try:
            check_endpoint(url, api_key_env, what)
        except JudgeUnreachableError as exc:
            errors.append(str(exc))
    if len(errors) == len(urls):
        raise JudgeUnreachableError(f"none of the {len(urls)} {what}s answers: " + " | ".join(errors))
    for error in errors:
        log.warning("%s (the pool routes around it until it answers)", error)


def check_servers(config: MPOConfig) -> None:
    if config.judge.backend == "openai":
        check_endpoints(config.judge.base_url, config.judge.api_key_env, "judge server")
    if config.meta.enabled and config.meta.backend == "openai":
        check_endpoints(config.meta.base_url, config.meta.api_key_env, "meta server")
    if config.rollout.backend == "remote":
        check_endpoints(config.rollout.base_url, config.rollout.api_key_env, "rollout server")
    from ..rollout.backends import require_installed

    try:  # before minutes of model loading
        require_installed(config.rollout.backend)
    except ImportError as exc:
        raise ConfigError(str(exc)) from exc


def build_rollout(config: MPOConfig, model, tokenizer):
    """The rollout backend rollout.backend names; None for hf, which MPOTrainer builds on the
    training module itself (after wrapping it with LoRA)."""
    from ..rollout.backends import create_rollout_backend

    r = config.rollout
    if r.backend == "hf":
        return None
    path = config.model.name_or_path
    if r.backend == "vllm":
        if path == "embedded":
            raise ConfigError("rollout.backend=vllm needs a Hugging Face checkpoint directory for model.name_or_path; the "
                              "embedded GGUF model is for CPU runs: use rollout.backend=hf with it")
        # LoRA: the engine loads each update's adapter; with max_staleness > 0 the producer instead
        # takes a snapshot of the merged weights between updates (an adapter cannot be snapshotted).
        sync = ("merged_lora" if config.pipeline.max_staleness > 0 else "lora_adapter") if config.lora.enabled else "full"
        engine_kwargs, seed = None, config.seed
        from .distributed import current

        ctx = current()
        if ctx is not None and ctx.world_size > 1:  # torchrun: one engine per rank, in this process (vllm.py)
            from ..rollout.vllm import torchrun_engine_options

            engine_kwargs, seed = torchrun_engine_options(ctx.rank, ctx.world_size, seed=config.seed)
        return create_rollout_backend("vllm", model=model, tokenizer=tokenizer, model_path=path, sync_mode=sync,
                                      gpu_memory_utilization=r.gpu_memory_utilization, sleep_level=r.sleep_level,
                                      seed=seed, max_lora_rank=max(config.lora.r, 8), engine_kwargs=engine_kwargs)
    key_env = r.api_key_env if os.environ.get(r.api_key_env) else None
    return create_rollout_backend("remote", model=model, tokenizer=tokenizer, base_url=r.base_url,
                                  served_model=r.served_model or path, api_key_env=key_env, server=r.server,
                                  adapter_dir=r.adapter_dir, max_concurrency=max(config.samples_per_step, 1),
                                  keep_adapters=config.pipeline.max_staleness + 1)


def build_judges(config: MPOConfig, policy_lm, tokenizer):
    """(judge, meta_judge, shares_policy). A local judge on "policy" reuses the policy's weights
    (the trainer disables the LoRA adapters while it judges), so the demo holds one model."""
    j = config.judge
    cache_path = Path(config.output_dir) / JUDGE_CACHE_FILE
    main = is_main_process()  # data-parallel runs: only rank 0 writes to output_dir (the cache included)
    if config.overwrite and not config.resume and main:
        cache_path.unlink(missing_ok=True)  # starting over: no judgement of the old run is reused
    cache = JudgeCache(cache_path) if j.cache and main else None
    settings = _rm_settings(j)
    shares = False
    if j.backend == "local":
        if j.model == "policy":
            judge_lm, judge_tok, shares = policy_lm, tokenizer, True
        else:
            judge_lm, judge_tok = load_causal_lm(j.model, dtype=config.model.dtype, device=config.model.device)
            judge_lm.eval().requires_grad_(False)
        judge = LocalJudge(judge_lm, judge_tok, settings, cache=cache, max_batch_size=j.concurrency,
                           name="policy-base" if shares else j.model)
    else:
        judge = _openai_judge(j, settings, cache)
    meta = build_meta_judge(config.meta, config, judge)
    return judge, meta, shares


def build_meta_judge(m: MetaSettings, config: MPOConfig, judge):
    if not m.enabled:
        return None
    settings = MRMSettings(num_samples=m.num_samples, analysis_tokens=m.max_new_tokens,
                           limits=ProposalLimits(max_items=m.max_items) if m.max_items else ProposalLimits(),
                           refine=m.refine, mrm_merge=m.merge == "mrm", gates=GateSettings(enabled=m.gates))
    # The RM scores proposed items on the analysed samples (the discriminativeness gate).
    if m.backend == "judge":
        return MetaJudge(judge.llm, settings, scorer=judge)
    if m.backend == "local":
        lm, tok = load_causal_lm(m.model, dtype=config.model.dtype, device=config.model.device)
        lm.eval().requires_grad_(False)
        return MetaJudge(LocalLLM(lm, tok, name=m.model), settings, scorer=judge)
    j = config.judge
    endpoint = _endpoint(endpoint_urls(m.base_url)[0], m.model, m.api_key_env, j.concurrency, j.timeout_s, j.max_retries)
    if len(endpoint_urls(m.base_url)) > 1:
        return MetaJudge(pooled_llm(endpoint_urls(m.base_url), endpoint), settings, scorer=judge)  # only rank 0 calls it
    return MetaJudge(OpenAICompatibleLLM(endpoint), settings, scorer=judge)


def _openai_judge(j: JudgeSettings, settings: RMSettings, cache):
    """One endpoint, or a pool over a list of them. Under torchrun every rank takes its share of
    judge.concurrency (per endpoint), so N ranks do not multiply the load on the servers."""
    world = (current_dist().world_size if current_dist() is not None else 1)
    urls = endpoint_urls(j.base_url)
    endpoint = _endpoint(urls[0], j.model, j.api_key_env, j.concurrency, j.timeout_s, j.max_retries)
    if len(urls) > 1:
        return pooled_judge(urls, endpoint, settings, cache=cache, world_size=world)
    return OpenAIJudge(dataclasses.replace(endpoint, max_concurrency=share_limit(j.concurrency, world)), settings,
                       cache=cache)


def build_run(config: MPOConfig, *, policy=None) -> RunParts:
    """Load and check everything. `policy`: an already loaded (model, tokenizer) to reuse."""
    examples = check_inputs(config)
    peft_config = peft_config_of(config)
    check_servers(config)  # seconds, before minutes of model loading
    model, tokenizer = policy if policy is not None else load_policy(config.model)
    judge, meta, shares = build_judges(config, model, tokenizer)
    signals = HackingDetector() if config.meta.enabled and config.meta.trigger_on_signals else None
    return RunParts(model=model, tokenizer=tokenizer, peft_config=peft_config, judge=judge, meta_judge=meta,
                    signals=signals, train_dataset=examples, judge_shares_policy=shares)


def make_trainer(config: MPOConfig, *, policy=None):
    """An MPOTrainer with everything built from `config` (and checked) before any training; under
    torchrun (an initialised process group) the data-parallel DistributedMPOTrainer."""
    from .trainer import MPOTrainer

    parts = build_run(config, policy=policy)
    trainer_class = MPOTrainer if current_dist() is None else make_distributed_trainer_class()
    return trainer_class(
        parts.model, args=config, train_dataset=parts.train_dataset, judge=parts.judge,
        meta_judge=parts.meta_judge, peft_config=parts.peft_config, processing_class=parts.tokenizer,
        signals=parts.signals, rollout=build_rollout(config, parts.model, parts.tokenizer),
    )
