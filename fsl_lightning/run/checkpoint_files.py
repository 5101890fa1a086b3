"""Which checkpoint ``--ckpt_path last`` and ``--ckpt_path best`` name, and what a checkpoint says about its training.

Both aliases look at the newest run of the experiment (the logger's folder, all versions): ``last`` is that run's
newest ``last.ckpt``, ``best`` the ``best_model_path`` its ModelCheckpoint recorded. Lightning itself would look
only in the new run's own, still empty, folder: every command writes into a new version folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning import LightningModule

from fsl_lightning.checkpoint_io import load_checkpoint_file
from fsl_lightning.run.errors import UserError

ALIASES = ("last", "best")


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """``--ckpt_path last`` / ``best`` (or ``--weights_from``) names no checkpoint that exists."""


def resolve_checkpoint_alias(alias: str, root: Path) -> Path:
    """The file that ``--ckpt_path last`` or ``--ckpt_path best`` names under the experiment folder ``root``."""
    newest = newest_last_checkpoint(root)
    if alias == "last":
        return newest
    return best_checkpoint_of_run(newest)


def newest_last_checkpoint(root: Path) -> Path:
    """The newest ``last.ckpt`` (``last-v1.ckpt``...) under ``root``: the last weights of the newest run."""
    candidates = sorted(root.rglob("last*.ckpt"), key=lambda path: path.stat().st_mtime) if root.is_dir() else []
    if not candidates:
        raise CheckpointNotFoundError(
            f"--ckpt_path last/best: no last.ckpt under {root}. Pass the checkpoint file itself: "
            "--ckpt_path <file.ckpt> (or train first with `fit`)."
        )
    return candidates[-1]


def best_checkpoint_of_run(checkpoint: Path) -> Path:
    """The best checkpoint that the ModelCheckpoint of ``checkpoint``'s run had recorded when it saved ``checkpoint``."""
    recorded = [
        state.get("best_model_path")
        for key, state in read_checkpoint(checkpoint).get("callbacks", {}).items()
        if key.startswith("ModelCheckpoint") and state.get("monitor")
    ]
    best = next((Path(path) for path in recorded if path), None)
    if best is None:
        raise CheckpointNotFoundError(
            f"--ckpt_path best: the run of {checkpoint} recorded no best checkpoint (its ModelCheckpoint monitors no "
            "metric, or it never validated). Use --ckpt_path last or pass a checkpoint file."
        )
    if not best.is_file() and (checkpoint.parent / best.name).is_file():
        best = checkpoint.parent / best.name  # the run folder was moved or copied since
    if not best.is_file():
        raise CheckpointNotFoundError(
            f"--ckpt_path best: {checkpoint} records {best} as the best checkpoint, but that file is gone. "
            "Use --ckpt_path last or pass a checkpoint file."
        )
    return best


def training_config(checkpoint: Path) -> dict[str, Any]:
    """The ``model`` and ``data`` sections of the config that trained ``checkpoint`` (LightningCLI saves both as
    hyperparameters); sections the checkpoint lacks (a run outside the CLI, an older checkpoint) are left out."""
    return training_config_in(read_checkpoint(checkpoint))


def training_config_in(saved: dict[str, Any]) -> dict[str, Any]:
    """:func:`training_config` of a checkpoint already read (:func:`read_checkpoint`)."""
    config = {}
    model = dict(saved.get("hyper_parameters") or {})
    if "_class_path" in model:
        class_path = model.pop("_class_path")
        model.pop("_instantiator", None)
        config["model"] = {"class_path": class_path, "init_args": model}
    data = dict(saved.get("datamodule_hyper_parameters") or {})
    if data.pop("_instantiator", None):
        config["data"] = {key: value for key, value in data.items() if not key.startswith("predict_")}
    return config


def restore_weights(model: LightningModule, saved: dict[str, Any], strict: bool = True) -> None:
    """Puts the weights of a checkpoint already read into ``model`` as Lightning restores a model: its
    ``on_load_checkpoint`` first (some methods build their heads there, others drop caches), then the state dict."""
    model.on_load_checkpoint(saved)
    model.load_state_dict(saved["state_dict"], strict=strict)


def read_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's contents on the CPU, read without running code from it; an unsafe, truncated or corrupt
    file is a one-line error naming it."""
    # Memory-mapped: reading the settings alone does not read the weights.
    return load_checkpoint_file(checkpoint, mmap=True)
