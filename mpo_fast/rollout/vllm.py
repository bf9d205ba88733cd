"""Rollouts from an in-process vLLM engine colocated with the trainer on the same GPU(s).

    rollout = VLLMRollout("Qwen/Qwen2.5-1.5B-Instruct", tokenizer=tok, gpu_memory_utilization=0.35)
    rollout.generate(prompt_ids, n=8, sampling=SamplingParams(...), policy_version=0)
    ... update ...
    rollout.sync_weights(model, version=1)

Written against vLLM's documented offline API (`vllm.LLM`, `SamplingParams`, `LoRARequest`,
`LLM.sleep/wake_up`, `LLM.apply_model`, `LLM.reset_prefix_cache`); install with
`pip install 'mpo-fast[vllm]'` on Linux with a CUDA GPU. The pure parts (weight names, request
building, output conversion) are tested without vLLM.

Memory sharing (sleep mode, `enable_sleep_mode=True`): between generations the engine sleeps and
gives its KV cache (level 1 also offloads the weights to host memory; level 2 discards them) back to
the trainer. Weights are woken alone for a sync (`wake_up(tags=["weights"])`, so the KV cache is
not allocated while the optimizer still holds its memory) and the KV cache just before generating.
With level 2 the engine's weights are gone after sleeping, so the last synced weights are pushed
again on wake-up. Sleeping only makes sense when generation and training alternate
(max_staleness=0); with an overlapped pipeline both stay resident: pass sleep_level=None and a
gpu_memory_utilization that leaves the trainer its share.

Weight sync after each update (`sync_mode`):
- "full": the trained parameters, by name (vllm_weights.py maps peft/compile/DDP names to vLLM's),
  through `load_weights` on the engine's model in this process; a peft policy is sent merged;
- "merged_lora": a peft policy's adapted modules as W + B @ A (computed without mutating the
  training model), plus trained modules_to_save;
- "lora_adapter": the adapter is saved and served as a vLLM LoRA (`enable_lora`), each version
  under a new `LoRARequest` id (vLLM caches adapters by id). Cheapest for large models.

Behaviour log-probs: `SamplingParams(logprobs=0)` returns the sampled token's log-prob; the engine
is created with `logprobs_mode="processed_logprobs"` where vLLM has it (>= 0.10.2), so they are of
the temperature-scaled distribution that was sampled, as the trainer computes them. On older vLLM
they are the raw model's, which differ whenever temperature != 1: a warning says so.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from .base import Rollout, SamplingParams, check_prompts
from .vllm_weights import has_lora_layers, weights_for_vllm

log = logging.getLogger("mpo_fast")

SYNC_MODES = ("full", "merged_lora", "lora_adapter")


def import_vllm():
    """The vllm module, or an ImportError that says how to get it."""
    from ..optional_import import import_optional

    return import_optional("vllm", needed_for="the vLLM rollout backend needs vLLM",
                           install="pip install 'mpo-fast[vllm]' (Linux with a CUDA GPU; on CPU use rollout.backend=hf)")


def torchrun_engine_options(rank: int, world_size: int, *, seed: int, tensor_parallel_size: int = 1) -> tuple[dict[str, Any], int]:
    """(vllm.LLM keyword arguments, sampling seed) for the colocated engine of one rank of a torchrun
    job, as vLLM's torchrun examples and TRL's colocate mode build it.

    distributed_executor_backend="external_launcher": the engine runs in this process and joins
    the process group torchrun set up (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT from the
    environment, env://), on the GPU of LOCAL_RANK (init_distributed already set it as the current
    device) - no worker processes of its own. tensor_parallel_size 1: each rank generates its own
    share of the prompts, so an engine spanning ranks would need the prompts of its whole tensor
    parallel group, which the data-parallel trainer does not gather. The seed differs per rank
    (rank 0 keeps `seed`): equal seeds would sample the same completions on every rank for
    different prompts' identical prefixes and correlate the groups.
    """
    if tensor_parallel_size != 1:
        raise ValueError(f"tensor_parallel_size={tensor_parallel_size} under torchrun: each rank's engine generates that "
                         "rank's own prompts, so it must hold the whole policy (tensor_parallel_size=1); for a policy "
                         "that does not fit one GPU serve it with vLLM and use rollout.backend=remote")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return {"distributed_executor_backend": "external_launcher", "tensor_parallel_size": 1}, int(seed) + rank


def sampling_kwargs(sampling: SamplingParams, n: int, *, seed: int | None) -> dict[str, Any]:
    """Keyword arguments of vllm.SamplingParams for `n` samples with behaviour log-probs."""
    kw: dict[str, Any] = {
        "n": n,
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        # vLLM's "no top-k" is -1 (0 is rejected by versions before 0.8, accepted after)
        "top_k": int(sampling.top_k) if sampling.top_k > 0 else -1,
        "max_tokens": int(sampling.max_new_tokens),
        "logprobs": 0,  # 0: only the sampled token's log-prob, which the importance ratio needs
        "skip_special_tokens": True,
    }
    if seed is not None:
        kw["seed"] = int(seed)
    return kw


def build_prompts(prompts: Sequence[Sequence[int]]) -> list[dict[str, list[int]]]:
    """vLLM prompt inputs (TokensPrompt dicts) from chat-templated token ids."""
    return [{"prompt_token_ids": [int(t) for t in ids]} for ids in prompts]


def _logprob_value(entry: Any) -> float:
    value = getattr(entry, "logprob", entry)  # a vllm.sequence.Logprob, or a plain float
    return float(value)


def convert_outputs(outputs: Sequence[Any], prompts: Sequence[Sequence[int]], *, n: int, policy_version: int) -> list[Rollout]:
    """Rollouts (prompt-major) from vLLM RequestOutputs in prompt order.

    Each CompletionOutput carries token_ids (EOS included when it stopped on it), text,
    finish_reason ("stop" / "length") and logprobs: one {token_id: Logprob} dict per generated
    token, holding at least the sampled token.
    """
    if len(outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(outputs)} request outputs for {len(prompts)} prompts")
    rollouts = []
    for p, (req, ids) in enumerate(zip(outputs, prompts)):
        completions = sorted(req.outputs, key=lambda c: c.index)
        if len(completions) != n:
            raise RuntimeError(f"vLLM returned {len(completions)} completions for prompt {p}, asked for n={n}")
        for k, c in enumerate(completions):
            token_ids = [int(t) for t in c.token_ids]
            behaviour = None
            if c.logprobs is not None:
                if len(c.logprobs) != len(token_ids):
                    raise RuntimeError(f"prompt {p} sample {k}: {len(c.logprobs)} log-prob entries for {len(token_ids)} tokens")
                behaviour = []
                for tok, entry in zip(token_ids, c.logprobs):
                    if tok not in entry:
                        raise RuntimeError(f"prompt {p} sample {k}: the sampled token {tok} has no log-prob entry")
                    behaviour.append(_logprob_value(entry[tok]))
            rollouts.append(Rollout(p, k, list(ids), token_ids, c.text, behaviour, c.finish_reason == "stop", policy_version))
    return rollouts


def _engine_accepts(vllm_module, field: str) -> bool:
    try:
        from vllm.engine.arg_utils import EngineArgs

        return field in {f.name for f in dataclasses.fields(EngineArgs)}
    except Exception:  # noqa: BLE001 - unknown layout: assume an old vLLM
        return False


class VLLMRollout:
    """RolloutBackend on an in-process vllm.LLM.

    model: the policy's checkpoint (a directory or hub id the engine loads once; later weights
        arrive through sync_weights). llm: an already built vllm.LLM to use instead.
    sleep_level: 1 or 2 to sleep between generations (colocated, max_staleness=0), None to stay awake.
    """

    def __init__(self, model: str | None = None, *, llm: Any = None, sync_mode: str = "full", dtype: str = "auto",
                 gpu_memory_utilization: float = 0.3, max_model_len: int | None = None, seed: int = 0,
                 sleep_level: int | None = 1, max_lora_rank: int = 64, adapter_dir: str | Path | None = None,
                 engine_kwargs: dict | None = None):
        if sync_mode not in SYNC_MODES:
            raise ValueError(f"sync_mode={sync_mode!r}; expected one of {SYNC_MODES}")
        if sleep_level not in (None, 1, 2):
            raise ValueError(f"sleep_level={sleep_level!r}; expected 1 (offload weights), 2 (discard them) or None (never sleep)")
        if sync_mode == "lora_adapter" and sleep_level == 2:
            raise ValueError("sleep_level=2 discards the base weights, which the lora_adapter mode never re-sends; "
                             "use sleep_level=1 or None")
        if llm is None and model is None:
            raise ValueError("pass model=<checkpoint dir or hub id> (or llm=<a vllm.LLM>)")
        self.vllm = import_vllm()
        self.sync_mode = sync_mode
        self.sleep_level = sleep_level
        self.seed = seed
        self._adapter_root = Path(adapter_dir) if adapter_dir else Path(tempfile.mkdtemp(prefix="mpo_fast_lora_"))
        self._lora_request = None
        self._lora_dirs: list[Path] = []
        self._last_source = None  # the module last synced (level 2 sleep discards the engine's copy)
        self._weights_awake = self._kv_awake = True
        self._weights_valid = True
        if llm is None:
            kwargs = dict(model=model, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                          enable_sleep_mode=sleep_level is not None)
            if max_model_len is not None:
                kwargs["max_model_len"] = max_model_len
            if sync_mode == "lora_adapter":
                kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
            if _engine_accepts(self.vllm, "logprobs_mode"):
                kwargs["logprobs_mode"] = "processed_logprobs"
            else:
                log.warning("this vLLM has no logprobs_mode: behaviour log-probs are the raw model's, not the "
                            "temperature-scaled ones the trainer uses; keep temperature=1 or upgrade vLLM (>= 0.10.2)")
            kwargs.update(engine_kwargs or {})
            # In-process engine core: the trainer's tensors reach the model by reference (apply_model
            # runs in this process) instead of being pickled to a worker process.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            llm = self.vllm.LLM(**kwargs)
        self.llm = llm
        self._sleep()

    # -- protocol --------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], *, n: int, sampling: SamplingParams, policy_version: int) -> list[Rollout]:
        check_prompts(prompts, n)
        self._wake(["weights"])
        if not self._weights_valid:
            if self._last_source is None:
                raise RuntimeError("the engine's weights were discarded by sleep level 2 and nothing was synced since; "
                                   "call sync_weights(model, version) first or use sleep_level=1")
            self._load(self._last_source)
        self._wake(["kv_cache"])
        params = self.vllm.SamplingParams(**sampling_kwargs(sampling, n, seed=sampling.seed))
        kwargs = {"use_tqdm": False}
        if self._lora_request is not None:
            kwargs["lora_request"] = self._lora_request
        try:
            outputs = self.llm.generate(build_prompts(prompts), params, **kwargs)
        finally:
            self._sleep()
        return convert_outputs(outputs, prompts, n=n, policy_version=policy_version)

    def sync_weights(self, model, version: int) -> None:
        """Make the engine sample from `model`'s current weights (called after each update).

        `model` may also be a mapping {vLLM name: tensor} taken earlier (a snapshot), which is how
        an overlapped pipeline hands weights over while the trainer keeps updating the module.
        """
        if self.sync_mode == "lora_adapter":
            self._sync_adapter(model, version)
            return
        self._wake(["weights"])
        self._load(model)
        self._last_source = model

    def close(self) -> None:
        self.llm = None
        if self._lora_dirs:
            shutil.rmtree(self._adapter_root, ignore_errors=True)
        try:
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    # -- internals -------------------------------------------------------------------------
    def _load(self, model) -> None:
        if self.sync_mode == "merged_lora" and not isinstance(model, Mapping) and not has_lora_layers(model):
            raise ValueError("sync_mode='merged_lora' found no LoRA layers in the policy; use sync_mode='full'")
        if isinstance(model, Mapping):
            if not self._weights_valid:
                raise RuntimeError("a weight snapshot holds only the trained tensors, but sleep level 2 discarded all of "
                                   "the engine's weights; use sleep_level=1 or None with snapshots")
            weights = list(model.items())
        else:
            # After a level-2 sleep the engine lost every weight, frozen ones included.
            weights = list(weights_for_vllm(model, only_changed=self._weights_valid))
        self._model_call(lambda m: m.load_weights(weights))
        self._weights_valid = True
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if reset is not None:
            reset()  # cached KV blocks were computed with the old weights

    def _model_call(self, fn) -> None:
        apply = getattr(self.llm, "apply_model", None)
        if apply is not None:
            apply(fn)
            return
        # vLLM before apply_model (V0 engine): the driver worker's model, as TRL reaches it.
        executor = self.llm.llm_engine.model_executor
        worker = executor.driver_worker
        runner = getattr(worker, "model_runner", None) or worker.worker.model_runner
        fn(runner.model)

    def _sync_adapter(self, model, version: int) -> None:
        if not hasattr(model, "peft_config"):
            raise ValueError("sync_mode='lora_adapter' needs a peft policy; use sync_mode='full' for full fine-tuning")
        from vllm.lora.request import LoRARequest

        path = self._adapter_root / f"policy-v{version}"
        model.save_pretrained(str(path))
        # A new id per version: vLLM caches adapters by id and would keep serving the old weights.
        self._lora_request = LoRARequest(f"policy-v{version}", version + 1, str(path))
        self._lora_dirs.append(path)
        while len(self._lora_dirs) > 2:  # the engine may still hold the previous one
            shutil.rmtree(self._lora_dirs.pop(0), ignore_errors=True)

    def _sleep(self) -> None:
        if self.sleep_level is None or not (self._weights_awake or self._kv_awake):
            return
        self.llm.sleep(level=self.sleep_level)
        self._weights_awake = self._kv_awake = False
        if self.sleep_level == 2:
            self._weights_valid = False

    def _wake(self, tags: list[str]) -> None:
        want = [t for t in tags if not (self._weights_awake if t == "weights" else self._kv_awake)]
        if not want:
            return
        try:
            self.llm.wake_up(tags=want)
        except TypeError:  # vLLM before tagged wake-up: everything at once
            self.llm.wake_up()
            self._weights_awake = self._kv_awake = True
            return
        for t in want:
            if t == "weights":
                self._weights_awake = True
            else:
                self._kv_awake = True
