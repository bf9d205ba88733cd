"""In-process rollouts on a transformers model: batched, left-padded, behaviour log-probs.

The policy trains and samples in the same process, so weights never need syncing. Prompts of
different lengths are left-padded (generation appends on the right, so every row's next token
sits in the same column). Two decoders:
- decode="loop" (default): `decode_loop.decode_rows`, the model's forward with a KV cache, one
  prefill per distinct prompt shared by its n samples (that module says what it saves), on packed
  weights on a CPU (`packed_linear`): 0.49x plain `generate`'s wall time on the e2e rollout
  (BENCHMARKS.md "rollout");
- decode="generate": `model.generate`. Behaviour log-probs are recorded while sampling by a
  logits processor that keeps one step of log-softmax ([rows, vocab], 8 x 49,152 x 4 B = 1.6 MB
  for the demo) and gathers the sampled token's entry at the next step; asking `generate` for
  `output_logits` instead would hold every step at once (1000 steps x 64 rows x 151,936 x 4 B =
  39 GB at the paper's scale).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from .base import Rollout, SamplingParams, check_prompts
from .decode_loop import CACHES, decode_rows
from .packed_linear import packed_linears


class _BehaviourLogprobRecorder:
    """A logits processor (transformers calls it with (input_ids, scores)) that returns scores
    unchanged and records log_softmax(raw_logits / T) of the token sampled at each step.

    transformers runs user processors before its temperature/top-k/top-p warpers, so `scores`
    here are the raw logits (no repetition penalty is configured by HFRollout).
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature if temperature > 0 else 1.0
        self._previous: torch.Tensor | None = None
        self._steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._previous is not None:
            # input_ids[:, -1] is the token sampled from the distribution seen at the previous step.
            self._steps.append(self._previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self._previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor, prompt_width: int) -> torch.Tensor:
        """[rows, new_tokens] float32 log-probs of sequences[:, prompt_width:]."""
        if self._previous is not None:
            last = sequences[:, prompt_width + len(self._steps)]
            self._steps.append(self._previous.gather(1, last[:, None]).squeeze(1))
            self._previous = None
        if not self._steps:
            return torch.zeros(sequences.shape[0], 0)
        return torch.stack(self._steps, dim=1).cpu()


def _eos_ids(model, tokenizer, eos_token_ids: Sequence[int] | None) -> list[int]:
    if eos_token_ids is not None:
        ids = list(eos_token_ids)
    else:
        ids = []
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        for value in (gen_eos, tokenizer.eos_token_id):
            if value is None:
                continue
            ids.extend(value if isinstance(value, (list, tuple)) else [value])
    ids = sorted({int(i) for i in ids})
    if not ids:
        raise ValueError(
            "no EOS token id: the tokenizer has no eos_token and the model's generation_config none; "
            "pass eos_token_ids=[...] to HFRollout"
        )
    return ids


DECODERS = ("loop", "generate")
COMPILE_MODES = ("auto", "on", "off")


