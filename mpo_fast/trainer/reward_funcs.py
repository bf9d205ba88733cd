"""Reward functions beside the judge, as TRL's GRPOTrainer takes them (`reward_funcs`, `reward_weights`).

    def no_shouting(completions, **kwargs):
        return [0.0 if c.isupper() else 1.0 for c in completions]

    MPOTrainer(model, args=cfg, judge=rm, reward_funcs=[no_shouting], reward_weights=[0.5, 1.0])

A reward function is called once per batch of samples, as TRL calls it:
`f(prompts=[...], completions=[...], completion_ids=[[...]], **columns)` where the columns are the
dataset's other fields (id, reference, label and any extra column of a dict row), one value per
sample. Conversational rows get their prompt as the list of messages and each completion as
`[{"role": "assistant", "content": text}]`, as TRL passes them. A function returns one float per
sample, or None where it does not apply; it may be async.

The judge's rubric reward (with the task's rule reward mixed in, task.rule_weight) is one more
component. Weights: `reward_weights[i]` weights `reward_funcs[i]`; an optional last weight is the
judge's (default 1.0), so a TRL user's list of len(reward_funcs) weights works unchanged.

    total = w_judge * judge + sum_i w_i * f_i      (terms that are None are left out, as TRL's nansum)

A failed judgement is never 0: the sample's total is masked, unless the judge's weight is 0 (the
judge then does not count). A sample where no weighted component has a value is masked too (TRL
would give it 0). The missing-EOS penalty is subtracted from the total.
"""
from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence


class RewardFuncError(ValueError):
    """A reward function that cannot be loaded or returned something unusable; the message names the fix."""


def load_reward_func(path: str) -> Callable:
    """'package.module:function' -> the function (the config's reward.funcs). Nothing is eval'd:
    the module is imported and the attribute looked up."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise RewardFuncError(
            f"reward function {path!r} is not an import path; write it as 'package.module:function' "
            "(e.g. 'my_rewards:format_reward', with my_rewards.py importable from the working directory); a reward "
            "model's name is not taken: wrap the model in a function"
        )
    module_name, attr = path.split(":")
    try:
        module = _import_from_cwd(module_name)
    except ImportError as e:
        raise RewardFuncError(
            f"reward function {path!r}: cannot import module {module_name!r} ({e}); make it importable (install it, or "
            "run from the directory that holds it / add that directory to PYTHONPATH)"
        ) from None
    func = module
    for part in attr.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise RewardFuncError(f"reward function {path!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(func):
        raise RewardFuncError(f"reward function {path!r} is a {type(func).__name__}, not a callable")
    return func


def _import_from_cwd(module_name: str):
    """Import as `python -m` would: the working directory is searched first. The `mpo-fast` console
    script does not put it on sys.path, so `reward.funcs: [my_rewards:fmt]` next to the config
    would otherwise not be found."""
    cwd = os.getcwd()
    if cwd in sys.path or "" in sys.path:
        return importlib.import_module(module_name)
    sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(cwd)


def _is_torch_module(obj) -> bool:
    try:
        import torch

        return isinstance(obj, torch.nn.Module)
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


def func_name(func: Callable) -> str:
    """TRL's name for a reward function: its __name__ (a functools.partial or object: its class name)."""
    name = getattr(func, "__name__", None) or getattr(getattr(func, "func", None), "__name__", None)
    return name or type(func).__name__


