"""The command line: ``python -m fsl_lightning fit|validate|test|predict --config <yaml>``.

A LightningCLI: every argument of the data module, the method and the Trainer is settable from YAML or
the command line (``--data.evaluation.shot=5``). ``fit`` tests the best checkpoint when training ends,
unless ``--test_after_fit=false``; ``fit --ckpt_path last`` resumes the newest run of the same experiment.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import yaml
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from fsl_lightning.callbacks import NonFiniteLossGuard, PredictionCSVWriter, SpeedSettings, WandbTestMedia
from fsl_lightning.callbacks.progress import StepProgressBar
from fsl_lightning.callbacks.resumed_run import ResumedRunContinuity
from fsl_lightning.checkpoint_io import AtomicCheckpointIO, unreadable_checkpoint_reported
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.methods import METHODS, FewShotMethod
from fsl_lightning.wandb_setup import choose_wandb_mode


class FewShotCLI(LightningCLI):
    def __init__(self, **kwargs) -> None:
        super().__init__(
            model_class=FewShotMethod,
            datamodule_class=EpisodicDataModule,
            subclass_mode_model=True,
            save_config_callback=SaveAndLogConfig,
            # Checkpoints written whole or not at all; a resumed run that lines up with the one it continues.
            trainer_defaults={
                "plugins": {"class_path": f"{AtomicCheckpointIO.__module__}.{AtomicCheckpointIO.__name__}"},
                "callbacks": [ResumedRunContinuity()],
            },
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="After fit, test the best checkpoint (or the last)."
        )
        # Always present, so that one config serves every subcommand; each is inert where it does not apply.
        parser.add_lightning_class_args(PredictionCSVWriter, "prediction_writer")
        parser.add_lightning_class_args(NonFiniteLossGuard, "non_finite_guard")
        parser.add_lightning_class_args(WandbTestMedia, "wandb_media")
        parser.add_lightning_class_args(SpeedSettings, "speed")
        parser.add_lightning_class_args(StepProgressBar, "progress")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyperparameters first, with a bare torch.load
        subcommand = self.config.get("subcommand")
        with unreadable_checkpoint_reported(self.config[subcommand].get("ckpt_path") if subcommand else None):
            super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        if "WandbLogger" in str(self.config[self.subcommand].trainer.logger):
            reason = choose_wandb_mode()
            if reason:
                print(f"W&B runs offline: {reason}. Upload the run later with `wandb sync <run folder>`.")

    def _instantiate_trainer(self, config: dict, callbacks: list[Callback]) -> Trainer:
        # The CLI's progress bar gives way to --trainer.enable_progress_bar=false and to a bar in trainer.callbacks
        # (Lightning refuses a bar with the first, and two bars).
        ours_gives_way = config.get("enable_progress_bar") is False or any(
            isinstance(callback, ProgressBar) for callback in config.get("callbacks") or []
        )
        if ours_gives_way:
            callbacks = [callback for callback in callbacks if not isinstance(callback, StepProgressBar)]
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        arguments = self.config_init[self.subcommand]
        if arguments.get("ckpt_path") == "last":
            arguments["ckpt_path"] = str(latest_checkpoint(self.trainer))
            print(f"Resuming from {arguments['ckpt_path']}")

    def after_fit(self) -> None:
        if not self.config[self.subcommand].test_after_fit or self.trainer.interrupted:
            return
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


class SaveAndLogConfig(SaveConfigCallback):
    """Saves the resolved config beside the run (never overwriting one) and sends it to the loggers (W&B run config)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        logger = trainer.logger
        if isinstance(logger, WandbLogger):  # its log_dir is shared by all runs: use the run's own folder
            run_dir = Path(logger.save_dir or ".") / str(logger.name) / str(logger.version)
            run_dir.mkdir(parents=True, exist_ok=True)
            self.config_filename = str(run_dir.relative_to(trainer.log_dir) / "config.yaml")
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(self.config.as_dict())


def latest_checkpoint(trainer: Trainer) -> Path:
    """The newest ``last.ckpt`` of earlier runs of this experiment (``--ckpt_path last``).

    Lightning would look only in the new run's own, still empty, checkpoint folder: a resumed run writes
    into a new version folder, so that nothing of the interrupted run is overwritten.
    """
    logger = trainer.logger
    root = Path(getattr(logger, "root_dir", None) or getattr(logger, "save_dir", None) or trainer.default_root_dir)
    candidates = sorted(root.rglob("last*.ckpt"), key=lambda path: path.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(
            f"--ckpt_path last: no last.ckpt under {root}. Pass the checkpoint file itself: --ckpt_path <file.ckpt>."
        )
    return candidates[-1]


def check_method_names(args: list[str]) -> None:
    """Stops with a readable message when the arguments or a config file name an unknown method.

    (LightningCLI's own message for this is a page of type-validation details.)
    """
    for name in _requested_methods(args):
        if _resolve_method(name) is None:
            known = ", ".join(f"{short} (fsl_lightning.methods.{short})" for short in sorted(METHODS))
            raise SystemExit(f"error: unknown method {name!r}. Set model.class_path to one of: {known}.")


def _requested_methods(args: list[str]) -> list[str]:
    names = []
    for index, arg in enumerate(args):
        key, _, value = arg.partition("=")
        if key in ("--model", "--model.class_path") and not value and index + 1 < len(args):
            value = args[index + 1]
        if key in ("--model", "--model.class_path") and value:
            names.append(value)
        if key == "--config" and index + 1 < len(args):
            names += _methods_in_config(value or args[index + 1])
    return names


def _methods_in_config(path: str) -> list[str]:
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle) or {}
    except OSError:
        return []  # LightningCLI reports a missing config file itself
    model = config.get("model") if isinstance(config, dict) else None
    class_path = model.get("class_path") if isinstance(model, dict) else None
    return [class_path] if class_path else []


def _resolve_method(name: str) -> type | None:
    if name in METHODS:
        return METHODS[name]
    module_name, _, class_name = name.rpartition(".")
    try:
        candidate = getattr(importlib.import_module(module_name), class_name) if module_name else None
    except (ImportError, AttributeError):
        return None
    is_method = isinstance(candidate, type) and issubclass(candidate, FewShotMethod)
    return candidate if is_method else None


def main(args: list[str] | None = None) -> FewShotCLI:
    check_method_names(sys.argv[1:] if args is None else args)
    return FewShotCLI(args=args)
