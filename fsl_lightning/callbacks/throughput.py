"""Training speed as users feel it: episodes per second through the whole Trainer loop, and time to accuracy."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class EpisodeThroughput(Callback):
    """Training episodes/s from step ``warmup_steps`` to the end of that epoch, and time to each val result.

    The device is synchronised only at the two ends of the timed window, so the measurement adds no
    per-step host synchronisation; validation falls outside the window. With ``output_path`` the results
    are also written as JSON: ``episodes_per_s`` and a list of ``{step, seconds, val_acc}``.
    """

    def __init__(self, warmup_steps: int = 50, output_path: str | None = None) -> None:
        self.warmup_steps = warmup_steps
        self.output_path = Path(output_path) if output_path else None
        self.fit_start = 0.0
        self.window_start: tuple[int, float] | None = None
        self.episodes_per_s: float | None = None
        self.validations: list[dict[str, float]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.window_start is None and trainer.global_step >= self.warmup_steps:
            _synchronize(pl_module.device)
            self.window_start = (trainer.global_step, time.perf_counter())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.window_start is None or self.episodes_per_s is not None:
            return
        _synchronize(pl_module.device)
        first_step, started = self.window_start
        steps = trainer.global_step - first_step
        self.episodes_per_s = steps / (time.perf_counter() - started)
        pl_module.print(f"Training throughput: {self.episodes_per_s:.1f} episodes/s over {steps} steps")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        accuracy = trainer.callback_metrics.get("val/acc")
        if accuracy is not None and not trainer.sanity_checking:
            seconds = time.perf_counter() - self.fit_start
            self.validations.append({"step": trainer.global_step, "seconds": seconds, "val_acc": float(accuracy)})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.output_path is not None and trainer.is_global_zero:
            self.output_path.parent.mkdir(parents=True, exist_ok=True)
            summary = {"episodes_per_s": self.episodes_per_s, "validations": self.validations}
            self.output_path.write_text(json.dumps(summary, indent=2))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
