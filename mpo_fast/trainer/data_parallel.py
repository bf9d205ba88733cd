"""Data-parallel MPO: the MPOTrainer on every rank of a torchrun job (process group: distributed.py).

    torchrun --nproc-per-node=8 -m mpo_fast.cli train --config FILE.yaml

What each rank does in one step (rollout.prompts_per_step is the *global* number of prompts):

    every rank draws the same global prompt list (same sampler, same seed) and keeps its
    contiguous share of whole prompts, so a prompt's group never spans two ranks and group
    advantages need no gather -> generates, judges and builds its batch -> the loss of every
    micro-batch is weighted by its share of the *global* token (or sequence) count and the
    gradients are summed over ranks, so N ranks x B prompts give the update of 1 process x N*B
    -> rank 0 runs the meta-judge on the gathered samples and broadcasts the new rubric with
    its version and hash at the step boundary; every rank checks the hash before using it.

train.distributed=fsdp2 (auto without LoRA) shards the policy instead of replicating it: the
pieces it swaps in are in fsdp.py.

Rank 0 writes every run file (metrics.jsonl with metrics reduced over ranks and `world_size`,
samples.jsonl gathered, the rubric store, the judge cache, checkpoints with every rank's RNG
state); the other ranks write nothing to output_dir but, under fsdp2, their checkpoint shards. Every collective runs under the process
group's timeout (train.dist_timeout_s), so a rank that dies or hangs stops the others within it.
"""
from __future__ import annotations

import base64
import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..judges.pool import merge_snapshots, pool_of
from ..judges.types import Judgement
from ..rollout import HFRollout
from ..rubrics import RubricStore, RubricVersion
from . import checkpoint as ckpt
from . import stages
from .data import PromptSampler
from .distributed import (
    DistContext,
    DistributedError,
    all_gather,
    all_reduce_sum,
    broadcast_module,
    collective,
    comm_device,
    current,
    resolve_mode,
    run_on_main,
    shard_range,
)
from .logprobs import is_peft_model
from .run_log import RunLog
from .step_record import StepTimings
from .update import _MEAN_METRICS, PolicyUpdater, UpdateResult


# -- the sampler, the updater, the run log, the meta buffer: rank-aware stand-ins ----------------


class ShardedSampler:
    """The global PromptSampler on every rank (so the data position is the same on all of them,
    and a checkpoint's sampler state fits any rank) handing out this rank's share."""

    def __init__(self, sampler: PromptSampler, ctx: DistContext) -> None:
        self.sampler = sampler
        self.ctx = ctx

    def next(self, count: int) -> list[int]:
        start, end = shard_range(count, self.ctx.rank, self.ctx.world_size)
        return self.sampler.next(count)[start:end]

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state) -> None:
        self.sampler.load_state_dict(state)


BUCKET_ELEMENTS = 1 << 23  # 8 M elements: 32 MB of fp32, 16 MB of bf16 gradients per all-reduce


def _all_reduce_bucket(grads: list[torch.Tensor]) -> None:
    with collective("the gradient all-reduce"):
        if len(grads) == 1:
            dist.all_reduce(grads[0], op=dist.ReduceOp.SUM)
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def all_reduce_gradients(params: list[torch.Tensor]) -> None:
    """Sum every parameter's gradient over ranks (a missing one counts as zeros), in buckets of
    <= BUCKET_ELEMENTS of one dtype."""
    bucket: list[torch.Tensor] = []
    size = 0
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if bucket and (size + p.grad.numel() > BUCKET_ELEMENTS or p.grad.dtype != bucket[0].dtype):
            _all_reduce_bucket(bucket)
            bucket, size = [], 0
        bucket.append(p.grad)
        size += p.grad.numel()
    if bucket:
        _all_reduce_bucket(bucket)


