"""Callbacks that interrupt or slow a real training run, for tests that run the CLI in a subprocess."""

from __future__ import annotations

import os
import signal
import time

import torch
from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """Kills its own process (SIGKILL: no clean-up, no flush) as training step ``step`` is about to start."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class CheckpointBallast(Callback):
    """Makes every checkpoint ``megabytes`` larger, so that writing it takes long enough to be interrupted."""

    def __init__(self, megabytes: int = 100) -> None:
        self.ballast = torch.ones(megabytes * 2**20 // 4)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint["ballast"] = self.ballast


class SlowSteps(Callback):
    """Adds ``seconds`` to every training step, and ``then_seconds`` instead from step ``from_step`` on: a slow machine,
    and one whose pace changes midway, for tests of what a time budget does."""

    def __init__(self, seconds: float = 0.1, from_step: int | None = None, then_seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.from_step = from_step
        self.then_seconds = then_seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        changed = self.from_step is not None and trainer.global_step >= self.from_step
        time.sleep(self.then_seconds if changed else self.seconds)
