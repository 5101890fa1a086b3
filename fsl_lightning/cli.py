"""The command line: ``python -m fsl_lightning fit|validate|test|predict --config <yaml>``.

A LightningCLI: every argument of the data module, the method and the Trainer is settable from YAML or
the command line (``--data.evaluation.shot=5``). ``fit`` tests the best checkpoint when training ends,
unless ``--test_after_fit=false``; ``fit --ckpt_path last`` resumes the newest run of the same experiment.
``validate``, ``test`` and ``predict`` with ``--ckpt_path`` (a file, ``last`` or ``best``) evaluate with the
method and data settings the checkpoint was trained with, unless the config changes them.
``fit --weights_from <file.ckpt|last|best>`` starts a new run from a checkpoint's weights with a fresh optimiser.

A user's mistake (:class:`~fsl_lightning.run.errors.UserError`) ends the command with one line saying what to fix;
``--print_traceback`` (anywhere in the arguments) or ``FSL_TRACEBACK=1`` shows the traceback as well.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import warnings
from pathlib import Path

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback, instantiate_class
from lightning.pytorch.loggers import WandbLogger

from fsl_lightning.callbacks import (
    NonFiniteLossGuard,
    PredictionCSVWriter,
    SpeedSettings,
    TimeBudgetSchedule,
    WandbTestMedia,
)
from fsl_lightning.callbacks.progress import StepProgressBar
from fsl_lightning.callbacks.resumed_run import ResumedRunContinuity
from fsl_lightning.checkpoint_io import AtomicCheckpointIO, checkpoint_load_errors_reported
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import check_episode_numbers
from fsl_lightning.methods import METHODS, FewShotMethod
from fsl_lightning.run.checkpoint_files import ALIASES, resolve_checkpoint_alias, training_config
from fsl_lightning.run.composed_configs import expand_config_arguments, load_config
from fsl_lightning.run.cpu_memory import keep_freed_memory_for_reuse
from fsl_lightning.run.errors import UserError
from fsl_lightning.run.evaluation_settings import EVALUATION_SUBCOMMANDS, changed_settings, changed_settings_warning
from fsl_lightning.run.quiet import silence_evaluation_noise, silence_library_noise
from fsl_lightning.run.wandb_setup import choose_wandb_mode
from fsl_lightning.run.weights_from import load_weights


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
        parser.add_argument(
            "--weights_from",
            type=str | None,
            default=None,
            help="fit only: start from the weights of this checkpoint (a .ckpt file, `last` or `best`) with a fresh "
            "optimiser, learning-rate schedule and step count; --ckpt_path resumes all of those instead.",
        )
        # Always present, so that one config serves every subcommand; each is inert where it does not apply.
        parser.add_lightning_class_args(PredictionCSVWriter, "prediction_writer")
        parser.add_lightning_class_args(NonFiniteLossGuard, "non_finite_guard")
        parser.add_lightning_class_args(WandbTestMedia, "wandb_media")
        parser.add_lightning_class_args(SpeedSettings, "speed")
        parser.add_lightning_class_args(StepProgressBar, "progress")
        parser.add_lightning_class_args(TimeBudgetSchedule, "time_budget")

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand in EVALUATION_SUBCOMMANDS:
            # parse_arguments made the checkpoint's settings the defaults, under the user's (and read it safely);
            # LightningCLI's own step would lay the checkpoint's model settings over the user's instead
            return
        # fit --ckpt_path: LightningCLI reads the checkpoint's hyperparameters (weights_only); an unsafe or damaged
        # file is refused there, in one line
        with checkpoint_load_errors_reported(self.config[subcommand].get("ckpt_path") if subcommand else None):
            super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config  # no subcommand with run=False
        check_options(self.subcommand, config)
        if self.subcommand in EVALUATION_SUBCOMMANDS:
            silence_evaluation_noise()
            if config.trainer.logger in (None, True):
                config.trainer.logger = False  # Lightning's default logger would write ./lightning_logs into the cwd
        if "WandbLogger" in str(config.trainer.logger):
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
        if self.subcommand in EVALUATION_SUBCOMMANDS:
            # Nothing is saved when evaluating; restored from the checkpoint, a ModelCheckpoint (the config's, or
            # Lightning's default one) would only warn that its folder, the run's, is not the current one.
            kept = [callback for callback in config.get("callbacks") or [] if not isinstance(callback, ModelCheckpoint)]
            config = {**config, "callbacks": kept, "enable_checkpointing": False}
        return super()._instantiate_trainer(config, callbacks)

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """For evaluation from a checkpoint, the checkpoint's method and data settings are the defaults, under
        whatever the config files and the command line set. A config file composed of ``_base_`` pieces is handed
        to the parser composed (fsl_lightning/run/composed_configs.py)."""
        from_command_line = args is None
        if args is None or isinstance(args, list):
            args = expand_config_arguments(sys.argv[1:] if args is None else args)
        named = _named_checkpoint(args)
        if named is not None:  # a file on the command line: its settings make a config file optional
            self._default_to_training_config(*named)
        self._parse(parser, args, from_command_line)
        subcommand = self.config.get("subcommand")  # none with run=False
        if subcommand not in EVALUATION_SUBCOMMANDS or not self.config[subcommand].get("ckpt_path"):
            return
        ckpt_path = self.config[subcommand].ckpt_path
        checkpoint = Path(ckpt_path)
        if ckpt_path in ALIASES:
            checkpoint = resolve_checkpoint_alias(ckpt_path, _experiment_root_of_config(self.config[subcommand]))
            print(f"--ckpt_path {ckpt_path}: {checkpoint}")
        elif not checkpoint.is_file():
            raise UserError(f"--ckpt_path {ckpt_path}: no such file. Pass a .ckpt file, or last or best.")
        if named is None or named[1] != checkpoint:  # an alias, or a file named in a config file: parse again
            self._default_to_training_config(subcommand, checkpoint)
            self._parse(parser, args, from_command_line)
            self.config[subcommand].ckpt_path = str(checkpoint)
        self._warn_about_changed_settings(subcommand, checkpoint)

    def _parse(self, parser: LightningArgumentParser, args, from_command_line: bool) -> None:
        with warnings.catch_warnings():
            if from_command_line:  # args is the command line itself (composed): not arguments beside it
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            super().parse_arguments(parser, args)

    def _default_to_training_config(self, subcommand: str, checkpoint: Path) -> None:
        self._trained_config = training_config(checkpoint)
        subcommand_parser = self._subcommand_parsers[subcommand]
        if "model" in self._trained_config:
            subcommand_parser.set_defaults({"model": self._trained_config["model"]})
        for key, value in self._trained_config.get("data", {}).items():
            subcommand_parser.set_defaults({f"data.{key}": value})

    def _warn_about_changed_settings(self, subcommand: str, checkpoint: Path) -> None:
        trained = self._trained_config.get("data")
        used = self.config[subcommand].data.as_dict()
        changes = changed_settings(subcommand, trained, used) if trained else []
        if changes:
            warnings.warn(changed_settings_warning(str(checkpoint), changes), stacklevel=2)

    def before_fit(self) -> None:
        arguments = self.config_init[self.subcommand]
        if arguments.get("ckpt_path") in ALIASES:
            root = experiment_root(self.trainer.logger, self.trainer.default_root_dir)
            arguments["ckpt_path"] = str(resolve_checkpoint_alias(arguments["ckpt_path"], root))
            print(f"Resuming from {arguments['ckpt_path']}")
        weights_from = self.config[self.subcommand].weights_from
        if weights_from:
            load_weights(self.model, self._weights_file(weights_from))

    def _weights_file(self, weights_from: str) -> Path:
        if weights_from not in ALIASES:
            return Path(weights_from)
        return resolve_checkpoint_alias(
            weights_from, experiment_root(self.trainer.logger, self.trainer.default_root_dir)
        )

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            remove_run_folder_without_results(self.trainer)
            raise

    def before_validate(self) -> None:
        self._refuse_untrained_weights()

    def before_test(self) -> None:
        self._refuse_untrained_weights()

    def before_predict(self) -> None:
        self._refuse_untrained_weights()
        self.trainer.logger = None  # predict logs nothing: no run folder beside the predictions it writes

    def _refuse_untrained_weights(self) -> None:
        if not self.config_init[self.subcommand].get("ckpt_path"):
            self.model.refuse_untrained_weights(
                self.subcommand,
                "pass --ckpt_path <file.ckpt>, or --ckpt_path last (or best) for the newest run of this experiment",
            )

    def after_fit(self) -> None:
        if not self.config[self.subcommand].test_after_fit or self.trainer.interrupted:
            return
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


class SaveAndLogConfig(SaveConfigCallback):
    """Saves the resolved config beside the run (never overwriting one) and sends it to the loggers (W&B run config)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        logger = trainer.logger
        if logger is None and stage != "fit":  # no run folder to keep it in: never the current directory
            return
        if isinstance(logger, WandbLogger):  # its log_dir is shared by all runs: use the run's own folder
            run_dir = Path(logger.save_dir or ".") / str(logger.name) / str(logger.version)
            run_dir.mkdir(parents=True, exist_ok=True)
            log_dir = trainer.log_dir  # the logger's save_dir, under which Lightning saves the config (a collective)
            if log_dir is None:
                raise UserError("The W&B logger needs a save_dir to keep the run's config.yaml in: set its save_dir.")
            self.config_filename = str(run_dir.relative_to(log_dir) / "config.yaml")
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(self.config.as_dict())


