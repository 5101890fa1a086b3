"""1-nearest-neighbour baseline: distances by hand, real Omniglot untrained, the CLI `test` without a checkpoint."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from fsl_lightning.callbacks import PredictionCSVWriter
from fsl_lightning.cli import main
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import Episode, EpisodeSpec
from fsl_lightning.methods.functional import nearest_in_class
from fsl_lightning.methods.nearest_neighbour import NearestNeighbour

CONFIG = str(Path(__file__).resolve().parents[1] / "experiments" / "omniglot" / "nn1_20w1s.yaml")


def test_nearest_in_class_by_hand():
    distances = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.5, 6.0, 7.0, 8.0]])
    labels = torch.tensor([1, 0, 1, 2])
    expected = torch.tensor([[1.0, 3.0, 2.0], [6.0, 0.5, 8.0]])
    assert torch.equal(nearest_in_class(distances, labels, way=3), expected)


def test_logits_are_minus_the_distance_to_the_nearest_support_image_of_each_class():
    # query (3, 3): distances sqrt(18) to (0, 0) and sqrt(34) to (6, 8) [class 0], 1 to (3, 4) [class 1]
    points = lambda rows: torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, 1, 2)  # noqa: E731
    episode = Episode(
        points([[0, 0], [3, 4], [6, 8]]),
        torch.tensor([0, 1, 0]),
        points([[3, 3]]),
        torch.tensor([1]),
        torch.tensor([5, 6]),
    )
    logits = NearestNeighbour(backbone=nn.Flatten()).episode_logits(episode)
    assert torch.allclose(logits, torch.tensor([[-math.sqrt(18), -1.0]]))


def _trainer(tmp_path) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        max_steps=1,
    )


def test_pixel_nearest_neighbour_beats_chance_on_omniglot_without_training(omniglot, tmp_path):
    datamodule = EpisodicDataModule(omniglot, evaluation=EpisodeSpec(way=20, shot=1, query=1), test_episodes=100)
    result = _trainer(tmp_path).test(NearestNeighbour(backbone=nn.Flatten()), datamodule=datamodule, verbose=False)[0]
    assert result["test/acc"] > 0.15, result  # chance is 0.05; about 0.25 at 28x28 (1000 episodes)


def test_fit_stops_with_a_pointer_to_test(omniglot, tmp_path):
    datamodule = EpisodicDataModule(omniglot, train_episodes_per_epoch=1, val_episodes=1)
    with pytest.raises(RuntimeError, match="fsl_lightning test"):
        _trainer(tmp_path).fit(NearestNeighbour(backbone=nn.Flatten()), datamodule=datamodule)


def test_the_config_runs_through_the_cli_test_command_without_a_checkpoint(omniglot, tmp_path):
    # the config's Lake 105x105 images take minutes to decode on 2 cores: the cached Vinyals 28x28 ones here
    cli = main(
        [
            "test",
            "--config",
            CONFIG,
            "--data.dataset.init_args.protocol=vinyals",
            "--data.dataset.init_args.image_size=28",
            "--data.test_episodes=50",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert cli.trainer.callback_metrics["test/acc"].item() > 0.15


def test_predict_writes_the_distance_to_the_nearest_support_image_under_a_distance_header(tmp_path):
    # query (3, 0): distances 3 to (0, 0) [class a], 4 and sqrt(73) to (3, 4), (6, 8) [class b];
    # query (5, 5): sqrt(50) to (0, 0), sqrt(5) to (3, 4), sqrt(10) to (6, 8)
    points = lambda rows: torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, 1, 2)  # noqa: E731
    episode = Episode(
        points([[0, 0], [3, 4], [6, 8]]),
        torch.tensor([0, 1, 1]),
        points([[3, 0], [5, 5]]),
        torch.tensor([-1, -1]),
        torch.tensor([0, 1]),
    )
    batch = {"episode": episode, "query_files": ["first.png", "second.png"], "class_names": ["a", "b"]}
    output = tmp_path / "predictions.csv"
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[PredictionCSVWriter(str(output))],
    )
    trainer.predict(
        NearestNeighbour(backbone=nn.Flatten()), DataLoader([batch], batch_size=None), return_predictions=False
    )
    with output.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["query_file", "predicted_class", "distance", "outlier", "error"]
    assert [(row["query_file"], row["predicted_class"]) for row in rows] == [("first.png", "a"), ("second.png", "b")]
    assert [float(row["distance"]) for row in rows] == pytest.approx([3.0, math.sqrt(5)], abs=1e-6)
