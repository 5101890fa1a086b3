"""Silences library messages that are not the user's business, each by its own text (nothing else is hidden)."""

from __future__ import annotations

import logging
import warnings

from PIL import Image


class _LightningTips(logging.Filter):
    """Drops Lightning's advertisements for its cloud services ("💡 Tip: ... litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")


_TIPS = _LightningTips()


def silence_library_noise() -> None:
    """Hides, on every run: Lightning's tips, torch's deprecation of ``LeafSpec`` (used inside Lightning, nothing
    for the user to change) and Lightning's "Couldn't infer the batch indices" in ``predict`` (our predict batches
    are whole folders' worth of images, not samples of an indexed dataset; the CSV writer needs no indices), and PIL's
    warning for an image over its size limit (checked by :mod:`fsl_lightning.data.images`)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_TIPS)  # adding the same filter again is a no-op
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched from your dataloader")
    # PIL's warning for a large image: fsl_lightning.data.images checks every image's size itself and either
    # decodes it reduced or refuses it in one line
    warnings.filterwarnings(
        "ignore",
        message=r"Image size \(\d+ pixels\) exceeds limit of \d+ pixels, could be decompression bomb",
        category=Image.DecompressionBombWarning,
    )


def silence_episode_stream_noise() -> None:
    """Hides Lightning's warnings that do not apply to :class:`~fsl_lightning.data.EpisodicDataModule`'s loaders
    (called by its ``setup``, so that a data module used from Python is as quiet as the command line's):

    * "Your `IterableDataset` has `__len__` defined": episode streams know their length and are read by one process
      (the main one, or one background loader), so no worker sees a wrong length;
    * "You're resuming from a checkpoint that ended before the epoch ended": the training stream resumes from the
      data module's own state (its ``state_dict``: the batches done), which Lightning's check does not see.
    """
    warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


def silence_evaluation_noise() -> None:
    """Hides, in ``validate``, ``test`` and ``predict`` from a checkpoint, Lightning's advice to provide the
    callbacks that wrote it (a ModelCheckpoint, the Timer): they save and time training, and evaluation needs
    neither. In ``fit --ckpt_path`` the advice stays, since a resumed run may need them."""
    warnings.filterwarnings(
        "ignore",
        message="Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be "
        "provided during `Trainer` instantiation",
    )