class HFRollout:
    """RolloutBackend over a transformers causal LM or a peft model (LoRA adapters stay active).

    batch_size: rows per decode call (None: all n * len(prompts) at once). Generation runs in
    eval mode under no_grad; the model's train/eval mode is restored afterwards.
    decode: "loop" (own decode loop, faster) or "generate" (`model.generate`); cache: the loop's KV
    cache, "static" (preallocated, written in place; default: 0.61x plain generate's wall time where
    "dynamic", grown by concatenation every step, took 0.76x, both on live weights) or "dynamic";
    compile: "on" runs the static-cache step through torch.compile (traced on the first call),
    "auto" and "off" do not (see __init__ for the figures). packed_weights: the loop runs the
    linear layers on oneDNN-packed copies of their weights on a CPU (`packed_linear`: 0.81x the
    loop's time, an extra copy of the weights while generating); not with compile=on.
    With greedy decoding both decoders give the same tokens; with sampling the same distribution
    from different random streams.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int | None = None,
        record_logprobs: bool = True,
        eos_token_ids: Sequence[int] | None = None,
        decode: str = "loop",
        cache: str = "static",
        compile: str = "auto",
        packed_weights: bool = True,
    ) -> None:
        if decode not in DECODERS:
            raise ValueError(f"decode is {decode!r}; use one of {list(DECODERS)}")
        if cache not in CACHES:
            raise ValueError(f"cache is {cache!r}; use one of {list(CACHES)}")
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile is {compile!r}; use one of {list(COMPILE_MODES)}")
        if compile == "on" and (decode != "loop" or cache != "static"):
            raise ValueError("compile=on compiles the decode loop's fixed-shape step: it needs decode='loop' and "
                             "cache='static'")
        self.decode = decode
        self.cache = cache
        # auto: off. Measured on CPU (SmolLM2 8 x 64, 1 thread): 30-49 s to compile, then 3% less
        # CPU a call (7.74 vs 7.97 s): the step is bound by reading the weights. Not yet measured
        # on a GPU, where the step is launch-bound and compiling should pay.
        self.compile = compile == "on"
        self._step = None
        # the compiled step would retrace for every rollout's new packed weights: one or the other
        self.packed_weights = packed_weights and decode == "loop" and not self.compile
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size is {batch_size!r}; pass a positive integer or None for one batch")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.record_logprobs = record_logprobs
        self.eos_token_ids = _eos_ids(model, tokenizer, eos_token_ids)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_ids[0]

    # -- protocol --------------------------------------------------------------------------

    def sync_weights(self, model, version: int) -> None:
        """In-process: the rollout samples from the very module the trainer updates."""
        self.model = model

    def close(self) -> None:
        pass

    def generate(
        self, prompts: list[list[int]], *, n: int, sampling: SamplingParams, policy_version: int
    ) -> list[Rollout]:
        check_prompts(prompts, n)
        rows = [(p, s) for p in range(len(prompts)) for s in range(n)]
        size = self.batch_size or len(rows)
        rng = contextlib.nullcontext() if sampling.seed is None else _seeded(sampling.seed, self._device())
        out: list[Rollout] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with rng, torch.no_grad(), packed_linears(self.model, self.packed_weights):
                for start in range(0, len(rows), size):
                    chunk = rows[start : start + size]
                    out.extend(self._generate_chunk(prompts, chunk, sampling, policy_version))
        finally:
            self.model.train(was_training)
        return out

    # -- internals -------------------------------------------------------------------------

    def _compiled_step(self):
        if not self.compile:
            return None
        if self._step is None:
            from .decode_loop import static_step

            self._step = torch.compile(static_step, dynamic=False)
        return self._step

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _generation_config(self, sampling: SamplingParams):
        from transformers import GenerationConfig

        # An explicit config: the model's own generation_config may carry sampling defaults
        # (SmolLM2 ships temperature/top_p) that would silently change what is sampled.
        kwargs = dict(
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_ids,
            do_sample=not sampling.greedy,
        )
        if not sampling.greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        return GenerationConfig(**kwargs)

    def _generate_chunk(self, prompts, chunk, sampling: SamplingParams, policy_version: int) -> list[Rollout]:
        if self.decode == "loop":
            distinct = list(dict.fromkeys(p for p, _ in chunk))
            where = {p: i for i, p in enumerate(distinct)}
            decoded = decode_rows(
                self.model, [prompts[p] for p in distinct], [where[p] for p, _ in chunk], sampling,
                eos_ids=self.eos_token_ids, pad_id=self.pad_token_id, want_logprobs=self.record_logprobs,
                cache=self.cache, step=self._compiled_step())
            logprobs = decoded.logprobs.cpu() if decoded.logprobs is not None else None
            return self._rollouts(prompts, chunk, decoded.tokens.cpu(), logprobs, policy_version)
        device = self._device()
        width = max(len(prompts[p]) for p, _ in chunk)
        input_ids = torch.full((len(chunk), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (p, _) in enumerate(chunk):
            ids = prompts[p]
            input_ids[row, width - len(ids) :] = torch.as_tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        recorder = _BehaviourLogprobRecorder(sampling.temperature) if self.record_logprobs else None
        kwargs = {}
        if recorder is not None:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([recorder])
        sequences = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=self._generation_config(sampling),
            **kwargs,
        )
        if not isinstance(sequences, torch.Tensor):  # return_dict_in_generate set in a model's config
            sequences = sequences.sequences
        logprobs = recorder.finish(sequences, width) if recorder is not None else None
        return self._rollouts(prompts, chunk, sequences[:, width:].cpu(), logprobs, policy_version)

    def _rollouts(self, prompts, chunk, new_tokens: torch.Tensor, logprobs: torch.Tensor | None,
                  policy_version: int) -> list[Rollout]:
        """One Rollout per row of new_tokens [rows, steps]: cut after the first EOS."""
        eos = torch.as_tensor(self.eos_token_ids)
        results = []
        for row, (p, s) in enumerate(chunk):
            tokens = new_tokens[row]
            hits = torch.isin(tokens, eos).nonzero()
            finished = hits.numel() > 0
            length = int(hits[0]) + 1 if finished else tokens.numel()
            completion = tokens[:length].tolist()
            results.append(
                Rollout(
                    prompt_index=p,
                    sample_index=s,
                    prompt_ids=list(prompts[p]),
                    completion_ids=completion,
                    text=self.tokenizer.decode(completion, skip_special_tokens=True),
                    behaviour_logprobs=logprobs[row, :length].tolist() if logprobs is not None else None,
                    finished=finished,
                    policy_version=policy_version,
                )
            )
        return results


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
