"""The private Lightning names this project relies on, each still there: a Lightning release that renames or drops
one fails here, naming it and the module of ours that needs it, rather than somewhere in a run.

pyproject.toml bounds Lightning below its next minor version; when raising the bound, run this test first.
"""

from __future__ import annotations

import importlib

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI

#: (where Lightning has it, the name, our module that uses it)
MODULE_NAMES = [
    ("lightning.pytorch.core.mixins.hparams_mixin", "_given_hyperparameters", "fsl_lightning/run/built_by_cli.py"),
    ("lightning.fabric.utilities.cloud_io", "_is_local_file_protocol", "fsl_lightning/checkpoint_io.py"),
]
CLASS_NAMES = [
    (LightningCLI, "_parse_ckpt_path", "fsl_lightning/cli.py"),
    (LightningCLI, "_instantiate_trainer", "fsl_lightning/cli.py"),
    (LightningCLI, "_run_subcommand", "fsl_lightning/cli.py"),
    (ModelCheckpoint, "_should_save_on_train_epoch_end", "fsl_lightning/callbacks/checkpoint.py"),
    (ModelCheckpoint, "_should_skip_saving_checkpoint", "fsl_lightning/callbacks/checkpoint.py"),
    (ModelCheckpoint, "_save_last_checkpoint", "fsl_lightning/callbacks/checkpoint.py"),
    (ModelCheckpoint, "_monitor_candidates", "fsl_lightning/callbacks/checkpoint.py"),
]


@pytest.mark.parametrize("module, name, user", MODULE_NAMES, ids=lambda value: str(value))
def test_module_level_private_names_exist(module, name, user):
    assert hasattr(importlib.import_module(module), name), f"{module}.{name} is gone; {user} relies on it"


@pytest.mark.parametrize("owner, name, user", CLASS_NAMES, ids=lambda value: getattr(value, "__name__", str(value)))
def test_private_methods_exist(owner, name, user):
    assert callable(getattr(owner, name, None)), f"{owner.__name__}.{name} is gone; {user} relies on it"


def test_private_attributes_of_live_objects_exist(tmp_path):
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_checkpointing=False)
    epoch_loop = trainer.fit_loop.epoch_loop
    used_by = "fsl_lightning/callbacks/resumed_run.py"
    assert hasattr(epoch_loop, "_batches_that_stepped"), f"epoch_loop._batches_that_stepped is gone; {used_by}"
    assert callable(getattr(epoch_loop, "_should_accumulate", None)), (
        f"epoch_loop._should_accumulate is gone; {used_by}"
    )
    assert hasattr(L.LightningModule(), "_trainer"), (
        "LightningModule._trainer is gone; fsl_lightning/methods rely on it"
    )
    assert hasattr(TQDMProgressBar(), "_enabled"), (
        "TQDMProgressBar._enabled is gone; fsl_lightning/callbacks/progress.py"
    )


def test_the_cli_still_keeps_its_subcommand_parsers():
    """Set only while LightningCLI adds its subcommands (not with run=False): read from its source."""
    import inspect

    assert "self._subcommand_parsers" in inspect.getsource(LightningCLI), (
        "LightningCLI._subcommand_parsers is gone; fsl_lightning/cli.py relies on it"
    )