@dataclass(frozen=True)
class RewardFuncs:
    """Reward functions with their weights and the judge's weight (see the module docstring)."""

    funcs: tuple[Callable, ...]
    weights: tuple[float, ...]
    judge_weight: float = 1.0
    names: tuple[str, ...] = field(default=())
    # () -> transformers TrainerState, passed as trainer_state= (TRL does, for reward shaping by step)
    trainer_state: Callable[[], Any] | None = field(default=None, compare=False)

    @classmethod
    def build(cls, funcs: Sequence[Callable | str] | Callable | None, weights: Sequence[float] | None = None, *,
              trainer_state: Callable[[], Any] | None = None) -> "RewardFuncs | None":
        """None when there are no reward functions (the judge alone: today's reward, bit for bit)."""
        if funcs is None or (not callable(funcs) and len(funcs) == 0):
            if weights:
                raise RewardFuncError(f"reward_weights {list(weights)} were given without reward_funcs; pass the functions "
                                      "too, or drop the weights")
            return None
        funcs = [funcs] if callable(funcs) or isinstance(funcs, str) else list(funcs)
        resolved = tuple(load_reward_func(f) if isinstance(f, str) else f for f in funcs)
        for i, f in enumerate(resolved):
            if _is_torch_module(f):
                raise RewardFuncError(
                    f"reward_funcs[{i}] is a {type(f).__name__} (a model); TRL's sequence-classification reward models "
                    "are not taken as they are: wrap it in a function f(prompts, completions, **kw) -> list[float] "
                    "(the LLM judge is already the rubric reward model)"
                )
            if not callable(f):
                raise RewardFuncError(f"reward_funcs[{i}] is a {type(f).__name__}; pass a callable or an import path "
                                      "'package.module:function'")
        names = tuple(func_name(f) for f in resolved)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise RewardFuncError(f"reward functions {dup} share a name; their metrics (rewards/<name>/mean) would mix: "
                                  "give each function its own __name__")
        n = len(resolved)
        if weights is None:
            w, judge_w = [1.0] * n, 1.0
        else:
            w = [float(x) for x in weights]
            if len(w) not in (n, n + 1):
                raise RewardFuncError(
                    f"reward_weights has {len(w)} values for {n} reward functions; give {n} (one per function, the "
                    f"judge keeps weight 1.0) or {n + 1} (the last one weights the judge)"
                )
            judge_w = w.pop() if len(w) == n + 1 else 1.0
        if not all(math.isfinite(x) for x in (*w, judge_w)):
            raise RewardFuncError(f"reward_weights must be finite numbers, got {[*w, judge_w]}")
        return cls(funcs=resolved, weights=tuple(w), judge_weight=judge_w, names=names, trainer_state=trainer_state)


def _call(func: Callable, name: str, kwargs: dict[str, Any]):
    """func(**kwargs) as TRL calls it; the result may be an awaitable (an async reward function)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        params = ()
    if params and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        # A function without **kwargs gets what it names (TRL would raise TypeError on the rest).
        wanted = {p.name for p in params}
        missing = [p.name for p in params if p.default is inspect.Parameter.empty
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in kwargs]
        if missing:
            raise RewardFuncError(f"reward function {name!r} needs {missing}, which the data does not have; it is "
                                  f"called with {sorted(kwargs)} (add the column to the dataset rows, or take **kwargs)")
        kwargs = {k: v for k, v in kwargs.items() if k in wanted}
    return func(**kwargs)


def _values(out, name: str, n: int) -> list[float | None]:
    try:
        values = list(out)
    except TypeError:
        raise RewardFuncError(f"reward function {name!r} returned {type(out).__name__}; it must return a list of "
                              f"{n} floats (None where it does not apply)") from None
    if len(values) != n:
        raise RewardFuncError(f"reward function {name!r} returned {len(values)} values for {n} completions; return one "
                              "per completion, in order (None where it does not apply)")
    clean: list[float | None] = []
    for v in values:
        if v is None:
            clean.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
            raise RewardFuncError(f"reward function {name!r} returned {v!r}; rewards are floats (or None)")
        x = float(v)
        clean.append(x if math.isfinite(x) else None)  # NaN is "no value", as TRL reads it
    return clean


def func_kwargs(examples: Sequence[Any], texts: Sequence[str], completion_ids: Sequence[Sequence[int]]) -> dict[str, Any]:
    """TRL's keyword arguments for a batch: prompts, completions, completion_ids and the dataset's columns."""
    return {
        "prompts": [prompt_for_funcs(e) for e in examples],
        "completions": [completion_for_funcs(e, t) for e, t in zip(examples, texts)],
        "completion_ids": [list(c) for c in completion_ids],
        **columns_of(examples),
    }


def _with_state(funcs: RewardFuncs, kwargs: dict[str, Any]) -> dict[str, Any]:
    return kwargs if funcs.trainer_state is None else {**kwargs, "trainer_state": funcs.trainer_state()}


def call_funcs(funcs: RewardFuncs | None, kwargs: dict[str, Any], n: int, run_async: Callable) -> dict[str, list[float | None]]:
    """Every reward function's values (serial schedule: async functions run on `run_async`)."""
    if funcs is None:
        return {}
    kwargs = _with_state(funcs, kwargs)
    out = {}
    for f, name in zip(funcs.funcs, funcs.names):
        raw = _call(f, name, kwargs)
        out[name] = _values(run_async(raw) if inspect.isawaitable(raw) else raw, name, n)
    return out


