"""Episodic data: datasets decoded once, seeded episode sampling, the Lightning data module."""

from fsl_lightning.data.datamodule import EpisodicDataModule
from fsl_lightning.data.datasets import ClassImages, FewShotDataset, Omniglot
from fsl_lightning.data.roots import DatasetNotFoundError

__all__ = ["ClassImages", "DatasetNotFoundError", "EpisodicDataModule", "FewShotDataset", "Omniglot"]
