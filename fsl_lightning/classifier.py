"""Prediction from Python: load a model once, fit a support set, then classify as many query sets as wanted.

    clf = FewShotClassifier.from_checkpoint("outputs/.../checkpoints/last.ckpt")
    clf.fit_support("my_support/")                       # one sub-folder of images per class
    for prediction in clf.predict("my_queries/"):         # a folder, a list of files, or an image tensor
        print(prediction.file, prediction.class_name, prediction.score)
    clf.predict_to_csv("other_queries/", "predictions.csv")  # the CSV that `python -m fsl_lightning predict` writes

A query file that cannot be decoded gets a prediction with its ``error`` and no class (``bad_images="skip"``, the
default), or ends the call (``bad_images="stop"``); a bad support image always ends ``fit_support``.

The same code as the CLI's ``predict`` reads the folders, decodes the images (the dataset's ``decode_image``),
fits the support set (the method's ``fit_support``, once), batches the queries and scores them (``score``,
``prediction_rows``), so the two give the same predictions and scores; here the imports, the model load and the
fit of a support set are paid once, however many queries follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser
from torch import Tensor

from fsl_lightning.callbacks.prediction_writer import rows_in_file_order, write_predictions_csv
from fsl_lightning.callbacks.speed import evaluation_layout
from fsl_lightning.data import EpisodicDataModule, FewShotDataset
from fsl_lightning.data.datamodule import check_image_shape
from fsl_lightning.data.folders import (
    BadImages,
    QueryImages,
    check_bad_images_choice,
    decode_files,
    no_usable_queries,
    read_query_folder,
    read_support_folder,
)
from fsl_lightning.data.images import as_model_input
from fsl_lightning.data.predict_batches import PREDICT_BATCH_SIZE, query_slices
from fsl_lightning.episode import SupportSet
from fsl_lightning.methods import FewShotMethod
from fsl_lightning.methods.base import EmbeddingMethod
from fsl_lightning.run.checkpoint_files import read_checkpoint, restore_weights, training_config_in
from fsl_lightning.run.composed_configs import load_config
from fsl_lightning.run.errors import UserError

#: an image: a file (decoded as the dataset decodes its own), or a tensor [C, H, W] (uint8 pixels, or floats in [0, 1])
Image = str | Path | Tensor
#: query images: a folder (every image under it), an image file, a list of images, or a tensor [N, C, H, W]
Queries = str | Path | Sequence[Image] | Tensor
#: support images: a folder with one sub-folder of images per class, or ``{class name: images}``
Support = str | Path | Mapping[str, Sequence[Image] | Tensor]


@dataclass(frozen=True)
class Prediction:
    """One query: its file (``None`` for an image given as a tensor), the predicted class, and that class's score,
    which means what :attr:`FewShotClassifier.score_name` says (a probability, a distance...), and whether the query
    is an ``outlier``, farther from every class than the validation queries were from theirs (``None`` when the
    checkpoint has no validation to tell: :mod:`fsl_lightning.methods.score_calibration`). A file that could not be
    decoded has no class and no score, and ``error`` says why."""

    file: str | None
    class_name: str | None
    score: float | None
    outlier: bool | None = None
    error: str | None = None


@dataclass(frozen=True)
class FittedSupport:
    """A support set as the method fitted it (``state`` of its ``fit_support``, on the classifier's device) and the
    names of its classes."""

    state: Any
    class_names: tuple[str, ...]


class FewShotClassifier:
    """A few-shot method ready to classify images: evaluation mode, no gradients, on ``device`` (the CPU by default).

    Build it with :meth:`from_checkpoint` (a model trained with ``fit``), :meth:`from_config` (a method with nothing
    to train, such as 1-NN), or directly from a method and the dataset whose image decoding it expects. A method
    that needs trained weights is refused unless ``trained=True`` says its weights are trained (as the CLI refuses
    one without ``--ckpt_path``).

    Args:
        method: the few-shot method.
        dataset: decodes image files (``decode_image``) into the images the method was trained on.
        device: where the method runs.
        trained: whether ``method`` holds trained weights.
        batch_size: query images scored together (as ``data.predict_batch_size`` in the CLI: transductive methods
            score a query together with its batch).
    """

    def __init__(
        self,
        method: FewShotMethod,
        dataset: FewShotDataset,
        device: str | torch.device = "cpu",
        trained: bool = False,
        batch_size: int = PREDICT_BATCH_SIZE,
    ) -> None:
        if not trained:
            method.refuse_untrained_weights(
                "predict",
                "use FewShotClassifier.from_checkpoint(<file.ckpt>), or pass trained=True for a method "
                "whose weights you trained yourself",
            )
        self.device = torch.device(device)
        # The evaluation form that `predict` uses (layout, folded batch norm), so that both give the same scores.
        self.method = evaluation_layout(method.to(self.device).eval(), self.device)
        if isinstance(self.method, EmbeddingMethod):
            self.method.use_evaluation_backbone()
        self.dataset = dataset
        self.batch_size = batch_size
        self.support: FittedSupport | None = None

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path, device: str | torch.device = "cpu", **kwargs: Any
    ) -> FewShotClassifier:
        """The method and its trained weights from a checkpoint of ``python -m fsl_lightning fit``, with the data
        settings it was trained with (image size, channels, decoding); no training data needed."""
        saved = read_checkpoint(Path(checkpoint))  # read once: settings and weights
        config = training_config_in(saved)
        if "model" not in config or "data" not in config:
            raise UserError(
                f"{checkpoint} does not hold the settings of its training (a checkpoint written outside "
                "`python -m fsl_lightning fit`?): build the method, load its weights and pass it with its dataset, "
                "FewShotClassifier(method, dataset, trained=True)."
            )
        method, datamodule = _built(config, str(checkpoint))
        check_image_shape(saved.get(type(datamodule).__qualname__, {}).get("image_shape"), datamodule.image_shape)
        restore_weights(method, saved, strict=method.strict_loading)
        return cls(method, datamodule.dataset, device=device, trained=True, **kwargs)

    @classmethod
    def from_config(cls, config: str | Path, device: str | torch.device = "cpu", **kwargs: Any) -> FewShotClassifier:
        """The method and dataset of a config file's ``model`` and ``data`` sections, untrained: for methods with
        nothing to train (``NearestNeighbour``, frozen pretrained features); others are refused."""
        sections = load_config(config)
        method, datamodule = _built(sections, str(config))
        return cls(method, datamodule.dataset, device=device, **kwargs)

    @property
    def score_name(self) -> str:
        """What :attr:`Prediction.score` means: the method's ``score_name`` (``probability``, ``distance``...)."""
        return self.method.score_name

    def fit_support(
        self,
        support: Support | Tensor,
        labels: Tensor | Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> FewShotClassifier:
        """Fits the classes to choose from, once for all the queries that follow: a folder with one sub-folder of
        images per class (as ``predict``'s ``data.predict_support_dir``), ``{class name: images}``, or an image
        tensor [N, C, H, W] with its ``labels`` [N] in ``0..way-1`` (and ``class_names``, default ``"0"``,
        ``"1"``...). Returns the classifier."""
        if isinstance(support, Tensor):
            images, labels, class_names = self._labelled_tensor(support, labels, class_names)
        elif isinstance(support, (str, Path)):
            images, labels, class_names = read_support_folder(support, self.dataset.decode_image)
        else:
            images, labels, class_names = self._labelled_images(support)
        images = self._as_input(images, "support").to(self.device)
        names = tuple(class_names)
        support_set = SupportSet(images, labels.to(self.device), len(names), class_names=names)
        with torch.inference_mode():  # as Lightning's predict loop
            self.support = FittedSupport(self.method.fit_support(support_set), names)
        return self

    def predict(self, queries: Queries, bad_images: BadImages = "skip") -> list[Prediction]:
        """Classifies ``queries``: a folder (every image under it, as ``predict``'s ``data.predict_query_dir``),
        an image file, a list of images, or a tensor [N, C, H, W]. A file that does not decode: ``skip`` gives it
        a prediction with its ``error`` (and no class), ``stop`` raises its :class:`CorruptImageError`."""
        score_name = self.score_name
        return [
            Prediction(
                row["query_file"],
                row["predicted_class"] or None,
                row.get(score_name),
                {"yes": True, "no": False}.get(row.get("outlier", "")),
                row.get("error"),
            )
            for row in self._rows(queries, bad_images)
        ]

    def predict_to_csv(self, queries: Queries, path: str | Path, bad_images: BadImages = "skip") -> Path:
        """Classifies ``queries`` into the CSV that ``python -m fsl_lightning predict`` writes; returns its path."""
        write_predictions_csv(self._rows(queries, bad_images), self.score_name, path)
        return Path(path)

    def _rows(self, queries: Queries, bad_images: BadImages) -> list[dict[str, Any]]:
        """``predict_step``'s rows for the queries, scored against the fitted support set batch by batch, as in the
        CLI's ``predict``, and a row for each file that did not decode."""
        if self.support is None:
            raise UserError("Call fit_support(<support folder or {class name: images}>) before predict.")
        check_bad_images_choice(bad_images)
        images = self._query_images(queries, bad_images)
        rows = []
        with torch.inference_mode():  # as Lightning's predict loop
            for batch_images, batch_files in query_slices(images.images, images.decoded_files, self.batch_size):
                logits = self.method.score(self.support.state, as_model_input(batch_images.to(self.device)))
                rows += self.method.prediction_rows(logits, batch_files, self.support.class_names)
        return rows_in_file_order(rows, images)

    def _query_images(self, queries: Queries, bad_images: BadImages) -> QueryImages:
        """The query images as model input, with their files (``None`` for a tensor) and the files that did not
        decode."""
        if isinstance(queries, (str, Path)) and Path(queries).is_dir():
            read = read_query_folder(queries, self.dataset.decode_image, bad_images)
            read.images = self._as_input(read.images, "query")
            return read
        if isinstance(queries, (str, Path)):
            queries = [queries]
        if isinstance(queries, Tensor):
            images, files = self._images(queries, "query")
            return QueryImages(images, files, files)
        if not queries:
            raise UserError("No query images given.")
        all_files = [str(Path(query).expanduser()) if isinstance(query, (str, Path)) else None for query in queries]
        paths = [Path(file) for file in all_files if file is not None]
        decoded, unreadable = decode_files(paths, self.dataset.decode_image, stop_at_first=bad_images == "stop")
        decoded_files = [file for file in all_files if file not in unreadable]
        if not decoded_files:
            raise no_usable_queries(len(queries), unreadable)
        decoded_in_order = iter(decoded)
        tensors = [  # the files (all_files not None) decoded in order, the tensors as given
            next(decoded_in_order) if isinstance(query, (str, Path)) else query
            for query, file in zip(queries, all_files)
            if file not in unreadable
        ]
        images = torch.cat([self._as_input(tensor.unsqueeze(0), "query") for tensor in tensors])
        return QueryImages(images, decoded_files, all_files, unreadable)

    def _labelled_images(self, support: Mapping[str, Sequence[Image] | Tensor]) -> tuple[Tensor, Tensor, list[str]]:
        class_names = [str(name) for name in support]
        if len(class_names) < 2:
            raise UserError(f"fit_support needs at least 2 classes to choose from, got {len(class_names)}.")
        images, labels = [], []
        for label, images_of_class in enumerate(support.values()):
            class_images, _ = self._images(images_of_class, f"support class {class_names[label]!r}")
            images.append(class_images)
            labels += [label] * len(class_images)
        return torch.cat(images), torch.tensor(labels), class_names

    def _labelled_tensor(
        self, images: Tensor, labels: Tensor | Sequence[int] | None, class_names: Sequence[str] | None
    ) -> tuple[Tensor, Tensor, list[str]]:
        if labels is None:
            raise UserError(
                "fit_support(images) needs the label of each image: fit_support(images, labels=[0, 1, ...])."
            )
        labels = torch.as_tensor(labels, dtype=torch.long).flatten().cpu()
        way = int(labels.max()) + 1 if len(labels) else 0
        if len(labels) != len(images) or labels.min() < 0 or len(labels.unique()) != way or way < 2:
            raise UserError(
                f"fit_support got {len(images)} images and labels {labels.tolist()}: give one label per image, "
                "numbered 0..way-1 with every class present, and at least 2 classes."
            )
        class_names = [str(label) for label in range(way)] if class_names is None else [str(n) for n in class_names]
        if len(class_names) != way:
            raise UserError(f"fit_support got {len(class_names)} class names for {way} classes: give one per label.")
        return images, labels, class_names

    def _images(self, images: Sequence[Image] | Tensor, role: str) -> tuple[Tensor, list[str | None]]:
        """Model input [N, C, H, W] of files and tensors, with the file of each (``None`` for a tensor)."""
        if isinstance(images, Tensor):
            batch = images.unsqueeze(0) if images.dim() == 3 else images
            return self._as_input(batch, role), [None] * len(batch)
        if not images:
            raise UserError(f"No {role} images given.")
        tensors = [self._decoded(image) if isinstance(image, (str, Path)) else image for image in images]
        files = [str(Path(image).expanduser()) if isinstance(image, (str, Path)) else None for image in images]
        return torch.cat([self._as_input(tensor.unsqueeze(0), role) for tensor in tensors]), files

    def _decoded(self, file: str | Path) -> Tensor:
        path = Path(file).expanduser()
        return self.dataset.decode_image(path, str(path))

    def _as_input(self, images: Tensor, role: str) -> Tensor:
        """Images [N, C, H, W] as the model's float input, after checking they have the shape it was trained on."""
        channels, size = self.dataset.channels, getattr(self.dataset, "image_size", None)
        shape_fits = images.dim() == 4 and images.shape[1] == channels
        shape_fits = shape_fits and (size is None or tuple(images.shape[2:]) == (size, size))
        if not shape_fits or not (images.dtype == torch.uint8 or images.is_floating_point()):
            wanted = f"[N, {channels}, {size}, {size}]" if size else f"[N, {channels}, H, W]"
            raise UserError(
                f"The {role} images are {images.dtype} {list(images.shape)}; the model takes {wanted} (uint8, or "
                "floats in [0, 1]): pass image files to have them decoded and resized as in training."
            )
        return as_model_input(images)


def _built(config: dict, source: str) -> tuple[FewShotMethod, EpisodicDataModule]:
    """The method and data module of a config's ``model`` and ``data`` sections, parsed as the CLI parses them."""
    if "model" not in config or "data" not in config:
        raise UserError(f"{source} needs a `model` and a `data` section (as the configs under experiments/).")
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(FewShotMethod, "model", subclass_mode=True)
    parser.add_lightning_class_args(EpisodicDataModule, "data", subclass_mode=False)
    try:
        parsed = parser.parse_object({"model": config["model"], "data": config["data"]})
    except Exception as error:  # jsonargparse's message lists every type it tried: its first line says what is wrong
        raise UserError(f"{source}: the model or data settings do not parse: {str(error).splitlines()[0]}") from error
    built = parser.instantiate_classes(parsed)
    return built.model, built.data
