"""EpisodicDataModule: N-way K-shot Q-query episodes, gathered on the compute device from resident images."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import RunningStage
from torch import Tensor
from torch.utils.data import DataLoader

from fsl_lightning.data.datasets.base import ClassImages, FewShotDataset
from fsl_lightning.data.folders import read_query_folder, read_support_folder
from fsl_lightning.data.sampler import EpisodeStream, check_episode_fits
from fsl_lightning.episode import Episode, EpisodeSpec, split_support_query

STREAMS = {"train": 0, "val": 1, "test": 2}

# Episode streams know their length and are read in the main process (sampling is cheap), so Lightning's
# warning about `__len__` with several loader workers does not apply.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


class EpisodicDataModule(L.LightningDataModule):
    """Episodes from a :class:`FewShotDataset`.

    Each split is decoded once and moved whole to the device; the data loaders yield only image indices,
    which :meth:`on_after_batch_transfer` turns into an :class:`Episode` on the device. Training episodes
    are random (keyed by step and rank); validation and test episodes are fixed by ``eval_seed``, the same
    for every run, method and number of devices, and shared out between ranks.

    Args:
        dataset: the dataset, for example ``fsl_lightning.data.Omniglot``.
        train: way / shot / query of training episodes.
        evaluation: way / shot / query of validation and test episodes.
        train_episodes_per_epoch: training batches (steps) between two validations.
        train_tasks_per_batch: episodes per training step; above 1, each batch is a meta-batch of tasks
            (an :class:`Episode` with a leading task dimension), for MAML-like methods.
        val_episodes: fixed validation episodes.
        test_episodes: fixed test episodes (1000 by default, for a tight confidence interval).
        evaluation_within_group: draw the classes of each validation and test episode from one group of the
            dataset (Omniglot: one alphabet, as in the one-shot trials of Lake et al. and Koch et al.).
        seed: seed of the training episode stream.
        eval_seed: seed of the validation and test episodes.
        predict_support_dir: for ``predict``: one sub-folder of images per class.
        predict_query_dir: for ``predict``: the images to classify.
        predict_batch_size: query images per ``predict`` step.
    """

    def __init__(
        self,
        dataset: FewShotDataset,
        train: EpisodeSpec = EpisodeSpec(way=5, shot=1, query=15),
        evaluation: EpisodeSpec = EpisodeSpec(way=5, shot=1, query=15),
        train_episodes_per_epoch: int = 500,
        train_tasks_per_batch: int = 1,
        val_episodes: int = 200,
        test_episodes: int = 1000,
        evaluation_within_group: bool = False,
        seed: int = 0,
        eval_seed: int = 0,
        predict_support_dir: str | None = None,
        predict_query_dir: str | None = None,
        predict_batch_size: int = 256,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.specs = {"train": train, "val": evaluation, "test": evaluation}
        self.episode_counts = {"train": train_episodes_per_epoch, "val": val_episodes, "test": test_episodes}
        if train_tasks_per_batch < 1:
            raise ValueError(f"train_tasks_per_batch must be at least 1, got {train_tasks_per_batch}.")
        self.train_tasks_per_batch = train_tasks_per_batch
        self.evaluation_within_group = evaluation_within_group
        self.seed = seed
        self.eval_seed = eval_seed
        self.predict_support_dir = predict_support_dir
        self.predict_query_dir = predict_query_dir
        self.predict_batch_size = predict_batch_size
        self.splits: dict[str, ClassImages] = {}
        self._resident: dict[str, Tensor] = {}

    @property
    def channels(self) -> int:
        return self.dataset.channels

    def prepare_data(self) -> None:
        self.dataset.prepare()

    def setup(self, stage: str) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}[stage]
        for split in needed:
            if split not in self.splits:
                classes = self.dataset.load_split(split)
                check_episode_fits(classes.images_per_class, self.specs[split], split, self._groups(split, classes))
                self.splits[split] = classes

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self._train_keys)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", lambda: self._eval_keys("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", lambda: self._eval_keys("test"))

    def predict_dataloader(self) -> DataLoader:
        if not (self.predict_support_dir and self.predict_query_dir):
            raise ValueError(
                "predict needs a support folder and a query folder: pass --data.predict_support_dir=<folder with "
                "one sub-folder of images per class> and --data.predict_query_dir=<folder of images>."
            )
        support, labels, class_names = read_support_folder(self.predict_support_dir, self.dataset.preprocess)
        queries, files = read_query_folder(self.predict_query_dir, self.dataset.preprocess)
        batches = [
            {
                "support_images": support,
                "support_labels": labels,
                "query_images": queries[start : start + self.predict_batch_size],
                "query_files": files[start : start + self.predict_batch_size],
                "class_names": class_names,
            }
            for start in range(0, len(files), self.predict_batch_size)
        ]
        return DataLoader(batches, batch_size=None)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Episode | dict:
        if isinstance(batch, dict):  # predict: the user's images, with file names for the output
            return {**batch, "episode": _predict_episode(batch)}
        split = self._current_split()
        image_indices, class_ids = batch
        images = self._resident_images(split, image_indices.device)[image_indices]
        return split_support_query(_to_float(images), class_ids, self.specs[split])

    def _loader(self, split: str, keys) -> DataLoader:
        classes = self.splits[split]
        tasks = self.train_tasks_per_batch if split == "train" else 1
        stream = EpisodeStream(
            classes.class_offsets, self.specs[split], self._seed_of(split), STREAMS[split], keys, tasks,
            self._groups(split, classes),
        )
        # Pinned index tensors copy to the GPU without a stream synchronisation (a pageable copy would sync).
        return DataLoader(stream, batch_size=None, pin_memory=torch.cuda.is_available())

    def _groups(self, split: str, classes: ClassImages) -> Tensor | None:
        if split == "train" or not self.evaluation_within_group:
            return None
        if classes.class_groups is None:
            raise ValueError(
                f"evaluation_within_group needs class groups, but {type(self.dataset).__name__} defines none: "
                "set evaluation_within_group: false."
            )
        return classes.class_groups

    def _train_keys(self) -> range:
        # Called when an epoch starts: the stream goes on from the current step, one key per (step, rank).
        rank, world = self._rank_and_world()
        step = self.trainer.global_step if self.trainer else 0
        count = self.episode_counts["train"]
        return range(step * world + rank, (step + count) * world, world)

    def _eval_keys(self, split: str) -> range:
        rank, world = self._rank_and_world()
        return range(rank, self.episode_counts[split], world)

    def _seed_of(self, split: str) -> int:
        return self.seed if split == "train" else self.eval_seed

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _current_split(self) -> str:
        stage = self.trainer.state.stage if self.trainer else None
        if stage == RunningStage.TRAINING:
            return "train"
        if stage == RunningStage.TESTING:
            return "test"
        return "val"

    def _resident_images(self, split: str, device: torch.device) -> Tensor:
        resident = self._resident.get(split)
        if resident is None or resident.device != device:
            resident = self._resident[split] = self.splits[split].images.to(device)
        return resident


def _to_float(images: Tensor) -> Tensor:
    return images.float().div_(255.0)


def _predict_episode(batch: dict) -> Episode:
    support_labels = batch["support_labels"]
    queries = batch["query_images"]
    return Episode(
        support_images=_to_float(batch["support_images"]),
        support_labels=support_labels,
        query_images=_to_float(queries),
        query_labels=torch.full((len(queries),), -1, device=queries.device),
        class_ids=torch.arange(len(batch["class_names"]), device=queries.device),
    )
