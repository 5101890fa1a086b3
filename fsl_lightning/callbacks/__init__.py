"""Callbacks used by the CLI and the benchmarks."""

from fsl_lightning.callbacks.checkpoint import ModelCheckpoint
from fsl_lightning.callbacks.non_finite_guard import NonFiniteLossError, NonFiniteLossGuard
from fsl_lightning.callbacks.prediction_writer import PredictionCSVWriter
from fsl_lightning.callbacks.progress import StepProgressBar
from fsl_lightning.callbacks.speed import SpeedSettings
from fsl_lightning.callbacks.throughput import EpisodeThroughput
from fsl_lightning.callbacks.time_budget import TimeBudgetSchedule
from fsl_lightning.callbacks.wandb_media import WandbTestMedia

__all__ = [
    "EpisodeThroughput",
    "ModelCheckpoint",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "PredictionCSVWriter",
    "SpeedSettings",
    "StepProgressBar",
    "TimeBudgetSchedule",
    "WandbTestMedia",
]
