"""Training progress to follow on a terminal or in a log file (``python -m fsl_lightning fit ... > run.log 2>&1``).

Lightning's default bars count the batches of an epoch, which mean little in episodic training, and show no
training metric (the methods keep theirs off the bar, which would read them back from the device every step).
:class:`StepProgressBar` counts optimiser steps up to the run's last step and reports train loss and accuracy,
the last validation accuracy, episodes/s and the time left. It reads values back from the device only every
``every_n_steps`` steps or ``every_n_seconds`` seconds, whichever comes first. On a terminal it is a tqdm bar;
when stdout is not a terminal (a file, a pipe, a cluster job) it prints one plain line at that cadence instead,
one after each validation and one where training stops.
"""

from __future__ import annotations

import datetime
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Timer, TQDMProgressBar

from fsl_lightning.episode import Episode


@dataclass
class ProgressReading:
    """What one report shows; ``None`` where not known (yet)."""

    step: int
    total_steps: int | None
    loss: float | None = None
    accuracy: float | None = None
    val_accuracy: float | None = None
    per_second: float | None = None
    unit: str = "eps"  # what ``per_second`` counts: ``eps`` (episodes) or ``img`` (images, for pre-training)
    seconds_left: float | None = None

    def fields(self) -> dict[str, str]:
        """The known values, formatted, by short name (the bar's postfix; the plain line's parts)."""
        values = {
            "loss": _decimal(self.loss),
            "acc": _decimal(self.accuracy),
            "val_acc": _decimal(self.val_accuracy),
            f"{self.unit}/s": None if self.per_second is None else f"{self.per_second:.1f}",
            "eta": None if self.seconds_left is None else str(datetime.timedelta(seconds=round(self.seconds_left))),
        }
        return {name: value for name, value in values.items() if value is not None}

    def line(self) -> str:
        """``step 250/20000 | loss 0.5123 | acc 0.8120 | val_acc 0.9050 | eps/s 23.1 | eta 0:12:31``."""
        parts = [f"step {self.step}/{self.total_steps or '?'}"]
        parts += [f"{name} {value}" for name, value in self.fields().items()]
        return " | ".join(parts)


