"""What each rank runs in the distributed tests (importable: spawned workers import it)."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from mpo_fast.rollout import Rollout
from tests.tiny_models import char_tokenizer, tiny_causal_lm
from tests.trainer.conftest import PROMPTS, tiny_config
from tests.trainer.fakes import ShortEssayTask, SyntheticJudge

PROMPTS8 = PROMPTS + ["a tall tree", "snow"]


class ScriptedRollout:
    """Deterministic completions from (prompt tokens, sample index): one process and N ranks see
    exactly the same samples, so their updates can be compared."""

    def __init__(self, tokenizer, length: int = 10):
        self.tokenizer = tokenizer
        self.length = length

    def generate(self, prompts, *, n, sampling, policy_version):
        out = []
        letters = "aeioubcdfgst "
        for p, ids in enumerate(prompts):
            for s in range(n):
                rng = random.Random(f"{sum(ids)}-{len(ids)}-{s}")
                size = rng.randint(3, self.length)
                text = "".join(rng.choice(letters) for _ in range(size))
                completion = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
                out.append(Rollout(prompt_index=p, sample_index=s, prompt_ids=list(ids), completion_ids=completion,
                                   text=text, behaviour_logprobs=None, finished=True, policy_version=policy_version))
        return out

    def sync_weights(self, model, version):
        pass

    def close(self):
        pass


def make_trainer(tmp: Path, *, scripted: bool, meta_judge=None, world: int = 1, rm=None, lora: bool = False, **cfg):
    from mpo_fast.trainer import MPOTrainer
    from mpo_fast.trainer.data_parallel import distributed_trainer

    tok = char_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    config = tiny_config(tmp, **cfg)
    rollout = ScriptedRollout(tok) if scripted else None
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
    kwargs = dict(args=config, train_dataset=PROMPTS8, judge=rm or SyntheticJudge(), meta_judge=meta_judge,
                  processing_class=tok, task=ShortEssayTask(), rollout=rollout, peft_config=peft_config)
    return (distributed_trainer if world > 1 else MPOTrainer)(model, **kwargs)


def trained_weights(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


# -- scenarios --------------------------------------------------------------------------------------


def scripted_meta_judge():
    """A real MetaJudge over a scripted LLM: every refinement proposes one new, numbered criterion."""
    import json

    from mpo_fast.judges import MetaJudge
    from mpo_fast.judges import MetaSettings as MRMSettings
    from mpo_fast.rubrics import GateSettings
    from tests.judges.fakes import ScriptedLLM

    count = iter(range(1, 1000))

    def respond(messages, call):
        if call["constraint"] is None:
            return "Too lenient on padded answers; add a criterion on concision."
        n = next(count)
        return json.dumps({"items": [{"title": f"Concision {n}", "description": f"No filler ({n}).", "max_points": 3}]})

    # Gates off: this meta-judge replaces the rubric with one item, which the conservation gate
    # (tested in tests/judges/test_meta_gates.py) would refuse; here only the broadcast is under test.
    return MetaJudge(ScriptedLLM(respond=respond), MRMSettings(num_samples=4, gates=GateSettings(enabled=False)))


def _record_steps(trainer, record):
    """Call record() on every rank after each training step (inside train())."""
    step = trainer.train_step

    def wrapped(n):
        row = step(n)
        record(n)
        return row

    trainer.train_step = wrapped


def steps_stay_identical(rank, world, tmp, cfg):
    """train(); after every step a digest of every parameter and the rubric hash from each rank."""
    from mpo_fast.trainer.distributed import all_gather, parameters_digest

    trainer = make_trainer(Path(tmp), scripted=False, world=world, meta_judge=scripted_meta_judge(), **cfg)
    digests, hashes = [], []

    def record(n):
        digests.append(all_gather(parameters_digest(list(trainer.model.parameters()))))
        hashes.append(all_gather((trainer.rubric_version.version, trainer.rubric_version.hash,
                                  trainer.rubric_version.rubric.content_hash)))

    _record_steps(trainer, record)
    trainer.train()
    trainer.close()
    return {"digests": digests, "rubrics": hashes}


def failing(prompts: list[str]):
    """Judgements that fail for every response to `prompts` and about a quarter of the others,
    decided by the text alone, so one process and N ranks mask the same samples."""
    def fail_when(call, index, request) -> bool:
        return request.prompt in prompts or sum(map(ord, request.response)) % 4 == 0

    return fail_when


def train_and_return_weights(rank, world, tmp, cfg, scripted=True, crash_rank=None, crash_on_call=None, fail=None,
                             lora=False):
    from tests.trainer.fakes import AppendingMetaJudge

    rm = SyntheticJudge(crash_on_call=crash_on_call if rank == crash_rank else None,
                        fail_when=failing(fail) if fail is not None else None)
    trainer = make_trainer(Path(tmp), scripted=scripted, world=world, rm=rm, meta_judge=AppendingMetaJudge(), lora=lora,
                           **cfg)
    result = trainer.train()
    trainer.close()
    return {"weights": trained_weights(trainer), "steps": result.steps, "rubric": trainer.rubric_version.hash}


def train_ppo(rank, world, tmp, cfg, fail=None):
    """PPO on scripted rollouts: the policy's and the value head's weights, and after every step a
    digest of both from each rank (they must stay bit-identical)."""
    from mpo_fast.trainer.distributed import all_gather, parameters_digest
    from tests.trainer.fakes import AppendingMetaJudge

    rm = SyntheticJudge(fail_when=failing(fail) if fail is not None else None)
    if rank == 1:  # a value head initialised differently here: only rank 0's broadcast makes them agree
        from mpo_fast.trainer import trainer as trainer_module

        class OtherHead(trainer_module.ValueHead):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                with torch.no_grad():
                    for p in self.parameters():
                        p.add_(0.5)

        trainer_module.ValueHead = OtherHead
    trainer = make_trainer(Path(tmp), scripted=True, world=world, rm=rm, meta_judge=AppendingMetaJudge(), **cfg)
    digests = []

    def record(n):
        params = [*trainer.model.parameters(), *trainer.value_head.parameters()]
        digests.append(all_gather(parameters_digest(params)) if world > 1 else [parameters_digest(params)])

    _record_steps(trainer, record)
    trainer.train()
    trainer.close()
    return {"weights": trained_weights(trainer), "digests": digests,
            "head": {n: p.detach().clone() for n, p in trainer.value_head.named_parameters()}}


def remote_adapter_sync(rank, world, urls, adapter_dir, versions, keep):
    """Each rank's RemoteCompletionsRollout over the shared server list, wrapped as the trainer
    wraps it under torchrun (MainRankWeightSync): sync each version, then generate; returns the
    adapter each rank's requests named."""
    import peft

    from mpo_fast.rollout import SamplingParams
    from mpo_fast.rollout.remote import RemoteCompletionsRollout
    from mpo_fast.trainer.data_parallel import MainRankWeightSync
    from mpo_fast.trainer.distributed import all_gather, current

    tok = char_tokenizer()
    model = peft.get_peft_model(tiny_causal_lm(tok, seed=0), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    rollout = MainRankWeightSync(RemoteCompletionsRollout(urls, "policy", tokenizer=tok, adapter_dir=adapter_dir,
                                                          keep_adapters=keep), current())
    served = []
    for v in versions:
        rollout.sync_weights(model, v)
        out = rollout.generate([[3, 4]], n=2, sampling=SamplingParams(max_new_tokens=4, seed=rank), policy_version=v)
        assert all(r.policy_version == v for r in out)
        served.append(rollout.served_model)
    rollout.close()
    return all_gather(served)
