"""Lightning's ModelCheckpoint, with a ``last.ckpt`` that is really the last state of the run."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class ModelCheckpoint(LightningModelCheckpoint):
    """Keeps the best checkpoints by the monitored metric, as Lightning's, and rewrites ``last.ckpt`` at every
    validation (or epoch end, for ``save_on_train_epoch_end``).

    Lightning 2.6 writes ``last.ckpt`` only when it also saves a top-k checkpoint, that is when the monitored
    metric improved: after the best validation, ``last.ckpt`` stops moving, so a run killed later resumes from the
    best step and trains again every step after it.
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: L.Trainer) -> None:
        # the skip test is also true when this step was saved already (top-k and last together)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