class StepProgressBar(TQDMProgressBar):
    """The CLI's progress bar (``progress:`` in a config): a bar on a terminal, plain lines in a log file.

    Args:
        every_n_steps: report (reading loss and accuracy back from the device) every this many optimiser steps;
            default the Trainer's ``log_every_n_steps``.
        every_n_seconds: report at least this often as well; ``None`` for steps only.
        plain_lines: print plain lines rather than draw a bar; default: when stdout is not a terminal.
    """

    #: steps / max_steps and the time so far; the rate and the time left are in the postfix (episodes/s, ``eta``)
    TRAIN_BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"

    def __init__(
        self, every_n_steps: int | None = None, every_n_seconds: float | None = 30.0, plain_lines: bool | None = None
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(
                f"progress.every_n_steps must be at least 1 (or null for log_every_n_steps), got {every_n_steps}."
            )
        if every_n_seconds is not None and every_n_seconds <= 0:
            raise ValueError(
                f"progress.every_n_seconds must be above 0 (or null for steps only), got {every_n_seconds}."
            )
        super().__init__()
        self.every_n_steps = every_n_steps
        self.every_n_seconds = every_n_seconds
        self.plain_lines = plain_lines
        self.reading = ProgressReading(step=0, total_steps=None)
        self._lines = False
        self._steps_between = every_n_steps or 1
        self._first = (0, 0.0)  # (step, time) where this run's training started: the time left averages from it
        self._last_report = (0, 0.0)  # (step, time) of the last report
        self._counted = 0  # episodes (or images) trained since the last report or validation
        self._counted_since = 0.0

    # ----- choosing the output -----------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._lines = self.plain_lines if self.plain_lines is not None else not sys.stdout.isatty()
        # Lightning's connectors set this Trainer attribute from outside its class: mypy does not see it
        self._steps_between = self.every_n_steps or trainer.log_every_n_steps  # type: ignore[attr-defined]

    @property
    def is_enabled(self) -> bool:
        # In plain-line mode the tqdm bars stay off (their carriage returns make a log file unreadable), and
        # LightningModule.print goes straight to stdout.
        return super().is_enabled and not self._lines

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """The bar's postfix: the last reading, after anything a method logs with ``prog_bar=True`` (no ``v_num``)."""
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {**metrics, **self.reading.fields()}

    # ----- training ----------------------------------------------------------------------------------------------
    def init_train_tqdm(self) -> Any:
        bar = super().init_train_tqdm()
        bar.bar_format = self.TRAIN_BAR_FORMAT
        return bar

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        now, step = time.monotonic(), trainer.global_step
        self._first = self._last_report = (step, now)
        self._counted, self._counted_since = 0, now
        total = trainer.estimated_stepping_batches
        self.reading = ProgressReading(step=step, total_steps=None if math.isinf(total) else int(total))
        bar = self.train_progress_bar
        bar.reset(total=self.reading.total_steps)
        bar.initial = bar.n = step  # a resumed run: tqdm's rate and percentage count from here
        bar.set_description("Training", refresh=False)
        if self._lines:
            self._say(self._plan(trainer))

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        pass  # one bar over all steps: Lightning's would restart at every epoch

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        count, self.reading.unit = _trained_items(batch)
        self._counted += count
        step = trainer.global_step
        self.train_progress_bar.update(step - self.train_progress_bar.n)  # tqdm redraws at most 10 times a second
        if not self._enabled or not self._due(step):  # rank 0 alone reports (ProgressBar.setup disables the others)
            return
        self._read_training(trainer)
        if self._lines:
            self._say(self.reading.line())
        else:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._enabled and self._lines and self.reading.step < trainer.global_step:
            self._read_training(trainer)  # where training stopped (max_steps, max_time, early stopping)
            self._say(self.reading.line())
        super().on_train_end(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._enabled and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.reading.val_accuracy = _read(trainer, "val/acc")
            if self._lines:
                ci95 = _read(trainer, "val/acc_ci95")
                margin = "" if ci95 is None else f" ± {ci95:.4f}"
                self._say(
                    f"validation at step {trainer.global_step}/{self.reading.total_steps or '?'}: "
                    f"val_acc {_decimal(self.reading.val_accuracy)}{margin}"
                )
            # Episodes/s and the next report by time count from here: training alone. The time left still
            # counts validation in (it averages from the first step).
            now = time.monotonic()
            self._counted, self._counted_since = 0, now
            self._last_report = (self._last_report[0], now)
        super().on_validation_end(trainer, pl_module)

    # ----- reports -----------------------------------------------------------------------------------------------
    def _due(self, step: int) -> bool:
        last_step, last_time = self._last_report
        if step <= last_step:  # several batches per step (gradient accumulation): one report per step
            return False
        by_steps = step - last_step >= self._steps_between
        by_time = self.every_n_seconds is not None and time.monotonic() - last_time >= self.every_n_seconds
        return by_steps or by_time

    def _read_training(self, trainer: Trainer) -> None:
        """Reads the logged values (the only device read-back), then times what the read has waited for."""
        reading = self.reading
        reading.loss, reading.accuracy = _read(trainer, "train/loss"), _read(trainer, "train/acc")
        now, step = time.monotonic(), trainer.global_step
        reading.step = step
        reading.per_second = self._counted / max(now - self._counted_since, 1e-9)
        reading.seconds_left = self._seconds_left(trainer, step, now)
        self._last_report = (step, now)
        self._counted, self._counted_since = 0, now

    def _seconds_left(self, trainer: Trainer, step: int, now: float) -> float | None:
        """Steps left at this run's average pace (validation included), or what ``max_time`` leaves if sooner."""
        first_step, first_time = self._first
        estimates = []
        if self.reading.total_steps is not None and step > first_step:
            estimates.append((self.reading.total_steps - step) * (now - first_time) / (step - first_step))
        # Lightning's connectors set this Trainer attribute from outside its class: mypy does not see it
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        timer = next((callback for callback in callbacks if isinstance(callback, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is not None:
            estimates.append(max(remaining, 0.0))
        return min(estimates, default=None)

    def _plan(self, trainer: Trainer) -> str:
        every = f"every {self._steps_between} steps"
        if self.every_n_seconds is not None:
            every += f" or {self.every_n_seconds:g} s"
        last = self.reading.total_steps or "?"
        return f"Training from step {trainer.global_step} to {last}; a progress line {every}."

    def _say(self, text: str) -> None:
        if self._enabled:  # rank 0 only (ProgressBar.setup disables the others)
            print(text, flush=True)  # a file's stdout is block-buffered: flush, or the line shows up minutes late


def _trained_items(batch: Any) -> tuple[int, str]:
    """How many episodes a training batch holds (T for a meta-batch), or images for plain pre-training batches."""
    if isinstance(batch, Episode):
        return batch.num_tasks or 1, "eps"
    labels = getattr(batch, "labels", None)
    return (len(labels), "img") if labels is not None else (1, "batches")


def _read(trainer: Trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    return None if value is None else float(value)


def _decimal(value: float | None) -> str | None:
    return None if value is None else f"{value:.4f}"
