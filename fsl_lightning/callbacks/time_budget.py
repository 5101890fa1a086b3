"""A learning-rate schedule that ends inside ``trainer.max_time``: a run capped by the clock ends annealed on any CPU.

A schedule fixed in steps and cut by a clock (``--trainer.max_steps=8000 --trainer.max_time=...``) ends annealed
only on a machine fast enough for all its steps; on a slower one the clock stops it with the learning rate still
high. This callback, in ``fit`` with ``max_time`` set, times real training steps early in the run and then fixes
the step count N: ``max_steps`` becomes N and the scheduler's length is scaled by N / ``max_steps``, so that the
schedule ends with the last step that fits the budget.

Why this mechanism (time real steps, then fix N) and not the alternatives:

* a schedule over elapsed time (the learning rate a function of the clock) ends annealed whatever happens, but the
  same config then gives other weights on another machine or another day: no run could be repeated;
* a timing probe before training (throw-away steps on a copy) would miss Lightning's loop, the data pipeline and
  the checkpoints, and cost its own time;
* here the clock decides integers at known steps; between them the run is a run by steps. The plan, a list of
  ``(step, step count)`` changes, is recorded in the checkpoint (a resumed run keeps it) and in the run's
  ``config.yaml`` as ``time_budget.plan``; with it set, the callback makes the same changes at the same steps
  without timing anything, so ``fit --config <run>/config.yaml --trainer.max_time=null`` repeats the run exactly, on
  any machine.

The timing covers ``timed_steps`` steps after ``warmup_steps`` (the allocator, oneDNN's kernel caches and the data
pipeline settle first); N keeps ``margin`` of the remaining time in reserve for the checkpoints, validation and a
noisy machine. A shared machine's pace changes during a run (measured: 9% slower over a 15-minute run while
another job started), so the pace is checked again about ``checks`` times over the planned steps and the schedule
scaled again when the plan no longer fits even with the reserve spent, or when notably more steps fit (never beyond
the configured ones; the pace measured since the last change): for cosine and polynomial decay, which still decay smoothly to their final value when
rescaled midway. A budget that holds every configured step changes nothing. Under DDP rank 0's clock decides for
every rank. Schedulers whose length it knows how to scale: ``CosineAnnealingLR``
(``T_max``), ``LinearLR`` and ``PolynomialLR`` (``total_iters``), ``StepLR`` (``step_size``) and ``MultiStepLR``
(``milestones``), whose shape over the run is kept (``StepLR`` halves as often over N steps as over ``max_steps``).
"""

from __future__ import annotations

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

from fsl_lightning.run.atomic_files import written_atomically
from fsl_lightning.run.errors import UserError

STATE_KEY = "fsl_time_budget"
# the attribute that holds each scheduler's length (in scheduler steps)
LENGTH_ATTRIBUTE = {
    CosineAnnealingLR: "T_max",
    LinearLR: "total_iters",
    PolynomialLR: "total_iters",
    StepLR: "step_size",
}


