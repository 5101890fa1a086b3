"""Callbacks used by the CLI and the benchmarks."""

from fsl_lightning.callbacks.prediction_writer import PredictionCSVWriter
from fsl_lightning.callbacks.throughput import EpisodeThroughput

__all__ = ["EpisodeThroughput", "PredictionCSVWriter"]
