"""Callbacks: hooks a user's code runs at the trainer's events, ours and transformers' alike.

Our protocol (every method optional; duck-typed, no base class needed):

    class MyCallback:
        def on_train_begin(self, trainer): ...
        def on_step_end(self, trainer, step, metrics): ...        # after the step's metrics row is written
        def on_evolve(self, trainer, step, rubric_version): ...  # a new rubric (a RubricVersion) was installed
        def on_train_end(self, trainer): ...

To stop a run early, set `trainer.control.should_training_stop = True` (the trainer saves a checkpoint
at that step and returns, so the run can be resumed).

A `transformers.TrainerCallback` is accepted as it is (TRL users' callbacks): it is called with a
`TrainerState` (global_step, max_steps, log_history filled), a `TrainerControl` (the trainer's own:
`control.should_training_stop` is honoured) and a `TrainingArguments` built from the run's config,
at on_train_begin, on_step_end, on_log (the step's numeric metrics), on_evaluate (when the step ran
an evaluation; its metrics named eval_<key> as transformers' Trainer.evaluate names them), on_save (when it wrote a checkpoint) and on_train_end; an `on_evolve` method, if the
callback has one, is called too. There is no on_step_begin / on_substep_end (a step here is one
generate -> judge -> update round, not a gradient micro-step). Under torchrun the callbacks run
on every rank and the run stops when any rank asks to.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

log = logging.getLogger("mpo_fast")


@dataclass
class Control:
    """transformers' TrainerControl where transformers is missing (it is a dependency, so rarely)."""

    should_training_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False
    should_epoch_stop: bool = False


def new_control():
    try:
        from transformers import TrainerControl

        return TrainerControl()
    except ImportError:  # pragma: no cover
        return Control()


def _is_hf_callback(cb) -> bool:
    try:
        from transformers import TrainerCallback
    except ImportError:  # pragma: no cover
        return False
    if isinstance(cb, type) and issubclass(cb, TrainerCallback):
        raise TypeError(f"callbacks has the class {cb.__name__}; pass an instance, {cb.__name__}()")
    return isinstance(cb, TrainerCallback)


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar part of a metrics row, as transformers' log_history holds it."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            continue
        out[k] = v
    return out


class CallbackHandler:
    """Runs the user's callbacks for one trainer; both schedules call `step_end` once per step."""

    _EVENTS = ("on_train_begin", "on_step_end", "on_evolve", "on_train_end")

    def __init__(self, callbacks: Sequence[Any] | None, trainer) -> None:
        callbacks = list(callbacks or [])
        self.trainer = trainer
        self.native = []
        self.hf = []
        for cb in callbacks:
            if _is_hf_callback(cb):
                self.hf.append(cb)
            elif any(callable(getattr(cb, e, None)) for e in self._EVENTS):
                self.native.append(cb)
            else:
                raise TypeError(
                    f"callback {cb!r} has none of {list(self._EVENTS)}; write one of those methods, or pass a "
                    "transformers.TrainerCallback"
                )
        self.control = new_control()
        self._state = None
        self._args = None
        self._version = None

    def __bool__(self) -> bool:
        return bool(self.native or self.hf)

    # -- transformers' objects ------------------------------------------------------------------
    @property
    def state(self):
        """A transformers TrainerState mirroring the run (also what reward functions get as trainer_state)."""
        if self._state is None:
            from transformers import TrainerState

            a = self.trainer.args
            self._state = TrainerState(max_steps=a.train.max_steps, logging_steps=1,
                                       eval_steps=a.train.eval_steps or a.train.max_steps,
                                       save_steps=a.log.save_steps or a.train.max_steps,
                                       train_batch_size=a.samples_per_step, num_train_epochs=1)
        self._state.global_step = self.trainer.step
        return self._state

    def _hf_args(self):
        if self._args is None:
            a = self.trainer.args
            try:
                from transformers import TrainingArguments

                self._args = TrainingArguments(
                    output_dir=a.output_dir, max_steps=a.train.max_steps, learning_rate=a.train.learning_rate,
                    logging_steps=1, save_steps=a.log.save_steps or a.train.max_steps, report_to=[], seed=a.seed,
                    use_cpu=str(self.trainer.device) == "cpu",
                )
            except Exception as e:  # noqa: BLE001 - an exotic transformers version: the callback gets our config
                log.debug("TrainingArguments could not be built for the callbacks (%s); passing MPOConfig", e)
                self._args = a
        return self._args

    def _call_hf(self, event: str, **kwargs) -> None:
        t = self.trainer
        for cb in self.hf:
            fn = getattr(cb, event, None)
            if fn is None:
                continue
            result = fn(self._hf_args(), self.state, self.control, model=t.model, processing_class=t.tokenizer,
                        optimizer=t.optimizer, lr_scheduler=t.scheduler, **kwargs)
            if result is not None and result is not self.control and getattr(result, "should_training_stop", False):
                # transformers lets a callback return a new control; the trainer keeps its own object
                self.control.should_training_stop = True

    # -- events -------------------------------------------------------------------------------
    def train_begin(self) -> None:
        self.control.should_training_stop = False
        self._version = getattr(self.trainer.rubric_version, "version", None)
        for cb in self.native:
            if hasattr(cb, "on_train_begin"):
                cb.on_train_begin(self.trainer)
        self._call_hf("on_train_begin")

    def step_end(self, step: int, metrics: dict[str, Any], *, saved: bool = False) -> bool:
        """After step `step`'s metrics row is written (and its checkpoint, when `saved`); fires
        on_evolve first when the installed rubric changed. Returns whether training should stop."""
        t = self.trainer
        version = getattr(t.rubric_version, "version", None)
        if version is not None and version != self._version:
            self._version = version
            for cb in self.native:
                if hasattr(cb, "on_evolve"):
                    cb.on_evolve(t, step, t.rubric_version)
            self._call_hf("on_evolve", rubric_version=t.rubric_version)
        for cb in self.native:
            if hasattr(cb, "on_step_end"):
                cb.on_step_end(t, step, metrics)
        if self.hf:
            logs = _numeric(metrics)
            state = self.state
            state.log_history.append({**logs, "step": step})
            self._call_hf("on_step_end")
            self._call_hf("on_log", logs=logs)
            # transformers' Trainer.evaluate names them eval_<key> (TRL: eval_reward, eval_rewards/<f>/mean)
            evaluated = {"eval_" + k[len("eval/"):]: v for k, v in logs.items() if k.startswith("eval/")}
            if evaluated:
                self._call_hf("on_evaluate", metrics=evaluated)
            if saved:
                self._call_hf("on_save")
        return self._agreed_stop(bool(self.control.should_training_stop))

    def _agreed_stop(self, stop: bool) -> bool:
        """Under torchrun every rank runs the callbacks; one rank stopping alone would leave the
        others waiting in the next collective, so the ranks stop when any of them asks to."""
        from .distributed import all_gather, current

        if current() is None:
            return stop
        stop = any(all_gather(stop))
        self.control.should_training_stop = stop
        return stop

    def train_end(self) -> None:
        for cb in self.native:
            if hasattr(cb, "on_train_end"):
                cb.on_train_end(self.trainer)
        self._call_hf("on_train_end")
