"""Few-shot evaluation of a fixed pretrained backbone, with the features of every image computed once.

A frozen backbone gives an image the same features in every episode, and an evaluation run draws its episodes from
one split: so :class:`FrozenFeatureMethod` embeds the whole split once (in batches, under inference mode, in the
trainer's precision) and each episode looks its features up by ``Episode.support_indices`` / ``query_indices``.
1000 test episodes then cost one pass over the split plus 1000 small classifier fits. Features stay in memory for
the model's life (per split) and, with ``feature_cache_dir``, on disk keyed by the backbone's weights and the
split's images, so a second run reads them. Images that are not from a split (``predict``) are embedded directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.trainer.states import RunningStage
from torch import Tensor, nn

from fsl_lightning.data.datasets.base import ClassImages
from fsl_lightning.data.decoded_cache import read_cache_file, save_atomically
from fsl_lightning.episode import SupportSet
from fsl_lightning.methods.base import FewShotMethod
from fsl_lightning.methods.episode_classifiers import EpisodeClassifier, LogisticRegression
from fsl_lightning.methods.feature_classifiers.base_features import EpisodeClassifierHooks
from fsl_lightning.methods.registry import registered
from fsl_lightning.run.errors import UserError

log = logging.getLogger(__name__)

#: The split each evaluation stage draws its episodes from.
STAGE_SPLITS = {RunningStage.TESTING: "test", RunningStage.VALIDATING: "val", RunningStage.SANITY_CHECKING: "val"}
#: At most this many bytes of a split's images go into its fingerprint (a strided sample: enough to tell splits,
#: image sizes and decodings apart without hashing gigabytes).
FINGERPRINT_SAMPLE_BYTES = 1 << 22


class FrozenFeatureMethod(FewShotMethod):
    """Base of the methods that evaluate a fixed backbone: nothing to train, features looked up per episode.

    Subclasses implement :meth:`fit_support` and :meth:`score` with :meth:`features`; :meth:`image_features` is the
    backbone call (override it for models with several outputs). ``fit`` is refused: fine-tune a backbone with
    :class:`~fsl_lightning.methods.Transfer` instead.

    Args:
        backbone: the feature extractor, images -> [B, D], e.g. a
            :class:`~fsl_lightning.backbones.timm_backbone.TimmBackbone` with ``frozen: true``.
        feature_batch_size: images per backbone call when a split is embedded.
        feature_cache_dir: a folder for features on disk, one file per (backbone weights, split images, precision);
            ``null`` keeps them in memory only.
    """

    needs_trained_weights = False

    def __init__(
        self, backbone: nn.Module, feature_batch_size: int = 256, feature_cache_dir: str | None = None
    ) -> None:
        super().__init__(backbone)
        if feature_batch_size < 1:
            raise ValueError(f"feature_batch_size must be at least 1, got {feature_batch_size}.")
        self.feature_batch_size = feature_batch_size
        self.feature_cache_dir = feature_cache_dir
        #: images that went through the backbone so far (what the cache saves shows here)
        self.images_embedded = 0
        self._split_features: dict[str, tuple[Tensor, Tensor]] = {}  # split -> (its images tensor, their features)
        self._weights_fingerprint: str | None = None

    # ----- what subclasses use ------------------------------------------------------------------------------------
    def features(self, images: Tensor, indices: Tensor | None) -> Tensor:
        """Features [N, D] (float32) of an episode's images: looked up in the split's features when ``indices`` says
        where the images sit in the split being evaluated, else computed from ``images``."""
        split = self.evaluated_split()
        if indices is None or split is None:
            return self.embed(images)
        return self.split_features(split)[indices]

    def image_features(self, images: Tensor) -> Tensor:
        """The backbone's features of a batch of images; the one place a subclass changes how images are embedded."""
        return self.backbone(images)

    def embed(self, images: Tensor) -> Tensor:
        """Features [B, D] (float32) of float images in [0, 1], with the backbone in eval mode, in the trainer's
        precision, without autograd."""
        with torch.inference_mode(), self.precision_context(), _eval_mode(self.backbone):
            features = self.image_features(images).float()
        self.images_embedded += len(images)
        return features

    def split_features(self, split: str) -> Tensor:
        """Features [M, D] of every image of the data module's ``split``, in the order of its image tensor."""
        data = self.data
        if data is None:
            raise RuntimeError(
                f"{type(self).__name__} reads the {split} split from the trainer's EpisodicDataModule; it has none."
            )
        classes = data.splits[split]
        cached = self._split_features.get(split)
        if cached is not None and cached[0] is classes.images:
            return cached[1]
        features = self._read_or_embed(split, classes.images, classes.class_names)
        self._split_features[split] = (classes.images, features)
        return features

    def evaluated_split(self) -> str | None:
        """The data module split that the running validation or test draws from; ``None`` otherwise (predict, or
        no trainer, or a data module without decoded splits)."""
        trainer = self._trainer
        if trainer is None:
            return None
        stage = trainer.state.stage
        split = STAGE_SPLITS.get(stage) if stage is not None else None
        data = self.data
        return split if data is not None and split in data.splits else None

    def precision_context(self) -> contextlib.AbstractContextManager:
        """The trainer's autocast (``bf16-mixed``...), also outside its steps; nothing without a trainer."""
        if self._trainer is None:
            return contextlib.nullcontext()
        return self._trainer.precision_plugin.forward_context()

    def clear_feature_cache(self) -> None:
        """Forget the features in memory: call it after changing the backbone's weights by hand."""
        self._split_features.clear()
        self._weights_fingerprint = None

    # ----- Lightning hooks ----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit":
            raise UserError(
                f"{type(self).__name__} evaluates a fixed pretrained backbone and has nothing to train: run `test` "
                "(or `validate`, `predict`) instead of `fit`. To fine-tune the backbone, use "
                "fsl_lightning.methods.Transfer with the backbone's `frozen: false`."
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.clear_feature_cache()  # the checkpoint's weights replace the ones the features came from

    # ----- the split's features: disk cache or one batched pass ---------------------------------------------------
    def _read_or_embed(self, split: str, images: Tensor, class_names: list[str]) -> Tensor:
        cache_dir = self.feature_cache_dir
        path = self._cache_file(cache_dir, split, images, class_names) if cache_dir else None
        cached = read_cache_file(path, map_location=self.device) if path is not None else None
        if isinstance(cached, Tensor):
            log.info("Read the %s features from %s", split, path)
            return cached
        features = torch.cat(
            [
                self.embed(batch.to(self.device, non_blocking=True).float().div_(255.0))
                for batch in images.split(self.feature_batch_size)
            ]
        )
        if path is not None:
            save_atomically(features.cpu(), path)
        return features

    def _cache_file(self, cache_dir: str, split: str, images: Tensor, class_names: list[str]) -> Path:
        """One file per backbone (class, architecture, weights), precision and split content."""
        if self._weights_fingerprint is None:
            self._weights_fingerprint = _module_fingerprint(self.backbone)
        precision = str(self._trainer.precision) if self._trainer is not None else "32-true"
        key = hashlib.sha1(
            "\n".join([self._weights_fingerprint, precision, _images_fingerprint(images, class_names)]).encode()
        ).hexdigest()[:24]
        return Path(cache_dir).expanduser() / f"{type(self.backbone).__name__}-{split}-{key}.pt"


@registered
class FrozenFeatures(EpisodeClassifierHooks, FrozenFeatureMethod):
    """A frozen pretrained backbone (DINOv2, any timm or torchvision model) and a light classifier fitted on each
    episode's support features: the standard few-shot baseline of foundation models.

    Args:
        backbone: a pretrained feature extractor, e.g. ``TimmBackbone(name=vit_small_patch14_dinov2, pretrained=true,
            frozen=true, image_size=224)`` or ``TorchvisionBackbone(name=resnet50, weights=DEFAULT, frozen=true)``.
        episode_classifier: fitted on each episode's support features; default logistic regression on L2-normalised
            features (:class:`~fsl_lightning.methods.episode_classifiers.LogisticRegression`); ``NearestCentroid`` is
            the prototype classifier.
        feature_batch_size, feature_cache_dir: see :class:`FrozenFeatureMethod`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        episode_classifier: EpisodeClassifier | None = None,
        feature_batch_size: int = 256,
        feature_cache_dir: str | None = None,
    ) -> None:
        super().__init__(backbone, feature_batch_size, feature_cache_dir)
        self.episode_classifier = episode_classifier or LogisticRegression()

    def embed_base_split(self, split: ClassImages) -> Tensor:
        """The training split's features, embedded once per backbone (and cached) like the evaluated splits."""
        cached = self._split_features.get("train")
        if cached is None or cached[0] is not split.images:
            features = self._read_or_embed("train", split.images, split.class_names)
            self._split_features["train"] = (split.images, features)
        return self._split_features["train"][1]

    def fit_support(self, support: SupportSet) -> Any:
        """The episode classifier fitted on the support features (the episode's seed drives its randomness)."""
        features = self.features(support.images, support.indices)
        return self.episode_classifier.fit(features, support.labels, support.way, seed=support.seed)

    def score(self, state: Any, query_images: Tensor, query_indices: Tensor | None = None) -> Tensor:
        return self.episode_classifier.score(state, self.features(query_images, query_indices))


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode for the block (dropout off, normalisation statistics fixed), then as it was."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _tensor_digest(tensors: Iterable[tuple[str, Tensor]]) -> str:
    digest = hashlib.sha1()
    for name, tensor in tensors:
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def _module_fingerprint(module: nn.Module) -> str:
    """The module's class, architecture (its repr, preprocessing included) and every weight and buffer."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return f"{type(module).__qualname__}\n{module!r}\n{_tensor_digest(tensors)}"


def _images_fingerprint(images: Tensor, class_names: list[str]) -> str:
    step = max(1, images.numel() // FINGERPRINT_SAMPLE_BYTES)
    sample = images.reshape(-1)[::step]
    return f"{tuple(images.shape)}\n{class_names}\n{_tensor_digest([('images', sample)])}"
