"""Datasets, one per module: find or download, validate, decode once."""

from fsl_lightning.data.datasets.base import ClassImages, FewShotDataset
from fsl_lightning.data.datasets.omniglot import Omniglot

__all__ = ["ClassImages", "FewShotDataset", "Omniglot"]