class DataParallelUpdater(PolicyUpdater):
    """PolicyUpdater whose micro-batch weights are shares of the global batch and whose gradients
    are summed over ranks before clipping: the update of one process on every rank's rows.

    `zero_weight_next`: this rank has no valid row this step while others have: it runs one
    placeholder row with weight 0 so it still joins the gradient all-reduce (exact zeros)."""

    def __init__(self, *args, ctx: DistContext, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ctx = ctx
        self.zero_weight_next = False

    def _micro_batches(self, batch):
        size = self.settings.micro_batch_size
        micros = [batch.select(list(range(i, min(i + size, batch.size)))).to(self.device) for i in range(0, batch.size, size)]
        placeholder = self.zero_weight_next
        tokens = 0 if placeholder else batch.num_tokens
        rows = 0 if placeholder else batch.size
        global_tokens, global_rows = all_reduce_sum([tokens, rows])
        if placeholder:
            return micros, [0.0] * len(micros)
        if self.settings.loss_aggregation == "token_mean":
            return micros, [m.num_tokens / max(global_tokens, 1.0) for m in micros]
        return micros, [m.size / global_rows for m in micros]

    def _sync_gradients(self) -> None:
        """Sum gradients over ranks (the weights already divide by the global count) once per
        optimizer step, after the last micro-batch, so ranks may run different numbers of
        micro-batches. Buckets of <= BUCKET_ELEMENTS (as DDP's 25 MB buckets): LoRA adapters fit in
        one all-reduce, full fine-tuning never copies every gradient at once."""
        all_reduce_gradients(self.params)

    def update(self, batch, *, behaviour_old_logp: bool = False) -> UpdateResult:
        placeholder = self.zero_weight_next
        try:
            result = super().update(batch, behaviour_old_logp=behaviour_old_logp)
        finally:
            self.zero_weight_next = False
        # Loss and mean metrics were weighted by global shares: their sum over ranks is the global value.
        keys = ["loss", *_MEAN_METRICS]
        local = [result.loss, *[result.metrics[k] for k in _MEAN_METRICS]]
        # entropy is this rank's token mean (over its first epoch's completion tokens): the global
        # one weights each rank's mean by its token count (a placeholder row counts 0 tokens).
        tokens = 0 if placeholder else batch.num_tokens
        entropy = result.metrics.get("entropy", 0.0) if tokens else 0.0
        summed = all_reduce_sum([*local, entropy * tokens, tokens])
        entropy_sum, entropy_tokens = summed[-2:]
        summed = summed[:-2]
        if entropy_tokens:
            result.metrics["entropy"] = entropy_sum / entropy_tokens
        extremes = torch.tensor([-result.metrics["ratio_min"], result.metrics["ratio_max"]], dtype=torch.float64,
                                device=comm_device())
        with collective("reducing update metrics"):
            dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
        result.loss = summed[0]
        for key, value in zip(keys[1:], summed[1:]):
            result.metrics[key] = value
        result.metrics["ratio_min"], result.metrics["ratio_max"] = -float(extremes[0]), float(extremes[1])
        return result


class MainRankWeightSync:
    """A remote rollout server is shared by every rank: rank 0 alone pushes each update's adapter
    (the ranks hold the same weights), and no rank generates before the push is done."""

    def __init__(self, rollout, ctx: DistContext) -> None:
        self.rollout = rollout
        self.ctx = ctx

    def generate(self, *args, **kwargs):
        return self.rollout.generate(*args, **kwargs)

    def sync_weights(self, model, version: int) -> None:
        # Every rank then asks the server for the adapter rank 0 loaded (the older one is unloaded).
        served = run_on_main(self.ctx, lambda: (self.rollout.sync_weights(model, version),
                                                getattr(self.rollout, "served_model", None))[1],
                             f"pushing adapter version {version} to the rollout server")
        self.rollout.version = version  # rollouts are stamped with the version they come from
        if served is not None:
            self.rollout.served_model = served

    def close(self) -> None:
        self.rollout.close()

    def __getattr__(self, name):
        return getattr(self.rollout, name)


class MainRankRunLog:
    """metrics.jsonl and samples.jsonl written by rank 0 only; samples gathered from every rank
    (in rank order: the order of one process running the whole global batch)."""

    def __init__(self, ctx: DistContext, make: Callable[[], RunLog], limit: int | None = None) -> None:
        self.ctx = ctx
        self.limit = limit
        self.log = make() if ctx.is_main else None

    def metrics(self, row: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.metrics(row)

    def samples(self, rows: list[dict[str, Any]]) -> None:
        gathered = all_gather(rows)
        if self.log is not None:
            rows = [r for part in gathered for r in part]
            # log.samples_per_step counts the global step's samples, as in one process: each rank kept
            # its first `limit`, so the first `limit` gathered rows are the global batch's first.
            limit = self.limit
            self.log.samples(rows if limit is None else rows[:limit])

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


class GatheredMetaBuffer(stages.MetaSampleBuffer):
    """Every rank's judged samples, gathered into rank 0's buffer (the meta-judge sees the
    whole step, as in one process); the other ranks keep none."""

    def __init__(self, capacity: int, ctx: DistContext) -> None:
        super().__init__(capacity=capacity)
        self.ctx = ctx

    def add(self, items) -> None:
        gathered = all_gather(list(items))
        if self.ctx.is_main:
            super().add([s for part in gathered for s in part])


class ReplicaRubricStore:
    """What a rank other than 0 knows of the rubric store: the versions rank 0 broadcast."""

    def __init__(self) -> None:
        self._versions: dict[int, RubricVersion] = {}
        self.directory = "(rank 0's rubric store)"

    def add(self, version: RubricVersion) -> None:
        self._versions[version.version] = version

    def get(self, version: int) -> RubricVersion:
        return self._versions[int(version)]


def checked_rubric(version: RubricVersion, ctx: DistContext) -> RubricVersion:
    """The broadcast rubric, after this rank recomputed its hash: a rubric that changed in
    transit (or a version/hash mismatch) must not score anything."""
    got = version.rubric.content_hash
    if got != version.hash:
        raise DistributedError(
            f"rank {ctx.rank}: rubric v{version.version} broadcast with hash {version.hash} hashes to {got} here; "
            "the ranks run different mpo_fast versions (rubric hashing differs): install the same version everywhere"
        )
    return version


def _encode_rng(json_state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"json": json_state,
            "tensors": {k: base64.b64encode(v.cpu().numpy().tobytes()).decode("ascii") for k, v in tensors.items()}}


def _decode_rng(entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    import numpy as np

    tensors = {k: torch.from_numpy(np.frombuffer(base64.b64decode(v), dtype=np.uint8).copy()) for k, v in entry["tensors"].items()}
    return entry["json"], tensors


def restore_rank_rng(state: dict[str, Any], ctx: DistContext, *, seed: int) -> None:
    """This rank's RNG streams from a checkpoint. Same world size: exactly the ones saved (the
    resumed run equals the uninterrupted one). Another world size: the prompts split differently
    anyway, so no saved stream belongs to a rank; each rank draws fresh streams from (seed, step,
    rank), reproducible for that world size, and says so."""
    saved = state.get("rank_rng") or []
    if len(saved) == ctx.world_size:
        ckpt.restore_rng(*_decode_rng(saved[ctx.rank]))
        return
    import logging
    import random

    import numpy as np

    stream = (int(seed) * 1_000_003 + int(state["step"]) * 1_009 + ctx.rank) % (2**32)
    random.seed(stream)
    np.random.seed(stream)
    torch.manual_seed(stream)
    if ctx.is_main:
        logging.getLogger("mpo_fast").warning(
            "resumed a checkpoint of world size %d on %d ranks: weights, optimizer, scheduler, data position and rubric "
            "continue; the per-rank sampling RNG streams are new (seeded from seed, step and rank), so the run differs "
            "from an uninterrupted one of world size %d", int(state.get("world_size", 1)), ctx.world_size,
            int(state.get("world_size", 1)))


# -- the trainer ----------------------------------------------------------------------------------


def make_distributed_trainer_class():
    from .trainer import MPOTrainer

    class DistributedMPOTrainer(MPOTrainer):
        """MPOTrainer on one rank of a data-parallel run (see the module docstring)."""

        def __init__(self, model, args=None, *a, **kw) -> None:
            ctx = current()
            if ctx is None:
                raise DistributedError("DistributedMPOTrainer needs an initialised process group; call init_distributed() first")
            self.dist = ctx
            args = copy.deepcopy(args)
            peft_config = kw.get("peft_config", a[3] if len(a) > 3 else None)
            self.mode = resolve_mode(args.train.distributed,
                                     lora=args.lora.enabled or peft_config is not None or is_peft_model(model))
            if self.mode == "fsdp2" and args.judge.backend == "local" and args.judge.model == "policy":
                raise ValueError("train.distributed=fsdp2 shards the policy's weights, which a local judge on the policy "
                                 "(judge.model=policy) reads on one rank at a time; use a judge server (judge.backend=openai), "
                                 "a separate judge.model, or train.distributed=ddp")
            if args.rollout.backend == "vllm" and self.mode == "fsdp2":
                # Each rank's engine holds the whole policy and is synced from this rank's parameters by
                # name; under fsdp2 a rank holds only its shards of them.
                raise ValueError("rollout.backend=vllm under torchrun syncs each rank's engine from that rank's full "
                                 "weights: use train.distributed=ddp (LoRA, or a policy that fits every GPU); with fsdp2 "
                                 "use rollout.backend=remote (vLLM servers) or hf")
            if args.rollout.backend == "vllm" and args.pipeline.mode == "overlapped":
                # The external-launcher engine joins the trainer's process group; its generation would
                # run on the producer thread while the trainer thread runs collectives.
                raise ValueError("rollout.backend=vllm under torchrun runs with pipeline.mode=serial (the colocated "
                                 "engine sleeps while the rank trains); for an overlapped pipeline use rollout.backend="
                                 "remote with vLLM servers")
            if args.pipeline.mode == "overlapped" and self.mode == "fsdp2":
                # The producer thread would generate on the sharded policy, whose forward all-gathers
                # parameters: collectives off the trainer thread, in an order no other rank shares.
                raise ValueError("pipeline.mode=overlapped runs under torchrun with train.distributed=ddp (LoRA, or a "
                                 "policy that fits every GPU); with fsdp2 use pipeline.mode=serial")
            if args.train.algorithm == "ppo" and self.mode == "fsdp2":
                # The value head stays outside FSDP2's units: its gradients would not be reduced.
                raise ValueError("train.algorithm=ppo runs under torchrun with train.distributed=ddp (LoRA, or a policy "
                                 "that fits every GPU); with fsdp2 use train.algorithm=grpo")
            shard_range(args.rollout.prompts_per_step, ctx.rank, ctx.world_size)  # fails fast on an uneven split
            args.log.progress = args.log.progress and ctx.is_main
            super().__init__(model, args, *a, **kw)
            # Rank 0 keeps the single-process stream; the others sample their own.
            torch.manual_seed(torch.initial_seed() + ctx.rank)
            self.sampler = ShardedSampler(self.sampler, ctx)
            u = self.updater
            updater_class = DataParallelUpdater
            if self.mode == "fsdp2":
                from . import fsdp

                updater_class = fsdp.ShardedUpdater
                if isinstance(self.rollout, HFRollout):  # generate on this process's sharded policy
                    self.rollout = fsdp.UnshardedRollout(self.rollout, self.model)
            head = ()
            if args.train.algorithm == "ppo":  # value head and policy: one global gradient sum (ppo_data_parallel.py)
                from .ppo_data_parallel import DataParallelPPOUpdater

                updater_class, head = DataParallelPPOUpdater, (u.value_head,)
            self.updater = updater_class(u.logprobs, *head, u.optimizer, u.scheduler, u.params, u.settings,
                                         max_tokens=u.max_tokens, device=u.device, ctx=ctx)
            self.meta_buffer = GatheredMetaBuffer(self.meta_buffer.capacity, ctx)
            if args.rollout.backend == "remote":
                self.rollout = MainRankWeightSync(self.rollout, ctx)

        def _setup_model(self, model, tokenizer, peft_config) -> None:
            """The ranks start from rank 0's weights (as DDP does at construction); under fsdp2 the
            policy (and the frozen KL reference) are then sharded, before the optimizer is built on
            the sharded parameters."""
            super()._setup_model(model, tokenizer, peft_config)
            broadcast_module(self.model)
            if self.value_head is not None:  # PPO's critic: every rank starts from rank 0's (random) head
                broadcast_module(self.value_head)
            if self.ref_model is not None:
                broadcast_module(self.ref_model)
            if self.mode != "fsdp2":
                return
            from . import fsdp

            fsdp.shard_model(self.model, self.dist)
            if self.ref_model is not None:
                fsdp.shard_model(self.ref_model, self.dist)
            self.params = [p for p in self.model.parameters() if p.requires_grad]
            self.logprobs = fsdp.ShardedPolicyLogprobs(self.model, temperature=self.args.rollout.temperature,
                                                       impl=self.args.model.logprob_impl, ref_model=self.ref_model)

        # -- run files and state ------------------------------------------------------------

        def _open_run_log(self, resume_step):
            return MainRankRunLog(self.dist, lambda: RunLog(self.args, resume_step=resume_step),
                                  limit=self.args.log.samples_per_step)

        def start_run(self):
            ctx = self.dist

            def prepare():
                step = self._prepare_output_dir()
                self.output_dir.mkdir(parents=True, exist_ok=True)
                self.store = RubricStore(self.output_dir / "rubrics")
                if step is None:
                    self.rubric_version = self.store.save(self.initial_rubric, step=0, analyses=())
                return step

            resume_step = run_on_main(ctx, prepare, "opening the output directory")
            state = None
            if resume_step is not None:
                path = ckpt.checkpoints_dir(self.output_dir) / f"step-{resume_step:06d}"
                # Weights, optimizer, scheduler, sampler and rubric do not depend on the world size
                # (DDP: rank 0's full files; fsdp2: DCP reshards): any torchrun world size resumes.
                if self.mode == "fsdp2":
                    from . import fsdp

                    state = fsdp.load_sharded_checkpoint(path, model=self.model, optimizer=self.optimizer,
                                                         scheduler=self.scheduler)
                else:
                    state = ckpt.load_checkpoint(path, model=self.model, optimizer=self.optimizer,
                                                 scheduler=self.scheduler, world_size=None)
                self.last_checkpoint = path
                self.restored_state = state  # the overlapped schedule's meta window and pending refinement
                if ctx.is_main:
                    self._load_state(state)
            version = checked_rubric(run_on_main(ctx, lambda: self.rubric_version, "loading the rubric"), ctx)
            if not ctx.is_main:
                self.store = ReplicaRubricStore()
                self.store.add(version)
                if state is not None:
                    self._load_state(state)
                self.rubric_version = version
            if state is not None:
                restore_rank_rng(state, ctx, seed=self.args.seed)
                self.rollout.sync_weights(self.model, self.policy_version)
            return resume_step

        def save_checkpoint(self, extra_state=None):
            ctx = self.dist
            rngs = all_gather(_encode_rng(*ckpt.capture_rng()))

            if self.mode == "fsdp2":
                from . import fsdp

                self.last_checkpoint = fsdp.save_sharded_checkpoint(
                    ctx, self.output_dir, self.step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                    state={**self._state(), **(extra_state or {}), "world_size": ctx.world_size, "rank_rng": rngs},
                    keep=self.args.log.save_total_limit,
                )
                return self.last_checkpoint

            def save():
                return ckpt.save_checkpoint(
                    self.output_dir, self.step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                    state={**self._state(), **(extra_state or {}), "world_size": ctx.world_size, "rank_rng": rngs},
                    keep=self.args.log.save_total_limit,
                )

            self.last_checkpoint = Path(run_on_main(ctx, save, f"saving the checkpoint of step {self.step}"))
            return self.last_checkpoint

        def summary(self, wall_seconds):
            with collective("the end-of-run barrier"):
                dist.barrier()  # rank 0 has written the last metrics row before anyone reads the file
            return super().summary(wall_seconds)

        # -- step hooks ---------------------------------------------------------------------

        def step_row(self, facts, trained, evolution_result=None):
            row = super().step_row(facts, trained, evolution_result)
            t = self.args.train
            if t.kl_in == "reward" and t.kl_coef > 0 and t.algorithm == "grpo":  # the same on every rank
                # StepUpdate.kl_reward_mean is the mean over this rank's valid samples: weight each
                # rank's mean by its count for the global mean.
                mean = row.get("kl_reward_mean")
                ok = mean is not None and mean == mean  # None / NaN: this rank had no valid sample
                parts = all_gather((float(mean) if ok else 0.0, self._local_valid if ok else 0))
                count = sum(c for _, c in parts)
                row["kl_reward_mean"] = sum(m * c for m, c in parts) / count if count else float("nan")
            return row

        def _update_rows(self, scored) -> list[int]:
            keep = super()._update_rows(scored)
            self._local_valid = len(keep)
            (global_rows,) = all_reduce_sum([len(keep)])
            if global_rows == 0:
                return []  # every rank skips the update together
            if not keep:
                self.updater.zero_weight_next = True
                return [0]
            return keep

        def _count_failures(self, step, scored) -> None:
            local_failed = sum(1 for j in scored.judgements if not j.ok)
            judged, failed = all_reduce_sum([len(scored.judgements), local_failed])
            # The base adds this rank's counts; add the other ranks' so every rank sees the global
            # tally and all stop together at judge.max_failure_rate.
            self.judged += int(judged) - len(scored.judgements)
            self.judge_failed += int(failed) - local_failed
            super()._count_failures(step, scored)

        def _maybe_evolve(self, step, signals):
            ctx = self.dist
            evolved = run_on_main(ctx, lambda: MPOTrainer._maybe_evolve(self, step, signals), f"evolving the rubric at step {step}")
            version = checked_rubric(run_on_main(ctx, lambda: self.rubric_version, "broadcasting the rubric"), ctx)
            if not ctx.is_main:
                self.store.add(version)
                if evolved is not None:
                    self.last_evolve_step = step
                self.rubric_version = version
            return evolved

        def _metrics_row(self, facts, update, evolution):
            """The shared row (step_record.metrics_row) over every rank's samples, gathered here."""
            ctx = self.dist
            scored = facts.scored
            local = {
                "hash": facts.rubric_version.hash,
                "judge_hashes": sorted({j.rubric_hash for j in scored.judgements if getattr(j, "rubric_hash", None)}),
                "rewards": scored.rewards.tolist(), "valid": scored.valid.tolist(),
                "judge_rewards": list(scored.judge_rewards), "rule_rewards": list(scored.rule_rewards),
                "func_rewards": scored.func_rewards,  # reward_funcs' values (rewards/<name>/mean)
                # Whole judgements (less their text) so rank 0's metrics see every field the
                # single-process row reads: failure causes, score mass, per-item scores.
                "judgements": [({**j.to_dict(), "rationale": ""}, j.cached) for j in scored.judgements],
                "lengths": facts.lengths, "finished": facts.finished,
                "degenerate": facts.degenerate_groups, "timings": dataclasses.asdict(facts.timings),
                "pool": pool.snapshot() if (pool := pool_of(self.judge)) is not None else None,
            }
            parts = all_gather(local)
            hashes = {p["hash"] for p in parts} | {h for p in parts for h in p["judge_hashes"]}
            if len(hashes) != 1:
                raise DistributedError(f"step {facts.step}: the ranks scored with different rubrics {sorted(hashes)}; "
                                       "the rubric broadcast failed")
            g = lambda key: [x for p in parts for x in p[key]]  # noqa: E731
            global_scored = stages.ScoredRollouts(
                rewards=torch.tensor(g("rewards"), dtype=torch.float32), valid=torch.tensor(g("valid"), dtype=torch.bool),
                judgements=[dataclasses.replace(Judgement.from_dict(d), cached=c) for d, c in g("judgements")],
                judge_rewards=g("judge_rewards"), rule_rewards=g("rule_rewards"),
                func_rewards={name: [x for p in parts for x in p["func_rewards"][name]] for name in parts[0]["func_rewards"]},
            )
            # The step lasts as long as its slowest rank: stage times are maxima, so samples/s and
            # generated tokens/s come out as the sums over ranks.
            slowest = StepTimings(**{k: max(p["timings"][k] for p in parts) for k in local["timings"]})
            global_facts = dataclasses.replace(facts, scored=global_scored, lengths=g("lengths"), finished=g("finished"),
                                               degenerate_groups=sum(p["degenerate"] for p in parts), timings=slowest)
            row = super()._metrics_row(global_facts, update, evolution)
            row["world_size"] = ctx.world_size
            if any(p["pool"] for p in parts):  # cumulative per-endpoint counters of every rank's judge pool
                row["judge_endpoints"] = merge_snapshots(p["pool"] for p in parts)
            return row

    return DistributedMPOTrainer


def distributed_trainer(*args, **kwargs):
    """A DistributedMPOTrainer (MPOTrainer's arguments); the process group must be initialised."""
    return make_distributed_trainer_class()(*args, **kwargs)
