"""EpisodicDataModule: N-way K-shot Q-query episodes, gathered on the compute device from resident images."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader

from fsl_lightning.data.augment import BatchAugmentation
from fsl_lightning.data.datasets.base import ClassImages, FewShotDataset
from fsl_lightning.data.folders import (
    BadImages,
    QueryImages,
    check_class_names,
    read_query_folder,
    read_support_folder,
)
from fsl_lightning.data.images import as_model_input
from fsl_lightning.data.predict_batches import PREDICT_BATCH_SIZE, prediction_batches, prediction_episode
from fsl_lightning.data.residency import GatheredBatch, HostGatheredStream, Residency, choose_residency
from fsl_lightning.data.sampler import (
    DeviceEpisodeSampler,
    EpisodeStream,
    ImageBatchStream,
    KeyStream,
    check_episode_fits,
    mixed_seed,
)
from fsl_lightning.episode import Episode, EpisodeSpec, LabelledBatch, split_support_query
from fsl_lightning.run.built_by_cli import built_by_cli
from fsl_lightning.run.errors import UserError
from fsl_lightning.run.quiet import silence_episode_stream_noise

STREAMS = {"train": 0, "val": 1, "test": 2}
TRAIN_SHOT_STREAM = 3  # the random shot of each training batch (train_shot_range)


class EpisodicDataModule(L.LightningDataModule):
    """Episodes from a :class:`FewShotDataset`.

    Each split is decoded once and moved whole to the device; the data loaders yield only image indices,
    which :meth:`on_after_batch_transfer` turns into an :class:`Episode` on the device. Training episodes
    are random (keyed by step and rank); validation and test episodes are fixed by ``eval_seed``, the same
    for every run, method and number of devices, and shared out between ranks.

    Args:
        dataset: the dataset, for example ``fsl_lightning.data.Omniglot``.
        train: way / shot / query of training episodes.
        train_shot_range: ``[low, high]``: each training batch draws its shot uniformly in ``low..high`` and keeps
            ``train.shot + train.query`` images per class, the rest being queries (all tasks of a meta-batch share
            the shot). Bertinetto et al.'s R2D2 trains so (a fixed number of images per episode, shot 1..9 at
            random: ``shot_min``/``shot_max`` in bertinetto/r2d2), and so one model serves every test shot.
            The shot is a pure function of the batch key, like the episode: the same on resume and on any device.
        evaluation: way / shot / query of validation and test episodes.
        train_episodes_per_epoch: training batches (steps) between two validations.
        train_tasks_per_batch: episodes per training step; above 1, each batch is a meta-batch of tasks
            (an :class:`Episode` with a leading task dimension): MAML-like methods adapt to each task; the
            others take one optimiser step on the mean loss of the T episodes.
        pretrain_batch_size: when set, training batches are not episodes but plain mini-batches of this many
            images from all training classes (:class:`LabelledBatch`), for methods that pre-train a classifier
            over the base classes (Baseline, RFS, SKD...); validation and test stay episodic.
        sample_on_device: draw training episodes on the compute device (:class:`DeviceEpisodeSampler`: no host
            work or copy per step; another random stream than the host sampler). ``None``: on for CUDA devices
            with ``device`` residency. Validation and test episodes are always drawn on the host, identical on
            every device.
        resident: where the splits' images live (:mod:`fsl_lightning.data.residency`): ``device`` (each split
            copied to the device once, episodes gathered there), ``host`` (episodes gathered from the mapped split
            by a background loader, only they cross to the device) or ``auto`` (``device`` when the splits fit in
            half the device's free memory; one log line says which and why).
        augmentation: applied on the device to every training batch (episodes or mini-batches), e.g.
            :class:`~fsl_lightning.data.augment.BatchAugmentation`; never to validation or test images.
        val_episodes: fixed validation episodes.
        test_episodes: fixed test episodes (1000 by default, for a tight confidence interval).
        train_on_val_classes: train on the training and the validation classes together, with no validation
            (``val_episodes: 0``): the final run of a schedule chosen on validation, as Snell et al. train their
            Omniglot models on 1200 characters (train + val of the Vinyals split); the last weights are tested.
        evaluation_within_group: draw the classes of each validation and test episode from one group of the
            dataset (Omniglot: one alphabet, as in the one-shot trials of Lake et al. and Koch et al.).
        seed: seed of the training episode stream.
        eval_seed: seed of the validation and test episodes.
        predict_support_dir: for ``predict``: one sub-folder of images per class.
        predict_query_dir: for ``predict``: the images to classify.
        predict_batch_size: query images per ``predict`` step.
        predict_class_names: for zero-shot ``predict`` (methods that classify from class names, such as CLIP), in
            place of ``predict_support_dir``: the classes to choose from, e.g. ``[cat, dog]``; no support images.
        predict_bad_images: a query image that cannot be decoded: ``skip`` scores the others and lists it (with
            the reason) in the summary line and the CSV; ``stop`` ends at it (:mod:`fsl_lightning.data.folders`).
    """

    def __init__(
        self,
        dataset: FewShotDataset,
        train: EpisodeSpec = EpisodeSpec(way=5, shot=1, query=15),
        train_shot_range: tuple[int, int] | None = None,
        evaluation: EpisodeSpec = EpisodeSpec(way=5, shot=1, query=15),
        train_episodes_per_epoch: int = 500,
        train_tasks_per_batch: int = 1,
        pretrain_batch_size: int | None = None,
        augmentation: BatchAugmentation | None = None,
        sample_on_device: bool | None = None,
        resident: Residency = "auto",
        val_episodes: int = 200,
        test_episodes: int = 1000,
        evaluation_within_group: bool = False,
        train_on_val_classes: bool = False,
        seed: int = 0,
        eval_seed: int = 0,
        predict_support_dir: str | None = None,
        predict_query_dir: str | None = None,
        predict_batch_size: int = PREDICT_BATCH_SIZE,
        predict_class_names: list[str] | None = None,
        predict_bad_images: BadImages = "skip",
    ) -> None:
        super().__init__()
        if built_by_cli():  # the config's data section goes into checkpoints: evaluation reads its settings back
            self.save_hyperparameters()
            _pin_image_size(self.hparams["dataset"], dataset)
        self.dataset = dataset
        self.specs = {"train": train, "val": evaluation, "test": evaluation}
        self.train_shot_range = _checked_shot_range(train_shot_range, train)
        self.episode_counts = {"train": train_episodes_per_epoch, "val": val_episodes, "test": test_episodes}
        if train_tasks_per_batch < 1:
            raise UserError(f"train_tasks_per_batch must be at least 1, got {train_tasks_per_batch}.")
        self.train_tasks_per_batch = train_tasks_per_batch
        self.pretrain_batch_size = pretrain_batch_size
        self.augmentation = augmentation
        self.sample_on_device = sample_on_device
        if resident not in ("device", "host", "auto"):
            raise UserError(f"data.resident must be device, host or auto, got {resident!r}.")
        self.resident = resident
        self._residency: str | None = None  # what `resident` resolved to, once the device is known
        self._device_sampler: DeviceEpisodeSampler | None = None
        self.evaluation_within_group = evaluation_within_group
        self.train_on_val_classes = train_on_val_classes
        self.seed = seed
        self.eval_seed = eval_seed
        self.predict_support_dir = predict_support_dir
        self.predict_query_dir = predict_query_dir
        self.predict_batch_size = predict_batch_size
        self.predict_class_names = predict_class_names
        self.predict_bad_images = predict_bad_images
        #: the query folder as ``predict`` read it (the files that did not decode among them)
        self.predict_queries: QueryImages | None = None
        self.splits: dict[str, ClassImages] = {}
        self._resident: dict[str, Tensor] = {}
        # Training batches handed to the model so far (per rank, over all epochs): where the training stream goes
        # on. Counted per batch, not per optimiser step, so that gradient accumulation draws no episode twice;
        # saved in checkpoints (state_dict), so that a resumed run continues the stream without repeats or gaps.
        self._train_batches_done: int | None = None

    @property
    def channels(self) -> int:
        return self.dataset.channels

    def prepare_data(self) -> None:
        if self.trainer is not None and self.trainer.state.fn == TrainerFn.PREDICTING:
            return  # predict reads only the user's folders (decoded as the dataset decodes its own files)
        self.dataset.prepare()

    def setup(self, stage: str) -> None:
        silence_episode_stream_noise()
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}[stage]
        if stage == "fit" and self.train_on_val_classes:
            self._check_no_validation()
            needed = ("train",)
        if stage == "validate" and not self.episode_counts["val"]:
            raise UserError("validate with data.val_episodes: 0 has nothing to score: pass --data.val_episodes=200.")
        for split in needed:
            if split not in self.splits:
                classes = self._training_classes() if split == "train" else self.dataset.load_split(split)
                if not (split == "train" and self.pretrain_batch_size):
                    check_episode_fits(classes.images_per_class, self.specs[split], split, self._groups(split, classes))
                self.splits[split] = classes

    def _training_classes(self) -> ClassImages:
        classes = self.dataset.load_split("train")
        return classes.joined_with(self.dataset.load_split("val")) if self.train_on_val_classes else classes

    def _check_no_validation(self) -> None:
        if self.episode_counts["val"]:
            raise UserError(
                f"train_on_val_classes trains on the validation classes, so the {self.episode_counts['val']} "
                "validation episodes would score classes the model has seen: set data.val_episodes: 0 (the schedule "
                "is chosen beforehand on validation, and the last weights are tested)."
            )

    @property
    def num_train_classes(self) -> int:
        """Classes of the training split (the base classes of pre-training)."""
        return self.splits["train"].num_classes

    def train_dataloader(self) -> DataLoader:
        if self._samples_on_device() and not self.pretrain_batch_size:
            self._device_sampler = DeviceEpisodeSampler(
                self.splits["train"].class_offsets,
                self.specs["train"],
                self.seed,
                STREAMS["train"],
                self.train_tasks_per_batch,
            )
            return DataLoader(KeyStream(self._train_keys), batch_size=None)
        return self._loader("train", self._train_keys)

    def val_dataloader(self) -> DataLoader:
        if self.episode_counts["val"] == 0 and "val" not in self.splits:  # fit without validation
            # torch types the dataset as a Dataset; any sequence is a map-style dataset to it (its documentation)
            return DataLoader([])  # type: ignore[arg-type]
        return self._loader("val", lambda: self._eval_keys("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", lambda: self._eval_keys("test"))

    def predict_dataloader(self) -> DataLoader:
        if not (self.predict_support_dir or self.predict_class_names) or not self.predict_query_dir:
            raise UserError(
                "predict needs a support folder and a query folder: pass --data.predict_support_dir=<folder with "
                "one sub-folder of images per class> and --data.predict_query_dir=<folder of images> (or, for "
                "zero-shot methods such as CLIP, --data.predict_class_names='[cat, dog]' in place of the support "
                "folder)."
            )
        given_names = self.predict_class_names
        if given_names is not None:
            queries = self._read_queries()
            support, labels, class_names = self._zero_shot_support(queries.images, given_names)
        else:  # the support set first: a bad support image ends the command before the queries are decoded
            support_dir = _given(self.predict_support_dir, "data.predict_support_dir")
            support, labels, class_names = read_support_folder(support_dir, self.dataset.decode_image)
            queries = self._read_queries()
        batches = prediction_batches(
            support, labels, class_names, queries.images, queries.decoded_files, self.predict_batch_size
        )
        # torch types the dataset as a Dataset; any sequence is a map-style dataset to it (its documentation)
        return DataLoader(batches, batch_size=None)  # type: ignore[arg-type]

    def _read_queries(self) -> QueryImages:
        self.predict_queries = read_query_folder(
            _given(self.predict_query_dir, "data.predict_query_dir"), self.dataset.decode_image, self.predict_bad_images
        )
        return self.predict_queries

    def _zero_shot_support(self, queries: Tensor, given_names: list[str]) -> tuple[Tensor, Tensor, list[str]]:
        """No support images, the given class names: for methods that classify from names (``supports_zero_shot``)."""
        if self.predict_support_dir:
            raise UserError("Give either data.predict_support_dir or data.predict_class_names for predict, not both.")
        from fsl_lightning.methods.base import FewShotMethod  # here: the methods import the data package

        method = self.trainer.lightning_module if self.trainer is not None else None
        if isinstance(method, FewShotMethod) and not method.supports_zero_shot:
            raise UserError(
                f"data.predict_class_names without support images is zero-shot prediction, which "
                f"{type(method).__name__} cannot do (CLIPZeroShot and CLIPFewShot can): give "
                "--data.predict_support_dir=<folder with one sub-folder of images per class> instead."
            )
        names = check_class_names(given_names)
        return queries[:0], torch.zeros(0, dtype=torch.long), names

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Episode | LabelledBatch | dict:
        if isinstance(batch, dict):  # predict: the user's images, with file names for the output
            return {**batch, "episode": prediction_episode(batch)}
        split = self._current_split()
        if split == "train":
            self._train_batches_done = self._batches_done() + 1
        if isinstance(batch, int):  # a key: the training episode is drawn here, on the device
            if self._device_sampler is None:  # made by train_dataloader, which hands out keys only with it
                raise RuntimeError(f"training key {batch} arrived without the device episode sampler")
            batch = (*self._device_sampler(batch, self._compute_device()), batch)
        if isinstance(batch, GatheredBatch):  # host residency: the images came gathered
            return self._assemble(split, batch.image_indices, batch.class_ids, batch.key, batch.images)
        return self._assemble(split, *batch)

    def training_batch(self, key: int, device: torch.device) -> Episode | LabelledBatch:
        """Training batch ``key`` on ``device`` as ``training_step`` receives it, outside any Trainer loop (for
        benchmarks that time the bare model step on resident data). Call after ``setup("fit")``."""
        stream = self._index_stream("train", lambda: range(key, key + 1))
        # (indices, class ids[, key]): by iterating, not iter(), mypy keeps the two streams' element types apart
        indices, class_ids = next(batch[:2] for batch in stream)
        return self._assemble("train", indices.to(device), class_ids.to(device), key)

    def _assemble(
        self,
        split: str,
        image_indices: Tensor,
        class_ids: Tensor,
        key: int | None = None,
        gathered: Tensor | None = None,
    ) -> Episode | LabelledBatch:
        """Builds the batch from the images of the given indices: ``gathered`` on the host, or gathered here from
        the resident split."""
        if gathered is None:
            gathered = self._resident_images(split, image_indices.device)[image_indices]
        images = as_model_input(gathered)
        if split == "train" and self.augmentation is not None:
            images = self._augmented(self.augmentation, images)
        if split == "train" and self.pretrain_batch_size:
            return LabelledBatch(images, class_ids)
        if split == "train":
            seed = None
        elif key is None:  # evaluation streams always carry the key
            raise RuntimeError(f"a {split} episode without its key, of which its seed is a function")
        else:
            seed = self.episode_seed(split, key)
        return split_support_query(images, class_ids, self._spec_of(split, key), image_indices, seed)

    def _spec_of(self, split: str, key: int | None) -> EpisodeSpec:
        spec = self.specs[split]
        if split != "train" or self.train_shot_range is None:
            return spec
        if key is None:  # training streams always carry the key
            raise RuntimeError("a training episode without its key, of which its shot count is a function")
        low, high = self.train_shot_range
        shot = low + mixed_seed(self.seed, TRAIN_SHOT_STREAM, key) % (high - low + 1)
        return EpisodeSpec(way=spec.way, shot=shot, query=spec.images_per_class - shot)

    def episode_seed(self, split: str, key: int) -> int:
        """The seed of validation or test episode ``key`` (:attr:`Episode.seed`): a pure function of
        ``(eval_seed, split, key)``, so a method's per-episode randomness is the same in any process layout."""
        return mixed_seed(self.eval_seed, STREAMS[split], key)

    @staticmethod
    def _augmented(augmentation: BatchAugmentation, images: Tensor) -> Tensor:
        # Images of an episode arrive as [..., way, shot + query, C, H, W]: augment them as one flat batch.
        flat = images.reshape(-1, *images.shape[-3:])
        return augmentation(flat).reshape(images.shape)

    def _samples_on_device(self) -> bool:
        if self._residency_choice() == "host":
            return False  # the device sampler gathers from a split on the device
        if self.sample_on_device is not None:
            return self.sample_on_device
        return self._compute_device().type == "cuda"

    def _residency_choice(self) -> str:
        """``resident`` resolved for the compute device, once (and said in one log line when chosen by ``auto``)."""
        if self._residency is None:
            split_bytes = sum(classes.images.numel() for classes in self.splits.values())
            self._residency, reason = choose_residency(self.resident, split_bytes, self._compute_device())
            if self.resident == "auto":
                rank_zero_info(f"Images resident on the {self._residency} ({reason}).")
        return self._residency

    def _compute_device(self) -> torch.device:
        strategy = getattr(self.trainer, "strategy", None)  # no trainer (or a stand-in) before fit: the CPU
        return strategy.root_device if strategy is not None else torch.device("cpu")

    def _loader(self, split: str, keys) -> DataLoader:
        # Pinned tensors copy to the GPU without a stream synchronisation (a pageable copy would sync).
        pinned = torch.cuda.is_available()
        if self._residency_choice() == "host":
            # One background process gathers the episodes (it shares the mapped split: forked, not copied).
            stream = HostGatheredStream(self._index_stream(split, keys), self.splits[split].images)
            return DataLoader(stream, batch_size=None, pin_memory=pinned, num_workers=1)
        return DataLoader(self._index_stream(split, keys), batch_size=None, pin_memory=pinned)

    def _index_stream(self, split: str, keys) -> EpisodeStream | ImageBatchStream:
        """The image indices (and class ids) of each batch of ``split``, one batch per key of ``keys()``."""
        classes = self.splits[split]
        if split == "train" and self.pretrain_batch_size:
            return ImageBatchStream(classes.class_offsets, self.pretrain_batch_size, self.seed, STREAMS[split], keys)
        tasks = self.train_tasks_per_batch if split == "train" else 1
        return EpisodeStream(
            classes.class_offsets,
            self.specs[split],
            self._seed_of(split),
            STREAMS[split],
            keys,
            tasks,
            self._groups(split, classes),
        )

    def _groups(self, split: str, classes: ClassImages) -> Tensor | None:
        if split == "train" or not self.evaluation_within_group:
            return None
        if classes.class_groups is None:
            raise UserError(
                f"evaluation_within_group needs class groups, but {type(self.dataset).__name__} defines none: "
                "set evaluation_within_group: false."
            )
        return classes.class_groups

    def _train_keys(self) -> range:
        # Called when an epoch starts: the stream goes on after the last batch trained on, one key per (batch, rank).
        rank, world = self._rank_and_world()
        done = self._batches_done()
        count = self.episode_counts["train"]
        return range(done * world + rank, (done + count) * world, world)

    def _batches_done(self) -> int:
        if self._train_batches_done is None:  # a fresh run, or a checkpoint saved before this count existed
            trainer = self.trainer
            return trainer.global_step * trainer.accumulate_grad_batches if trainer else 0
        return self._train_batches_done

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: where the training episode stream goes on, and the images the model was trained on."""
        return {"train_batches_done": self._train_batches_done, "image_shape": self.image_shape}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_image_shape(state_dict.get("image_shape"), self.image_shape)
        self._train_batches_done = state_dict.get("train_batches_done")

    @property
    def image_shape(self) -> dict[str, int | None]:
        """Channels and side of the images this data module gives the model."""
        return {"channels": self.channels, "image_size": getattr(self.dataset, "image_size", None)}

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


def _checked_shot_range(shot_range: tuple[int, int] | None, train: EpisodeSpec) -> tuple[int, int] | None:
    """``shot_range`` as a tuple, or a :class:`UserError` saying how to fix it."""
    if shot_range is None:
        return None
    low, high = shot_range
    if not 1 <= low <= high < train.images_per_class:
        raise UserError(
            f"train_shot_range [{low}, {high}] must satisfy 1 <= low <= high < train.shot + train.query "
            f"(= {train.images_per_class} images per class, at least one of them a query): lower the range or raise "
            "--data.train.query."
        )
    return low, high


def _pin_image_size(dataset_config: dict, dataset: FewShotDataset) -> None:
    """Writes the image size the dataset chose (``image_size: null``: Omniglot's depends on the protocol) into its
    config, so that a checkpoint says the size its model was trained at even when evaluated with another protocol."""
    init_args = dataset_config.get("init_args") if isinstance(dataset_config, dict) else None
    if isinstance(init_args, dict) and init_args.get("image_size", 0) is None:
        init_args["image_size"] = getattr(dataset, "image_size", None)


def check_image_shape(trained: dict[str, int | None] | None, used: dict[str, int | None]) -> None:
    """Refuses images of another size or channel count than a checkpoint's model was trained on: the model would
    run on them and give confident nonsense rather than an error."""
    if not trained:  # a checkpoint from before image shapes were saved
        return
    fixes = []
    if trained.get("channels") not in (None, used["channels"]):
        fixes.append(f"use a dataset of {trained['channels']}-channel images, as in training")
    if trained.get("image_size") not in (None, used["image_size"]):
        fixes.append(f"set data.dataset.init_args.image_size={trained['image_size']}")
    if fixes:
        raise ValueError(
            f"The checkpoint's model was trained on images with {_describe(trained)}, but the data given now has "
            f"{_describe(used)}: {' and '.join(fixes)} (or leave the data settings out of the config: evaluation "
            "from a checkpoint takes the checkpoint's own)."
        )


def _describe(shape: dict[str, int | None]) -> str:
    return f"channels={shape['channels']}, image_size={shape['image_size']}"


def _given(folder: str | None, option: str) -> str:
    """``folder``, which the caller's checks require (``predict_dataloader`` refuses a run without it)."""
    if not folder:
        raise UserError(f"predict needs --{option}=<folder>.")
    return folder