def experiment_root(logger, default_root_dir: str | Path) -> Path:
    """The folder that holds every run (version) of the experiment that ``logger`` logs."""
    return Path(getattr(logger, "root_dir", None) or getattr(logger, "save_dir", None) or default_root_dir)


def check_options(subcommand: str | None, config) -> None:
    """User mistakes that are best caught before anything is built, where the message can name the option."""
    for option, episodes in (("train", "Training episodes"), ("evaluation", "Evaluation episodes")):
        spec = config.data.get(option)
        if spec is not None:  # EpisodeSpec would refuse these too, but could not say which option to change
            check_episode_numbers(spec.way, spec.shot, spec.query, episodes, f"data.{option}")
    if config.get("weights_from") and subcommand not in ("fit", None):  # None: built with run=False
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


def _experiment_root_of_config(config) -> Path:
    """:func:`experiment_root` from the parsed config, before the Trainer exists."""
    logger = config.trainer.logger
    logger = (logger[0] if logger else False) if isinstance(logger, list) else logger
    default_root_dir = Path(config.trainer.default_root_dir or Path.cwd())
    if logger is True or logger is None:  # Lightning's default logger
        return default_root_dir / "lightning_logs"
    if logger is False:
        return default_root_dir
    return experiment_root(instantiate_class((), logger.as_dict()), default_root_dir)


def _named_checkpoint(args) -> tuple[str, Path] | None:
    """(subcommand, file) when the arguments evaluate a checkpoint file named on the command line."""
    if not isinstance(args, list) or not args or args[0] not in EVALUATION_SUBCOMMANDS:
        return None
    for index, arg in enumerate(args):
        key, equals, value = arg.partition("=")
        if key == "--ckpt_path":
            value = value if equals else (args[index + 1] if index + 1 < len(args) else "")
            if value and value not in ALIASES and not Path(value).is_file():  # before the parser asks for a config
                raise UserError(f"--ckpt_path {value}: no such file. Pass a .ckpt file, or last or best.")
            return (args[0], Path(value)) if Path(value).is_file() else None
    return None


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
        config = load_config(path)
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
    keep_freed_memory_for_reuse()  # CPU steps: about 1.5x faster (fsl_lightning/run/cpu_memory.py)
    try:
        check_method_names(sys.argv[1:] if args is None else args)
        return FewShotCLI(args=args)
    except UserError as error:
        if show_traceback:
            raise
        raise SystemExit(f"error: {error}") from None
