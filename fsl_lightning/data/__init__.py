"""Episodic data: datasets decoded once, seeded episode sampling, the Lightning data module."""

from fsl_lightning.data.datamodule import EpisodicDataModule
from fsl_lightning.data.datasets import (
    CIFARFS,
    CUB200,
    FC100,
    Caltech101,
    ClassImages,
    FewShotDataset,
    ImageFolderDataset,
    MiniImageNet,
    Omniglot,
    TieredImageNet,
)
from fsl_lightning.data.roots import DatasetNotFoundError

__all__ = [
    "CIFARFS",
    "CUB200",
    "Caltech101",
    "ClassImages",
    "DatasetNotFoundError",
    "EpisodicDataModule",
    "FC100",
    "FewShotDataset",
    "ImageFolderDataset",
    "MiniImageNet",
    "Omniglot",
    "TieredImageNet",
]
