"""What a method may read from the data module it runs with: one declared interface, :class:`MethodData`.

Methods reach the trainer's data module only through :func:`method_data` (``FewShotMethod.data``), typed by this
protocol: a change to the data module that breaks a method's view of it is a type error, not an ``AttributeError``
at the end of a long run. :class:`~fsl_lightning.data.EpisodicDataModule` implements it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from fsl_lightning.data.datasets.base import ClassImages, FewShotDataset


class MethodData(Protocol):
    """The part of the data module that methods read."""

    #: the dataset; ``load_split`` loads a split the running stage did not (the base classes at test time)
    dataset: FewShotDataset
    #: the size of plain labelled mini-batches for pre-training (the transfer family), or None: episodes
    pretrain_batch_size: int | None
    #: the decoded splits the running stage loaded, by name (``train``, ``val``, ``test``)
    splits: dict[str, ClassImages]

    @property
    def num_train_classes(self) -> int:
        """Classes of the training split (the base classes of pre-training); the split must be loaded."""
        ...

    def setup(self, stage: str) -> None:
        """Loads the splits a stage needs (``fit``, ``validate``, ``test``, ``predict``)."""
        ...

    def val_dataloader(self) -> DataLoader:
        """The fixed validation episodes."""
        ...


def method_data(trainer: Any) -> MethodData | None:
    """The trainer's data module as methods see it; None without a trainer, or with a data module of another kind
    (a method run by hand on episodes, or a user's own LightningDataModule)."""
    from fsl_lightning.data.datamodule import EpisodicDataModule

    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    return datamodule if isinstance(datamodule, EpisodicDataModule) else None
