"""The command line: ``python -m fsl_lightning fit|validate|test|predict --config <yaml>``.

A LightningCLI: every argument of the data module, the method and the Trainer is settable from YAML or
the command line (``--data.evaluation.shot=5``). ``fit`` tests the best checkpoint when training ends,
unless ``--test_after_fit=false``.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from fsl_lightning.callbacks import PredictionCSVWriter
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.methods import FewShotMethod


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


def main(args: list[str] | None = None) -> FewShotCLI:
    return FewShotCLI(args=args)
