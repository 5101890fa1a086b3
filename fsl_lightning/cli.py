"""The command line: ``python -m fsl_lightning fit|validate|test|predict --config <yaml>``.

A LightningCLI: every argument of the data module, the method and the Trainer is settable from YAML or
the command line (``--data.evaluation.shot=5``). ``fit`` tests the best checkpoint when training ends,
unless ``--test_after_fit=false``.
"""

from __future__ import annotations

import importlib
import sys

import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from fsl_lightning.callbacks import PredictionCSVWriter
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.methods import METHODS, FewShotMethod


class FewShotCLI(LightningCLI):
    def __init__(self, **kwargs) -> None:
        super().__init__(
            model_class=FewShotMethod,
            datamodule_class=EpisodicDataModule,
            subclass_mode_model=True,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="After fit, test the best checkpoint (or the last)."
        )
        parser.add_lightning_class_args(PredictionCSVWriter, "prediction_writer")

    def after_fit(self) -> None:
        if not self.config[self.subcommand].test_after_fit or self.trainer.interrupted:
            return
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


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
