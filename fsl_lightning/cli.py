"""The command line: ``python -m fsl_lightning fit|validate|test|predict --config <yaml>``.

A LightningCLI: every argument of the data module, the method and the Trainer is settable from YAML or
the command line (``--data.evaluation.shot=5``). ``fit`` tests the best checkpoint when training ends,
unless ``--test_after_fit=false``; ``fit --ckpt_path last`` resumes the newest run of the same experiment;
``fit --weights_from <file.ckpt|last|best>`` starts a new run from a checkpoint's weights with a fresh optimiser.

A user's mistake (:class:`~fsl_lightning.errors.UserError`) ends the command with one line saying what to fix;
``--print_traceback`` (anywhere in the arguments) or ``FSL_TRACEBACK=1`` shows the traceback as well.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
from pathlib import Path

import yaml
from lightning import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from fsl_lightning.callbacks import NonFiniteLossGuard, PredictionCSVWriter, SpeedSettings, WandbTestMedia
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import check_episode_numbers
from fsl_lightning.errors import UserError
from fsl_lightning.methods import METHODS, FewShotMethod
from fsl_lightning.quiet import silence_library_noise
from fsl_lightning.wandb_setup import choose_wandb_mode
from fsl_lightning.weights_from import best_checkpoint_recorded_in, load_weights


class FewShotCLI(LightningCLI):
    def __init__(self, **kwargs) -> None:
        super().__init__(
            model_class=FewShotMethod,
            datamodule_class=EpisodicDataModule,
            subclass_mode_model=True,
            save_config_callback=SaveAndLogConfig,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="After fit, test the best checkpoint (or the last)."
        )
        parser.add_argument(
            "--weights_from", type=str | None, default=None,
            help="fit only: start from the weights of this checkpoint (a .ckpt file, `last` or `best`) with a fresh "
            "optimiser, learning-rate schedule and step count; --ckpt_path resumes all of those instead.",
        )
        # Always present, so that one config serves every subcommand; each is inert where it does not apply.
        parser.add_lightning_class_args(PredictionCSVWriter, "prediction_writer")
        parser.add_lightning_class_args(NonFiniteLossGuard, "non_finite_guard")
        parser.add_lightning_class_args(WandbTestMedia, "wandb_media")
        parser.add_lightning_class_args(SpeedSettings, "speed")

    def before_instantiate_classes(self) -> None:
        check_options(self.subcommand, self.config[self.subcommand])
        if "WandbLogger" in str(self.config[self.subcommand].trainer.logger):
            reason = choose_wandb_mode()
            if reason:
                print(f"W&B runs offline: {reason}. Upload the run later with `wandb sync <run folder>`.")

    def before_fit(self) -> None:
        arguments = self.config_init[self.subcommand]
        if arguments.get("ckpt_path") == "last":
            arguments["ckpt_path"] = str(latest_checkpoint(self.trainer))
            print(f"Resuming from {arguments['ckpt_path']}")
        weights_from = self.config[self.subcommand].weights_from
        if weights_from:
            load_weights(self.model, self._weights_file(weights_from))

    def _weights_file(self, weights_from: str) -> Path:
        if weights_from not in ("last", "best"):
            return Path(weights_from)
        last = latest_checkpoint(self.trainer)
        return last if weights_from == "last" else best_checkpoint_recorded_in(last)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            remove_run_folder_without_results(self.trainer)
            raise

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


def check_options(subcommand: str, config) -> None:
    """User mistakes that are best caught before anything is built, where the message can name the option."""
    for option, episodes in (("train", "Training episodes"), ("evaluation", "Evaluation episodes")):
        spec = config.data.get(option)
        if spec is not None:  # EpisodeSpec would refuse these too, but could not say which option to change
            check_episode_numbers(spec.way, spec.shot, spec.query, episodes, f"data.{option}")
    if config.get("weights_from") and subcommand != "fit":
        raise UserError(f"--weights_from starts a new fit; for {subcommand}, pass the checkpoint with --ckpt_path.")
    if config.get("weights_from") and config.get("ckpt_path"):
        raise UserError(
            "Give either --ckpt_path (resume the run: weights, optimiser, schedule and step) or --weights_from "
            "(the weights only, with a fresh optimiser), not both."
        )


def remove_run_folder_without_results(trainer: Trainer | None) -> None:
    """Removes the version folder of a run that failed before it wrote any result (only its config), so that
    failed commands do not leave empty ``version_N`` folders between the real runs."""
    if trainer is None or not trainer.is_global_zero or not trainer.log_dir:
        return
    folder = Path(trainer.log_dir)
    if not folder.name.startswith("version_") or not folder.is_dir():
        return
    files = [path for path in folder.rglob("*") if path.is_file()]
    if all(path.parent == folder and path.name in ("config.yaml", "hparams.yaml") for path in files):
        shutil.rmtree(folder)
        with contextlib.suppress(OSError):  # the experiment's folder, if this run was its only one
            folder.parent.rmdir()


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
            raise UserError(f"unknown method {name!r}. Set model.class_path to one of: {known}.")


def _requested_methods(args: list[str]) -> list[str]:
    names = []
    for index, arg in enumerate(args):
        key, _, value = arg.partition("=")
        if key in ("--model", "--model.class_path") and not value and index + 1 < len(args):
            value = args[index + 1]
        if key in ("--model", "--model.class_path") and value:
            names.append(value)
        if key in ("--config", "-c") and (value or index + 1 < len(args)):
            names += _methods_in_config(value or args[index + 1])
    return names


def _methods_in_config(path: str) -> list[str]:
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle) or {}
    except OSError:
        return []  # LightningCLI reports a missing config file itself
    model = config.get("model") if isinstance(config, dict) else None
    class_path = model.get("class_path") if isinstance(model, dict) else model  # `model: ProtoNet` is short for it
    return [class_path] if isinstance(class_path, str) and class_path else []


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
    """The command line (``python -m fsl_lightning``, ``fsl-lightning``): runs ``args`` (default: ``sys.argv``).

    A :class:`UserError` ends it with its one-line message and exit status 1, unless ``--print_traceback`` is
    among the arguments or ``FSL_TRACEBACK=1`` is set.
    """
    show_traceback = os.environ.get("FSL_TRACEBACK", "") not in ("", "0")
    if "--print_traceback" in (sys.argv if args is None else args):
        show_traceback = True
        if args is None:  # `strategy=ddp` launches the other ranks with sys.argv: they inherit the choice
            sys.argv = [arg for arg in sys.argv if arg != "--print_traceback"]
            os.environ["FSL_TRACEBACK"] = "1"
        else:
            args = [arg for arg in args if arg != "--print_traceback"]
    silence_library_noise()
    try:
        check_method_names(sys.argv[1:] if args is None else args)
        return FewShotCLI(args=args)
    except UserError as error:
        if show_traceback:
            raise
        raise SystemExit(f"error: {error}") from None
