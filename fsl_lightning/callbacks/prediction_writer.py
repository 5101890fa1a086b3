"""Writes ``predict`` results as a CSV: query file, predicted class, the method's score of that class, whether the
query is an outlier (far from every class, :mod:`fsl_lightning.methods.score_calibration`), and why a query could
not be scored (a file that did not decode; empty for the others)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from fsl_lightning.data.datamodule import EpisodicDataModule
from fsl_lightning.data.folders import QueryImages, unreadable_summary
from fsl_lightning.methods.base import FewShotMethod
from fsl_lightning.methods.score_calibration import ScoreCalibration


class PredictionCSVWriter(BasePredictionWriter):
    """Collects the rows that ``predict_step`` returns and writes them to ``output_path`` at the end, with a row
    for each query file that did not decode (``data.predict_bad_images: skip``), in the order of the files.

    The third column is named after what the method's score means (``FewShotMethod.score_name``: ``probability``,
    ``relation_score``, ``distance``...), so that a reader of the file cannot mistake a distance for a probability.
    """

    def __init__(self, output_path: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.output_path = Path(output_path)

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        if not isinstance(pl_module, FewShotMethod):
            raise TypeError(
                f"PredictionCSVWriter writes a FewShotMethod's predictions, got {type(pl_module).__name__}."
            )
        rows = [row for batch in predictions for row in batch]
        # Lightning's connectors set this Trainer attribute from outside its class: mypy does not see it
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        queries = datamodule.predict_queries if isinstance(datamodule, EpisodicDataModule) else None
        if queries is not None:
            rows = rows_in_file_order(rows, queries)
        write_predictions_csv(rows, pl_module.score_name, self.output_path)
        scored = sum(not row.get("error") for row in rows)
        pl_module.print(f"Wrote {scored} predictions to {self.output_path}")
        pl_module.print(scores_summary(rows, pl_module.score_calibration, pl_module.score_name))
        if queries is not None and queries.unreadable:
            pl_module.print(f"{unreadable_summary(queries.unreadable)} (in {self.output_path} too, with their reasons)")


def scores_summary(rows: list[dict[str, Any]], calibration: ScoreCalibration | None, score_name: str) -> str:
    """One line on what the scores are, and how many queries are outliers."""
    if calibration is None:
        return (
            f"Scores ({score_name}): not calibrated and no outlier check, since the checkpoint's run had no "
            "validation episodes to fit them on; a query of none of the classes still gets the nearest one."
        )
    outliers = sum(row.get("outlier") == "yes" for row in rows)
    return (
        f"Scores: {calibration.description()}. {outliers} of {sum(not row.get('error') for row in rows)} "
        "queries are outliers, far from every class (outlier=yes): their class is only the nearest one."
    )


def rows_in_file_order(rows: list[dict[str, Any]], queries: QueryImages) -> list[dict[str, Any]]:
    """The rows of the decoded queries (in order) with a row for each file that did not decode, in its place
    among ``queries.files``."""
    scored = iter(rows)
    return [
        {"query_file": file, "predicted_class": "", "error": queries.unreadable[file]}
        if file is not None and file in queries.unreadable  # None: a tensor, never unreadable
        else next(scored)
        for file in queries.files
    ]


def write_predictions_csv(rows: Iterable[dict[str, Any]], score_name: str, path: str | Path) -> None:
    """The rows of ``predict_step`` as ``predict``'s CSV (also written by the Python API, ``FewShotClassifier``);
    a row with an ``error`` has no class or score."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["query_file", "predicted_class", score_name, "outlier", "error"])
        writer.writeheader()
        for row in rows:
            score = row.get(score_name)
            writer.writerow({"outlier": "", "error": "", **row, score_name: "" if score is None else f"{score:.6f}"})
