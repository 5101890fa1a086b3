"""Training speed as users feel it: optimiser steps and episodes per second through the whole Trainer loop, and
time to accuracy."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from fsl_lightning.episode import Episode


class EpisodeThroughput(Callback):
    """Training speed from step ``warmup_steps`` to the end of that epoch, and time to each val result.

    Two rates over the same window: ``steps_per_s``, optimiser steps per second (meta-iterations for MAML-like
    methods), and ``episodes_per_s``, training episodes (tasks) per second: a meta-batch of
    ``data.train_tasks_per_batch`` tasks counts that many episodes, so for T tasks per batch it is T times
    ``steps_per_s`` (equal to it for one episode per batch; ``None`` when batches are not episodes, as in
    pre-training). The device is synchronised only at the two ends of the timed window, so the measurement adds
    no per-step host synchronisation; validation falls outside the window. With ``output_path`` the results are
    also written as JSON: ``steps_per_s``, ``episodes_per_s`` and a list of ``{step, seconds, val_acc}``.
    """

    def __init__(self, warmup_steps: int = 50, output_path: str | None = None) -> None:
        self.warmup_steps = warmup_steps
        self.output_path = Path(output_path) if output_path else None
        self.fit_start = 0.0
        self.window_start: tuple[int, float] | None = None
        self.episodes_in_window: int | None = 0  # None once a batch is not an episode
        self.steps_per_s: float | None = None
        self.episodes_per_s: float | None = None
        self.validations: list[dict[str, float]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_start = time.perf_counter()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.window_start is None and trainer.global_step >= self.warmup_steps:
            _synchronize(pl_module.device)
            self.window_start = (trainer.global_step, time.perf_counter())

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.window_start is None or self.steps_per_s is not None or self.episodes_in_window is None:
            return
        if isinstance(batch, Episode):
            self.episodes_in_window += batch.num_tasks or 1  # a shape: no host synchronisation
        else:
            self.episodes_in_window = None  # e.g. pre-training batches of images: steps/s only

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.window_start is None or self.steps_per_s is not None:
            return
        _synchronize(pl_module.device)
        first_step, started = self.window_start
        seconds = time.perf_counter() - started
        steps = trainer.global_step - first_step
        self.steps_per_s = steps / seconds
        episodes = self.episodes_in_window
        if episodes is None:
            rates = f"{self.steps_per_s:.2f} steps/s"
        else:
            self.episodes_per_s = episodes / seconds
            rates = f"{self.episodes_per_s:.1f} episodes/s"
            if episodes != steps:  # meta-batches of several tasks
                rates = f"{self.steps_per_s:.2f} meta-iterations/s ({rates})"
        pl_module.print(f"Training throughput: {rates} over {steps} steps")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        accuracy = trainer.callback_metrics.get("val/acc")
        if accuracy is not None and not trainer.sanity_checking:
            seconds = time.perf_counter() - self.fit_start
            self.validations.append({"step": trainer.global_step, "seconds": seconds, "val_acc": float(accuracy)})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.output_path is not None and trainer.is_global_zero:
            self.output_path.parent.mkdir(parents=True, exist_ok=True)
            summary = {
                "steps_per_s": self.steps_per_s,
                "episodes_per_s": self.episodes_per_s,
                "validations": self.validations,
            }
            self.output_path.write_text(json.dumps(summary, indent=2))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
