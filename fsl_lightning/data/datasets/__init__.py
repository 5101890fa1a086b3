"""Datasets, one per module: find or download, validate, decode once."""

from fsl_lightning.data.datasets.base import ClassImages, FewShotDataset
from fsl_lightning.data.datasets.caltech101 import Caltech101
from fsl_lightning.data.datasets.cifar import CIFARFS, FC100
from fsl_lightning.data.datasets.cub import CUB200
from fsl_lightning.data.datasets.image_folder import ImageFolderDataset
from fsl_lightning.data.datasets.miniimagenet import MiniImageNet
from fsl_lightning.data.datasets.omniglot import Omniglot
from fsl_lightning.data.datasets.tieredimagenet import TieredImageNet

__all__ = [
    "CIFARFS",
    "CUB200",
    "Caltech101",
    "ClassImages",
    "FC100",
    "FewShotDataset",
    "ImageFolderDataset",
    "MiniImageNet",
    "Omniglot",
    "TieredImageNet",
]
