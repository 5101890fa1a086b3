"""Whether a module is being built by LightningCLI from its config (then its checkpoint can keep the config)."""

from __future__ import annotations

from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import torch

_given_hyperparameters: ContextVar[Any] | None
try:  # set while LightningCLI instantiates a module from its config (Lightning >= 2.3)
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
except ImportError:  # pragma: no cover - older or newer Lightning without it
    _given_hyperparameters = None


def built_by_cli() -> bool:
    """Whether the init arguments being passed are config values (plain YAML data, kept in checkpoints by
    ``save_hyperparameters``) rather than live objects, which must not be pickled into a checkpoint."""
    return _given_hyperparameters is not None and _given_hyperparameters.get() is not None


def drop_live_objects(hyperparameters: MutableMapping[str, Any]) -> None:
    """Removes from ``hyperparameters`` every value that is not plain data (numbers, strings, tensors and lists or
    dicts of them): a module built in Python (not by the CLI) gets live objects as arguments (an episode
    classifier, an augmentation), which, pickled into its checkpoints, would make them refuse to load
    (``weights_only``). As for the backbone, whoever loads such a checkpoint passes them again."""
    for key in [key for key, value in hyperparameters.items() if not _plain(value)]:
        del hyperparameters[key]


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _plain(item) for key, item in value.items())
    return False
