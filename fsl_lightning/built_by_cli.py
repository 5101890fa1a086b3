"""Whether a module is being built by LightningCLI from its config (then its checkpoint can keep the config)."""

from __future__ import annotations

try:  # set while LightningCLI instantiates a module from its config (Lightning >= 2.3)
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
except ImportError:  # pragma: no cover - older or newer Lightning without it
    _given_hyperparameters = None


def built_by_cli() -> bool:
    """Whether the init arguments being passed are config values (plain YAML data, kept in checkpoints by
    ``save_hyperparameters``) rather than live objects, which must not be pickled into a checkpoint."""
    return _given_hyperparameters is not None and _given_hyperparameters.get() is not None
