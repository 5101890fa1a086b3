"""Callbacks used by the CLI."""

from fsl_lightning.callbacks.prediction_writer import PredictionCSVWriter

__all__ = ["PredictionCSVWriter"]
