"""``fit --weights_from <checkpoint>``: a new run that starts from a checkpoint's weights.

Unlike ``--ckpt_path``, which resumes a run (weights, optimiser and scheduler state, step count, episode stream),
this takes the weights only: the optimiser, the learning-rate schedule and the step count start afresh, so new
optimiser settings (a lower learning rate after a NaN loss) take effect.
"""

from __future__ import annotations

from pathlib import Path

from lightning import LightningModule
from torch import nn

from fsl_lightning.backbones.dropblock import restart_dropblock_schedules
from fsl_lightning.checkpoint_io import load_checkpoint_file
from fsl_lightning.run.checkpoint_files import restore_weights
from fsl_lightning.run.errors import UserError


def load_weights(model: LightningModule, checkpoint_file: Path) -> None:
    """Loads the weights of ``checkpoint_file`` into ``model``, as Lightning restores a model, and nothing else."""
    if not checkpoint_file.is_file():
        raise UserError(f"--weights_from: no checkpoint file {checkpoint_file}. Pass a .ckpt file, `last` or `best`.")
    checkpoint = load_checkpoint_file(checkpoint_file)  # an unsafe or truncated file: one line naming it
    try:
        restore_weights(model, checkpoint)
    except RuntimeError as error:
        reason = " ".join(str(error).split())  # PyTorch lists the mismatched keys over many lines
        raise UserError(
            f"--weights_from {checkpoint_file}: its weights do not fit this model (another method or backbone?): "
            f"{reason}"
        ) from error
    print(f"Starting from the weights of {checkpoint_file} (fresh optimiser and learning-rate schedule)")


def load_backbone_weights(
    backbone: nn.Module, checkpoint_file: Path, option: str, how_to_make_it: str, prefix: str = "backbone."
) -> None:
    """Loads the ``prefix``-ed weights of another run's checkpoint into ``backbone``, and nothing else: a method
    that meta-trains from a pre-trained backbone (FEAT's ``backbone_checkpoint``, Meta-Baseline's stage 1) starts
    from a pre-training run (Transfer, ProtoNet...) whose other weights (its classifier head) it does not have.
    Every weight of ``backbone`` must be in the checkpoint, with its shape; DropBlock ramps restart from 0 (the
    reference codes do not save their counters with the weights). Errors name the config ``option`` and, for a
    missing file, say ``how_to_make_it``."""
    if not checkpoint_file.is_file():
        raise UserError(f"{option}: no checkpoint file {checkpoint_file}. {how_to_make_it}")
    state = load_checkpoint_file(checkpoint_file).get("state_dict", {})
    wanted = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    try:
        if not wanted:
            raise RuntimeError(f"it holds no {prefix}* weights")
        backbone.load_state_dict(wanted, strict=True)
        restart_dropblock_schedules(backbone)  # a new stage: its DropBlock ramps up from the start
    except RuntimeError as error:
        reason = " ".join(str(error).split())  # PyTorch lists the mismatched keys over many lines
        raise UserError(
            f"{option} {checkpoint_file}: its {prefix}* weights do not fit this backbone: pass the checkpoint of a "
            f"run with the same backbone settings as this config ({reason})"
        ) from error
    print(f"Starting the backbone from the weights of {checkpoint_file} ({option})")
