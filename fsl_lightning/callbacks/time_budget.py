"""A learning-rate schedule that ends inside ``trainer.max_time``: a run capped by the clock ends annealed on any CPU.

A schedule fixed in steps and cut by a clock (``--trainer.max_steps=8000 --trainer.max_time=...``) ends annealed
only on a machine fast enough for all its steps; on a slower one the clock stops it with the learning rate still
high. This callback, in ``fit`` with ``max_time`` set, times real training steps early in the run and then fixes
the step count N once: ``max_steps`` becomes N and the scheduler's length is scaled by N / ``max_steps``, so that the
schedule ends with the last step that fits the budget.

Why this mechanism (time real steps, then fix N) and not the alternatives:

* a schedule over elapsed time (the learning rate a function of the clock) ends annealed whatever happens, but the
  same config then gives other weights on another machine or another day: no run could be repeated;
* a timing probe before training (throw-away steps on a copy) would miss Lightning's loop, the data pipeline and
  the checkpoints, and cost its own time;
* here the clock decides a single integer, at a fixed step; from that step on the run is a run by steps. The plan is
  recorded in the checkpoint (a resumed run keeps it) and in the run's ``config.yaml`` as
  ``time_budget.planned_steps``; with it set, the callback makes the same change at the same step without timing
  anything, so ``fit --config <run>/config.yaml --trainer.max_time=null`` repeats the run exactly, on any machine.

The timing covers ``timed_steps`` steps after ``warmup_steps`` (the allocator, oneDNN's kernel caches and the data
pipeline settle first); N keeps ``margin`` of the remaining time in reserve for the checkpoints, validation and a
noisy machine. The plan only shortens: a budget that holds every configured step changes nothing. Under DDP rank 0's
plan is used by every rank. Schedulers whose length it knows how to scale: ``CosineAnnealingLR`` (``T_max``),
``LinearLR`` and ``PolynomialLR`` (``total_iters``), ``StepLR`` (``step_size``) and ``MultiStepLR`` (``milestones``),
whose shape over the run is kept (``StepLR`` halves as often over N steps as over ``max_steps``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, PolynomialLR, StepLR

STATE_KEY = "fsl_time_budget"
# the attribute that holds each scheduler's length (in scheduler steps)
LENGTH_ATTRIBUTE = {CosineAnnealingLR: "T_max", LinearLR: "total_iters", PolynomialLR: "total_iters", StepLR: "step_size"}


class TimeBudgetSchedule(Callback):
    """Args:
        enabled: fit the schedule into ``trainer.max_time`` when it is set (``false``: the clock simply stops the run).
        planned_steps: the step count of an earlier run's plan (its ``config.yaml`` records it): the same change at
            the same step, without timing, with or without ``max_time``. ``None``: plan from the clock.
        warmup_steps: steps before the timing starts.
        timed_steps: steps timed; the plan is made after ``warmup_steps + timed_steps`` steps.
        margin: the share of the remaining time kept in reserve.
    """

    def __init__(
        self,
        enabled: bool = True,
        planned_steps: int | None = None,
        warmup_steps: int = 20,
        timed_steps: int = 50,
        margin: float = 0.05,
    ) -> None:
        if planned_steps is not None and planned_steps < 1:
            raise ValueError(f"time_budget.planned_steps must be a positive step count, got {planned_steps}")
        if not 0 <= margin < 1:
            raise ValueError(f"time_budget.margin is a share of the remaining time in [0, 1), got {margin}")
        self.enabled = enabled
        self.planned_steps = planned_steps
        self.warmup_steps = warmup_steps
        self.timed_steps = max(1, timed_steps)
        self.margin = margin
        self._plan_step = warmup_steps + self.timed_steps  # the step at which the plan changes the run
        self._configured_steps: int | None = None  # trainer.max_steps before the plan
        self._applied = False
        self._active = False
        self._timing: tuple[int, float] | None = None  # (step, monotonic time) at which the timing started

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def state_dict(self) -> dict[str, Any]:
        if not self._applied:
            return {}
        return {"planned_steps": self.planned_steps, "plan_step": self._plan_step,
                "configured_steps": self._configured_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:  # a run resumed after its plan keeps it (the scheduler's saved state holds its new length)
            self.planned_steps = state_dict["planned_steps"]
            self._plan_step = state_dict["plan_step"]
            self._configured_steps = state_dict["configured_steps"]
            self._applied = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._applied:  # resumed after the plan: the step count it chose, not the config's
            _set_max_steps(trainer, min(self.planned_steps, self._configured_steps))
            rank_zero_info(f"Resumed run: {self.planned_steps} steps, as planned for its time budget.")
            return
        self._active = self._should_plan(trainer)
        self._configured_steps = trainer.max_steps

    def _should_plan(self, trainer: L.Trainer) -> bool:
        timed = _timer_duration(trainer) is not None
        if not self.enabled or not (timed or self.planned_steps is not None) or not trainer.lr_scheduler_configs:
            return False  # no clock, no plan to repeat, or no schedule to fit: the run goes as configured
        unknown = [type(config.scheduler).__name__ for config in trainer.lr_scheduler_configs
                   if not _scalable(config.scheduler)]
        if unknown or trainer.max_steps < 1:
            reason = (f"it cannot scale the length of {', '.join(unknown)}" if unknown
                      else "trainer.max_steps is not set (the schedule's length in steps)")
            rank_zero_warn(f"time_budget: the schedule is not fitted to the time budget because {reason}; the clock "
                           "may stop training before the schedule ends. --time_budget.enabled=false silences this.")
            return False
        return True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self._active or self._applied:
            return
        step = trainer.global_step
        if self.planned_steps is None and self._timing is None:
            if step >= self.warmup_steps:
                self._timing = (step, time.monotonic())
                # a run resumed past the usual plan step (from a checkpoint of a run without a plan) times from here
                self._plan_step = max(self._plan_step, step + self.timed_steps)
            return
        if step < self._plan_step:
            return
        planned = self.planned_steps if self.planned_steps is not None else self._steps_that_fit(trainer, step)
        self._apply(trainer, int(trainer.strategy.broadcast(planned, src=0)), step)

    def _steps_that_fit(self, trainer: L.Trainer, step: int) -> int:
        timed_from, started = self._timing
        rate = (step - timed_from) / max(time.monotonic() - started, 1e-9)
        left = _timer(trainer).time_remaining()
        planned = step + int(rate * left * (1 - self.margin))
        rank_zero_info(f"Time budget: {rate:.2f} steps/s over steps {timed_from}-{step}, {left:.0f} s left: "
                       f"{min(planned, self._configured_steps)} steps of the {self._configured_steps} configured fit.")
        return planned

    def _apply(self, trainer: L.Trainer, planned: int, step: int) -> None:
        self._applied = True
        self._plan_step = step
        self.planned_steps = max(min(planned, self._configured_steps), step + 1)
        if self.planned_steps < self._configured_steps:
            ratio = self.planned_steps / self._configured_steps
            for config in trainer.lr_scheduler_configs:
                _scale_length(config.scheduler, ratio)
            _set_max_steps(trainer, self.planned_steps)
        if trainer.is_global_zero:
            self._record(trainer)

    def _record(self, trainer: L.Trainer) -> None:
        """The plan in the run's config.yaml and the loggers' hyperparameters, and the command that repeats it."""
        for logger in trainer.loggers:
            logger.log_hyperparams({"time_budget.planned_steps": self.planned_steps})
        config_file = _saved_config_file(trainer)
        if config_file is not None:
            config = yaml.safe_load(config_file.read_text()) or {}
            config.setdefault("time_budget", {})["planned_steps"] = self.planned_steps
            _write_atomically(config_file, yaml.safe_dump(config, sort_keys=False))
            repeat = f"python -m fsl_lightning fit --config {config_file} --trainer.max_time=null"
        else:
            repeat = f"the same command with --time_budget.planned_steps={self.planned_steps} --trainer.max_time=null"
        shortened = self.planned_steps < self._configured_steps
        rank_zero_info(
            f"Time budget: training {self.planned_steps} steps"
            + (f" (schedule scaled from {self._configured_steps} steps to end with them)" if shortened else "")
            + f"; planned at step {self._plan_step}. Repeat this run by steps, without a clock: {repeat}"
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._applied and trainer.global_step < self.planned_steps and not trainer.interrupted:
            rank_zero_warn(
                f"time_budget: the clock stopped training at step {trainer.global_step} of the {self.planned_steps} "
                "planned (the steps slowed down after the plan was made): the learning rate had not reached the "
                "schedule's end. A larger --time_budget.margin keeps more time in reserve."
            )


def _scalable(scheduler: LRScheduler) -> bool:
    return isinstance(scheduler, (*LENGTH_ATTRIBUTE, MultiStepLR))


def _scale_length(scheduler: LRScheduler, ratio: float) -> None:
    """Scales the length of ``scheduler`` by ``ratio`` in place (its state, so a checkpoint saves the new length)."""
    if isinstance(scheduler, MultiStepLR):
        scheduler.milestones = Counter({max(1, round(step * ratio)): count for step, count in scheduler.milestones.items()})
        return
    attribute = next(name for kind, name in LENGTH_ATTRIBUTE.items() if isinstance(scheduler, kind))
    setattr(scheduler, attribute, max(1, round(getattr(scheduler, attribute) * ratio)))


def _set_max_steps(trainer: L.Trainer, steps: int) -> None:
    trainer.fit_loop.epoch_loop.max_steps = steps  # what trainer.max_steps reads


def _timer(trainer: L.Trainer) -> Timer | None:
    return next((callback for callback in trainer.callbacks if isinstance(callback, Timer)), None)


def _timer_duration(trainer: L.Trainer) -> float | None:
    timer = _timer(trainer)
    return None if timer is None else timer.time_remaining()  # None when the Timer has no duration


def _saved_config_file(trainer: L.Trainer) -> Path | None:
    saver = next((callback for callback in trainer.callbacks if isinstance(callback, SaveConfigCallback)), None)
    if saver is None or not trainer.log_dir:
        return None
    path = Path(trainer.log_dir) / saver.config_filename
    return path if path.is_file() else None


def _write_atomically(path: Path, text: str) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(temporary, path)
