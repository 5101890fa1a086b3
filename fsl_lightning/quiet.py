"""Silences library messages that are not the user's business, each by its own text (nothing else is hidden)."""

from __future__ import annotations

import logging
import warnings


class _LightningTips(logging.Filter):
    """Drops Lightning's advertisements for its cloud services ("💡 Tip: ... litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")


_TIPS = _LightningTips()


def silence_library_noise() -> None:
    """Hides, on every run: Lightning's tips, torch's deprecation of ``LeafSpec`` (used inside Lightning, nothing
    for the user to change) and Lightning's "Couldn't infer the batch indices" in ``predict`` (our predict batches
    are whole folders' worth of images, not samples of an indexed dataset; the CSV writer needs no indices)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_TIPS)  # adding the same filter again is a no-op
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched from your dataloader")
