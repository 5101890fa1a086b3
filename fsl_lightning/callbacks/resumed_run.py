"""A resumed run that continues the interrupted one: same logged steps, same metrics history, same best checkpoint.

A run resumed with ``--ckpt_path`` writes into a new version folder (nothing of the interrupted run is
overwritten), and Lightning alone lets it drift from the run it continues:

* its logged steps come out one higher than in an uninterrupted run (validation at step 250 instead of 249):
  on restart Lightning adds one to the logging step counter (``_batches_that_stepped``) to make up for
  checkpoints saved before the counter moves, also where the checkpoint was saved after it moved;
* its ``metrics.csv`` starts at the checkpoint's step;
* ``ModelCheckpoint`` drops the best score and the top-k files when its folder changes, so best-checkpoint
  tracking starts from scratch and the first validation of the resumed run counts as the best.

So each checkpoint records the logging step at which training goes on, and the CSV logger is flushed as it is
saved; a resumed run sets that step back, copies the earlier metrics rows into its own ``metrics.csv`` and
links the earlier best checkpoints into its own folder. Its folder then holds the whole run, as if it had never
been interrupted.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

CHECKPOINT_KEY = "fsl_resumed_run"


class ResumedRunContinuity(Callback):
    def __init__(self) -> None:
        self._next_logged_step: int | None = None  # the logging step of the next training batch
        self._restored_logged_step: int | None = None

    @property
    def state_key(self) -> str:
        return CHECKPOINT_KEY

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        # Lightning moves its counter after this hook and after validation, by one unless this batch only
        # accumulated gradients; a checkpoint saved in between must record where the counter goes.
        epoch_loop = trainer.fit_loop.epoch_loop
        self._next_logged_step = epoch_loop._batches_that_stepped + (0 if epoch_loop._should_accumulate() else 1)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state: dict[str, Any] = {}
        if self._next_logged_step is not None:
            state["next_logged_step"] = self._next_logged_step
        csv_logger = _csv_logger(trainer)
        if csv_logger is not None:
            csv_logger.save()  # the rows up to this checkpoint are on disk even if the run is killed next
            state["metrics_csv"] = str(Path(csv_logger.log_dir) / "metrics.csv")
        checkpoint[CHECKPOINT_KEY] = state

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY, {})
        if trainer.state.fn != "fit" or "next_logged_step" not in state:
            return  # evaluation, or a checkpoint from before this callback: nothing to continue
        self._restored_logged_step = state["next_logged_step"]
        _copy_metrics_history(trainer, state.get("metrics_csv"), before_step=self._restored_logged_step)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                _carry_best_checkpoints(callback, checkpoint.get("callbacks", {}).get(callback.state_key))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        if self._restored_logged_step is not None:  # the first batch after a restart, once Lightning set its count
            trainer.fit_loop.epoch_loop._batches_that_stepped = self._restored_logged_step
            self._restored_logged_step = None


def _csv_logger(trainer: L.Trainer) -> CSVLogger | None:
    return next((logger for logger in trainer.loggers if isinstance(logger, CSVLogger)), None)


def _copy_metrics_history(trainer: L.Trainer, earlier_csv: str | None, before_step: int) -> None:
    """Logs again, into this run's CSV logger, the rows of the interrupted run up to its checkpoint."""
    csv_logger = _csv_logger(trainer)
    if csv_logger is None or not earlier_csv or not Path(earlier_csv).is_file():
        return
    if Path(earlier_csv).resolve() == (Path(csv_logger.log_dir) / "metrics.csv").resolve():
        return  # resumed into the same folder: the rows are already there
    with open(earlier_csv, newline="") as file:
        for row in csv.DictReader(file):
            step = int(row.pop("step"))
            if step < before_step:  # later rows were logged after the checkpoint: the resumed run logs them again
                csv_logger.experiment.log_metrics({key: _number(value) for key, value in row.items() if value}, step)


def _number(text: str) -> int | float:
    try:
        return int(text)  # the epoch column
    except ValueError:
        return float(text)


def _carry_best_checkpoints(callback: ModelCheckpoint, state: dict[str, Any] | None) -> None:
    """Links the interrupted run's top-k checkpoints into this run's folder and points the saved state at them,
    so that ModelCheckpoint, finding its own folder in the state, restores the best score and the top k."""
    if not state or not callback.dirpath or state.get("dirpath") in (None, callback.dirpath):
        return
    folder = Path(callback.dirpath)
    moved = {old: str(_link_into(Path(old), folder)) for old in state.get("best_k_models", {}) if Path(old).is_file()}
    state["best_k_models"] = {moved[old]: score for old, score in state["best_k_models"].items() if old in moved}
    for key in ("best_model_path", "kth_best_model_path"):
        state[key] = moved.get(state.get(key, ""), "")
    state["last_model_path"] = ""  # this run writes its own last.ckpt
    state["dirpath"] = callback.dirpath


def _link_into(path: Path, folder: Path) -> Path:
    """A hard link (no extra disk space; the interrupted run's file stays untouched), or a copy across filesystems."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if not target.exists():
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    return target
