"""Stops training at the first NaN/inf loss, before any checkpoint can save the broken weights."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard(Callback):
    """Raises :class:`NonFiniteLossError` naming the first step whose training loss was NaN or infinite.

    The check runs on the device every step; the host reads the verdict only every ``check_every_n_steps``
    steps, at the end of training, and whenever a checkpoint is about to be written, so the step needs no
    synchronisation and no checkpoint ever holds weights trained past a bad loss: the newest checkpoint on
    disk is the last good one.
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        self.check_every_n_steps = check_every_n_steps
        self.first_bad_step: torch.Tensor | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        if self.first_bad_step is None:
            self.first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        step = trainer.global_step - 1  # the step that produced this loss (global_step has moved on)
        bad = ~torch.isfinite(loss.detach()).all()
        self.first_bad_step = torch.where(bad & (self.first_bad_step < 0), step, self.first_bad_step)
        if trainer.global_step % self.check_every_n_steps == 0:
            self._raise_if_bad(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._raise_if_bad(trainer)  # raising here keeps the checkpoint from being written

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_if_bad(trainer)

    def _raise_if_bad(self, trainer: L.Trainer) -> None:
        if self.first_bad_step is None or int(self.first_bad_step) < 0:
            return
        checkpoint = trainer.checkpoint_callback
        last_good = (checkpoint.last_model_path or checkpoint.best_model_path) if checkpoint else ""
        raise NonFiniteLossError(
            f"The training loss became NaN or infinite at step {int(self.first_bad_step)}; training stopped. "
            f"Last good checkpoint: {last_good or 'none was written yet'}. Lower the learning rate, use "
            "fp32 (--trainer.precision=32-true) or clip gradients (--trainer.gradient_clip_val=1.0), then "
            "resume from that checkpoint with --ckpt_path."
        )