async def call_funcs_async(funcs: RewardFuncs | None, kwargs: dict[str, Any], n: int) -> dict[str, list[float | None]]:
    """call_funcs on a running event loop (the overlapped schedule's judge loop)."""
    if funcs is None:
        return {}
    kwargs = _with_state(funcs, kwargs)
    out = {}
    for f, name in zip(funcs.funcs, funcs.names):
        raw = _call(f, name, kwargs)
        out[name] = _values(await raw if inspect.isawaitable(raw) else raw, name, n)
    return out


def combine(
    funcs: RewardFuncs | None,
    judge_rewards: Sequence[float | None],
    per_func: Mapping[str, Sequence[float | None]],
    *,
    finished: Sequence[bool],
    missing_eos_penalty: float,
) -> list[float | None]:
    """The reward of every sample of a batch (None: masked); both schedules' one place for it.

    judge_rewards: the judge's component per sample (rule reward already mixed in), None where the
    judgement failed; per_func: call_funcs' values. Without reward functions this is the judge's
    component minus the missing-EOS penalty, as before reward functions existed.
    """
    rewards: list[float | None] = []
    for i, judged in enumerate(judge_rewards):
        judged = judged if judged is not None and math.isfinite(judged) else None
        if funcs is None:
            total = judged
        elif judged is None and funcs.judge_weight != 0:
            total = None  # a failed judgement is never 0
        else:
            terms = [] if funcs.judge_weight == 0 else [funcs.judge_weight * judged]
            terms += [w * per_func[name][i] for w, name in zip(funcs.weights, funcs.names)
                      if w != 0 and per_func[name][i] is not None]
            total = math.fsum(terms) if terms else None  # nothing applied: masked (TRL would give 0)
        if total is not None and not finished[i]:
            total -= missing_eos_penalty
        rewards.append(total)
    return rewards


def func_metrics(per_func: Mapping[str, Sequence[float | None]], prefix: str = "") -> dict[str, float | None]:
    """TRL's per-function log keys: rewards/<name>/mean and /std over the samples it applied to."""
    out: dict[str, float | None] = {}
    for name, values in per_func.items():
        got = [v for v in values if v is not None]
        out[f"{prefix}rewards/{name}/mean"] = statistics.fmean(got) if got else None
        out[f"{prefix}rewards/{name}/std"] = statistics.pstdev(got) if len(got) > 1 else (0.0 if got else None)
    return out


def prompt_for_funcs(example) -> Any:
    """What a reward function sees as the prompt: the row's messages (conversational rows) or text."""
    messages = getattr(example, "messages", None)
    return [dict(m) for m in messages] if messages is not None else example.prompt


def completion_for_funcs(example, text: str) -> Any:
    if getattr(example, "messages", None) is not None:
        return [{"role": "assistant", "content": text}]
    return text


# Not passed as columns: what TRL leaves out, and the names of our own arguments.
_NOT_COLUMNS = {"prompt", "completion", "completion_ids", "prompts", "completions", "trainer_state"}


def columns_of(examples: Sequence[Any]) -> dict[str, list[Any]]:
    """The dataset's other fields, one list per column, for the reward functions' **kwargs: id,
    reference, label, and every extra column of the rows (a column missing in a row gives None)."""
    keys: list[str] = ["id", "reference", "label"]
    for e in examples:
        keys += [k for k in (e.meta or {}) if k not in keys and k not in _NOT_COLUMNS]
    out: dict[str, list[Any]] = {}
    for k in keys:
        if k in ("id", "reference", "label"):
            out[k] = [getattr(e, k) for e in examples]
        else:
            out[k] = [(e.meta or {}).get(k) for e in examples]
    return out
