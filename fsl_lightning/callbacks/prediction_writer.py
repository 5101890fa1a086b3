"""Writes ``predict`` results as a CSV: query file, predicted class, and the method's score of that class."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionCSVWriter(BasePredictionWriter):
    """Collects the rows that ``predict_step`` returns and writes them to ``output_path`` at the end.

    The third column is named after what the method's score means (``FewShotMethod.score_name``: ``probability``,
    ``relation_score``, ``distance``...), so that a reader of the file cannot mistake a distance for a probability.
    """

    def __init__(self, output_path: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.output_path = Path(output_path)

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        rows = [row for batch in predictions for row in batch]
        write_predictions_csv(rows, pl_module.score_name, self.output_path)
        pl_module.print(f"Wrote {len(rows)} predictions to {self.output_path}")


def write_predictions_csv(rows: Iterable[dict[str, Any]], score_name: str, path: str | Path) -> None:
    """The rows of ``predict_step`` as ``predict``'s CSV (also written by the Python API, ``FewShotClassifier``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["query_file", "predicted_class", score_name])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, score_name: f"{row[score_name]:.6f}"})
