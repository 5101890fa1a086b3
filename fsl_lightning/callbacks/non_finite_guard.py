"""Stops training at the first NaN/inf loss, before any checkpoint can save the broken weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from fsl_lightning.run.errors import UserError


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; the message says how to go on (a user's problem to solve)."""


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

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch, batch_idx
    ) -> None:
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
        raise NonFiniteLossError(
            f"The training loss became NaN or infinite at step {int(self.first_bad_step)} (learning rate now "
            f"{_learning_rate(trainer)}); training stopped. {_advice(newest_saved_checkpoint(trainer))}"
        )


def newest_saved_checkpoint(trainer: L.Trainer) -> Path | None:
    """The newest checkpoint of this run that exists on disk.

    ModelCheckpoint records a file's path before writing it, so the paths it holds may name a file that the
    guard kept from being written: only files on disk count.
    """
    paths = [
        path
        for callback in trainer.checkpoint_callbacks
        if isinstance(callback, ModelCheckpoint)  # the others (any Checkpoint) record no paths
        for path in (callback.last_model_path, callback.best_model_path, *callback.best_k_models)
        if path
    ]
    files = [Path(path) for path in dict.fromkeys(paths) if Path(path).is_file()]
    return max(files, key=lambda file: file.stat().st_mtime_ns, default=None)


def _learning_rate(trainer: L.Trainer) -> str:
    rates = sorted({group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups})
    return ", ".join(f"{rate:g}" for rate in rates) or "unknown"


def _advice(checkpoint: Path | None) -> str:
    lower_rate = "--model.init_args.optimizer.init_args.lr=<lower>"
    other_causes = (
        "Half precision or large gradients can also cause this: try --trainer.precision=32-true or "
        "--trainer.gradient_clip_val=1.0."
    )
    if checkpoint is None:
        return f"No checkpoint was written before that step: run the same command with `{lower_rate}`. {other_causes}"
    # Not --ckpt_path: resuming restores the optimiser and scheduler state, and with it the old learning rate.
    return (
        f"The newest checkpoint on disk, from before that step, is {checkpoint}. To go on from its weights with a "
        f"fresh optimiser and learning-rate schedule, run the same command with `{lower_rate} --weights_from "
        f"{checkpoint}`. {other_causes}"
    )