class TimeBudgetSchedule(Callback):
    """Args:
    enabled: fit the schedule into ``trainer.max_time`` when it is set (``false``: the clock simply stops the run).
    plan: the changes an earlier run's plan made, as ``[step, step count]`` pairs (its ``config.yaml`` records
        them): made again at the same steps, without timing, with or without ``max_time``. ``None``: plan from
        the clock.
    warmup_steps: steps before the timing starts.
    timed_steps: steps timed; the plan is made after ``warmup_steps + timed_steps`` steps.
    margin: the share of the remaining time kept in reserve.
    checks: how many times the pace is checked again over the planned steps; a machine that slowed down (or
        sped up) since the plan gets a shorter (longer) schedule, scaled again to end with the last step that
        fits. Only for schedules that still end there when rescaled midway (``CosineAnnealingLR``,
        ``PolynomialLR``); ``0``: never.
    """

    def __init__(
        self,
        enabled: bool = True,
        plan: list[tuple[int, int]] | None = None,
        warmup_steps: int = 20,
        timed_steps: int = 50,
        margin: float = 0.05,
        checks: int = 10,
    ) -> None:
        if plan is not None and any(step < 1 or steps <= step for step, steps in plan):
            raise UserError(
                f"--time_budget.plan holds [step, step count] pairs with 0 < step < step count (as a run's "
                f"config.yaml records them), got {plan}. Leave it unset to plan from the clock."
            )
        if not 0 <= margin < 1:
            raise UserError(
                f"--time_budget.margin is the share of the remaining time kept in reserve, from 0 to "
                f"below 1 (default 0.05), got {margin}."
            )
        self.enabled = enabled
        self.plan = [tuple(change) for change in plan] if plan is not None else None
        self.warmup_steps = warmup_steps
        self.timed_steps = max(1, timed_steps)
        self.margin = margin
        self.checks = checks
        self._changes: list[tuple[int, int]] = []  # (step, step count) changes made in this run, the first the plan
        self._configured_steps: int | None = None  # trainer.max_steps before the plan
        self._active = False
        self._timing: tuple[int, float] | None = None  # (step, monotonic time) at which the current timing started
        self._next_timed_decision: int | None = None  # the step of the plan or of the next check

    @property
    def state_key(self) -> str:
        return STATE_KEY

    @property
    def planned_steps(self) -> int | None:
        """The step count the run trains for, once planned."""
        return self._changes[-1][1] if self._changes else None

    @property
    def plan_changes(self) -> list[tuple[int, int]]:
        """The (step, step count) changes made so far: the plan, then each rescaling by a check."""
        return list(self._changes)

    def _planned(self) -> int:
        """``planned_steps`` where a plan was made (a resumed run's, or this run's first change) by construction."""
        if not self._changes:
            raise RuntimeError("time_budget: the planned step count was read before any plan was made")
        return self._changes[-1][1]

    def _configured(self) -> int:
        """``trainer.max_steps`` as configured, recorded by ``on_train_start`` (or a resumed run's checkpoint)."""
        if self._configured_steps is None:
            raise RuntimeError("time_budget: the configured step count was read before on_train_start")
        return self._configured_steps

    def state_dict(self) -> dict[str, Any]:
        return {"plan": self._changes, "configured_steps": self._configured_steps} if self._changes else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:  # a run resumed after its plan keeps it (the scheduler's saved state holds its new length)
            if "plan" in state_dict:
                self._changes = [tuple(change) for change in state_dict["plan"]]
            else:  # the first version's checkpoints: one plan, no later changes
                self._changes = [(state_dict["plan_step"], state_dict["planned_steps"])]
            self._configured_steps = state_dict["configured_steps"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._changes:  # resumed after the plan: the step count it chose, not the config's
            _set_max_steps(trainer, self._planned())
            # no more checks: the clock of a resumed run would make other changes than the interrupted run's; a plan
            # being repeated (``plan``) goes on with its later changes
            self._active = self.enabled and self.plan is not None
            rank_zero_info(f"Resumed run: {self.planned_steps} steps, as planned for its time budget.")
        else:
            self._active = self._should_plan(trainer)
            self._configured_steps = trainer.max_steps

    def _should_plan(self, trainer: L.Trainer) -> bool:
        if not self.enabled or not (_has_clock(trainer) or self.plan is not None):
            return False  # no clock and no plan to repeat: the run goes as configured
        if not trainer.lr_scheduler_configs:
            return False  # no schedule to fit
        unknown = [
            type(config.scheduler).__name__
            for config in trainer.lr_scheduler_configs
            if not _scalable(config.scheduler)
        ]
        if unknown or trainer.max_steps < 1:
            reason = (
                f"it cannot scale the length of {', '.join(unknown)}"
                if unknown
                else "trainer.max_steps is not set (the schedule's length in steps)"
            )
            rank_zero_warn(
                f"time_budget: the schedule is not fitted to the time budget because {reason}; the clock "
                "may stop training before the schedule ends. --time_budget.enabled=false silences this."
            )
            return False
        return True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self._active:
            return
        step = trainer.global_step
        if self.plan is not None:  # repeating an earlier run: its changes at its steps
            for change_step, steps in self.plan:
                if change_step == step and (change_step, steps) not in self._changes:
                    self._change(trainer, steps, step)
            return
        if self._timing is None:  # set, with the plan's step, once the warm-up steps are done
            self._start_timing(trainer, step)
            return
        if self._next_timed_decision is None:  # set with the timing; cleared only together with _active
            raise RuntimeError("time_budget: timing without a next decision step")
        if step < self._next_timed_decision:
            return
        steps_left = float(trainer.strategy.broadcast(self._steps_left_in_budget(trainer, step), src=0))  # rank 0's
        fits = step + int(steps_left * (1 - self.margin))  # clock decides for every rank
        if not self._changes or self._worth_changing(step + int(steps_left), fits):
            self._change(trainer, fits, step)
            self._timing = (step, time.monotonic())  # the pace of the new plan is measured from here
        self._schedule_next_check(trainer, step)

    def _worth_changing(self, fits_without_reserve: int, fits: int) -> bool:
        """The plan no longer fits even with the whole reserve spent, or notably more steps fit (more than ``margin``
        more, up to the configured steps: a plan made while the machine was busy is not kept when it is quiet
        again). Between the two the plan stands: the reserve absorbs a noisy pace (validation, checkpoints, other
        processes), and the pace is measured since the last change, over ever more steps while nothing changes."""
        more = min(fits, self._configured()) > self._planned() * (1 + self.margin)
        return fits_without_reserve < self._planned() or more

    def _start_timing(self, trainer: L.Trainer, step: int) -> None:
        if step >= self.warmup_steps:
            self._timing = (step, time.monotonic())
            # a run resumed past the usual plan step (from a checkpoint of a run without a plan) times from here
            self._next_timed_decision = max(self.warmup_steps + self.timed_steps, step + self.timed_steps)

    def _schedule_next_check(self, trainer: L.Trainer, step: int) -> None:
        rechecks = self.checks > 0 and all(_ends_where_rescaled(c.scheduler) for c in trainer.lr_scheduler_configs)
        interval = max(self.timed_steps, (self._planned() - step) // max(self.checks, 1))
        self._next_timed_decision = step + interval if rechecks and step + interval < self._planned() else None
        if self._next_timed_decision is None:
            self._active = False  # no more decisions to take in this run

    def _steps_left_in_budget(self, trainer: L.Trainer, step: int) -> float:
        """The steps the time left holds at the pace since the plan's last change (no reserve kept)."""
        if self._timing is None:
            raise RuntimeError("time_budget: the steps left were asked for before the timing started")
        timed_from, started = self._timing
        rate = (step - timed_from) / max(time.monotonic() - started, 1e-9)
        timer = _timer(trainer)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is None:  # timing runs only with a clock: without one, _should_plan needs a plan to repeat
            raise RuntimeError("time_budget: timing the steps without trainer.max_time")
        return rate * remaining

    def _change(self, trainer: L.Trainer, steps: int, step: int) -> None:
        current = self.planned_steps or self._configured()
        steps = max(min(steps, self._configured()), step + 1)
        if steps != current:
            for config in trainer.lr_scheduler_configs:
                _scale_length(config.scheduler, steps / current)
            _set_max_steps(trainer, steps)
        self._changes.append((step, steps))
        config_file = _saved_config_file(trainer)  # on every rank: trainer.log_dir is a collective under DDP
        if trainer.is_global_zero:
            self._record(trainer, step, current, config_file)

    def _record(self, trainer: L.Trainer, step: int, before: int, config_file: Path | None) -> None:
        """The plan in the run's config.yaml and the loggers' hyperparameters, and the command that repeats it."""
        plan = [list(change) for change in self._changes]
        for logger in trainer.loggers:
            logger.log_hyperparams({"time_budget.plan": plan})
        if config_file is not None:
            config = yaml.safe_load(config_file.read_text()) or {}
            config.setdefault("time_budget", {})["plan"] = plan
            with written_atomically(config_file, "w") as file:
                file.write(yaml.safe_dump(config, sort_keys=False))
            repeat = f"python -m fsl_lightning fit --config {config_file} --trainer.max_time=null"
        else:
            repeat = f"the same command with --time_budget.plan='{plan}' --trainer.max_time=null"
        if self.planned_steps == before:
            change = "all of them fit the budget"
        elif len(self._changes) == 1:
            change = f"schedule scaled from {before} steps to end with them"
        else:
            pace = (
                "slowed down: the {} planned no longer fit"
                if self._planned() < before
                else ("sped up: more than the {} planned fit now")
            )
            change = f"the steps {pace.format(before)}; the schedule is scaled again to end with them"
        rank_zero_info(
            f"Time budget: training {self.planned_steps} steps ({change}; at step {step}). "
            f"Repeat this run by steps, without a clock: {repeat}"
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        before_the_plan = self._active and not self._changes and self.plan is None
        if before_the_plan and trainer.global_step < trainer.max_steps and not trainer.interrupted:
            rank_zero_warn(
                f"time_budget: the clock stopped training at step {trainer.global_step}, before the plan (step "
                f"{self.warmup_steps + self.timed_steps}): the budget is too short to time the steps, and the "
                "learning rate had not reached the schedule's end. Lower --time_budget.warmup_steps and "
                "--time_budget.timed_steps, or give a longer --trainer.max_time."
            )
        if self._changes and trainer.global_step < self._planned() and not trainer.interrupted:
            rank_zero_warn(
                f"time_budget: the clock stopped training at step {trainer.global_step} of the {self.planned_steps} "
                "planned (the steps slowed down after the last check): the learning rate had not reached the "
                "schedule's end. A larger --time_budget.margin keeps more time in reserve."
            )


def _scalable(scheduler: LRScheduler) -> bool:
    return isinstance(scheduler, (*LENGTH_ATTRIBUTE, MultiStepLR))


def _ends_where_rescaled(scheduler: LRScheduler) -> bool:
    """Whether ``scheduler``, its length scaled midway, still decays smoothly to its final value at the last step:
    the recursive forms of cosine and polynomial decay reach their end value at ``last_epoch == length`` from any
    learning rate; a step, a milestone or a linear ramp scaled midway can skip or repeat a decay."""
    return isinstance(scheduler, (CosineAnnealingLR, PolynomialLR))


def _scale_length(scheduler: LRScheduler, ratio: float) -> None:
    """Scales the length of ``scheduler`` by ``ratio`` in place (its state, so a checkpoint saves the new length)."""
    if isinstance(scheduler, MultiStepLR):
        milestones = scheduler.milestones.items()
        scheduler.milestones = Counter({max(1, round(step * ratio)): count for step, count in milestones})
        return
    attribute = next(name for kind, name in LENGTH_ATTRIBUTE.items() if isinstance(scheduler, kind))
    setattr(scheduler, attribute, max(1, round(getattr(scheduler, attribute) * ratio)))


def _set_max_steps(trainer: L.Trainer, steps: int) -> None:
    trainer.fit_loop.epoch_loop.max_steps = steps  # what trainer.max_steps reads


def _callbacks(trainer: L.Trainer) -> list[Callback]:
    # Lightning's callback connector sets trainer.callbacks from outside the Trainer class: mypy does not see it
    return trainer.callbacks  # type: ignore[attr-defined]


def _timer(trainer: L.Trainer) -> Timer | None:
    return next((callback for callback in _callbacks(trainer) if isinstance(callback, Timer)), None)


def _has_clock(trainer: L.Trainer) -> bool:
    """Whether ``trainer.max_time`` is set (a Timer without a duration has no time remaining)."""
    timer = _timer(trainer)
    return timer is not None and timer.time_remaining() is not None


def _saved_config_file(trainer: L.Trainer) -> Path | None:
    saver = next((callback for callback in _callbacks(trainer) if isinstance(callback, SaveConfigCallback)), None)
    if saver is None or not trainer.log_dir:
        return None
    path = Path(trainer.log_dir) / saver.config_filename
    return path if path.is_file() else None
