"""CLIP (Radford et al. 2021) and its open reproductions through ``open_clip``: an image tower that is a backbone
like any other, and a text tower that turns class names into classifier weights (zero-shot classification)."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import Tensor, nn

from fsl_lightning.backbones.frozen_model import FreezableWrapper
from fsl_lightning.checkpoint_io import checkpoint_load_errors_reported
from fsl_lightning.pretrained import ModelInput, download_from_hugging_face, download_from_url

log = logging.getLogger(__name__)

#: open_clip's default name of the weights file in a Hub repository, and its safetensors twin (looked for first).
HUB_WEIGHTS = "open_clip_pytorch_model.bin"
HUB_SAFE_WEIGHTS = "open_clip_model.safetensors"


def clip_architecture(name: str, model_config: dict[str, Any] | None) -> dict[str, Any]:
    """open_clip's config of the built-in model ``name`` with ``model_config`` merged in, key by key."""
    base = open_clip.get_model_config(name) if ":" not in name else None
    if base is None:
        raise ValueError(
            f"Unknown open_clip model {name!r}: use a built-in name (`open_clip.list_models()`, e.g. ViT-B-32, "
            "ViT-B-16, ViT-L-14, RN50) and give its weights by `pretrained` tag or `weights_path`."
        )
    return _merged(base, model_config or {})


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def weights_config(name: str, pretrained: str | None) -> dict[str, Any]:
    """open_clip's record of the ``pretrained`` tag of ``name`` (where the weights are, their preprocessing); ``{}``
    when there is no tag or it is a local file."""
    if pretrained is None or os.path.isfile(pretrained):
        return {}
    config = open_clip.get_pretrained_cfg(name, pretrained)
    if not config:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ValueError(
            f"Unknown pretrained tag {pretrained!r} for open_clip model {name!r}: choose one of {tags}; or set "
            "`weights_path` to a local weights file, or `pretrained: null` for random initialisation."
        )
    return config


def fetch_weights(name: str, tag: str, config: dict[str, Any], cache_dir: str | None) -> str:
    """The local path of the tag's weights: from the Hugging Face Hub when open_clip knows a repository for them
    (it prefers those), else from their URL; cached either way."""
    what = f"open_clip {name} ({tag})"
    note = f" With `weights_path`, keep `pretrained: {tag}`: the tag sets the preprocessing and activation."
    if config.get("hf_hub"):
        repo_id, filename = os.path.split(config["hf_hub"])  # "org/repo/" (default file name) or "org/repo/file"
        filename = filename or HUB_WEIGHTS
        safe = HUB_SAFE_WEIGHTS if filename == HUB_WEIGHTS else os.path.splitext(filename)[0] + ".safetensors"
        return download_from_hugging_face(repo_id, (safe, filename), what, "weights_path", cache_dir, note)
    folder = cache_dir or os.path.expanduser("~/.cache/clip")  # open_clip's own download folder
    return download_from_url(config["url"], folder, what, "weights_path", note)


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """open_clip warns that the model is random before we load its weights; our own log says what was loaded."""

    def keep(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


class CLIPBackbone(FreezableWrapper):
    """An open_clip model: ``forward(images)`` gives image-tower features [B, out_features] (not normalised),
    :meth:`encode_text` gives text-tower features of strings, :attr:`logit_scale` the model's learned temperature.

    Input: float images in [0, 1], [B, in_channels, H, W], at any size: resized to the tower's input size and
    normalised with the weights' mean and std inside ``forward``; one-channel images are repeated to RGB.
    The tokenizer is open_clip's for the model (the original CLIP BPE for the OpenAI-style models).

    Args:
        name: an open_clip model name (``open_clip.list_models()``): ``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``,
            ``RN50``...
        pretrained: an open_clip ``pretrained`` tag of that model (``open_clip.list_pretrained_tags_by_model(name)``:
            ``openai``, ``laion2b_s34b_b79k``, ...), downloaded once into the Hugging Face Hub cache (or open_clip's
            ``~/.cache/clip`` for URL-only weights); or a local weights file; or ``null`` for random initialisation,
            which is logged as a warning. Required in Python, so that code always says which it wants (jsonargparse
            4 still fills a YAML config's omitted ``pretrained`` with ``null``: random weights, with the warning).
        weights_path: a local weights file in open_clip's format (the Hub's ``open_clip_pytorch_model.bin`` or
            ``open_clip_model.safetensors``, or a state dict saved from this model) loaded instead of downloading; keep ``pretrained`` set to its tag so that its preprocessing (mean, std) and
            activation (QuickGELU for the OpenAI weights) are used.
        frozen: no gradients to the model's parameters and it stays in eval mode (a fixed feature extractor).
        model_config: merged into open_clip's config of ``name``, key by key, e.g.
            ``{vision_cfg: {layers: 2, width: 64}}``: for small test models of the same architecture (weights must
            then fit the changed architecture).
        in_channels: 3 for RGB, 1 for grayscale (repeated to RGB).
        cache_dir: where to cache downloads instead of the Hub cache (``$HF_HUB_CACHE``) / ``~/.cache/clip``.
    """

    model: Any  # an open_clip CLIP (encode_image, encode_text, logit_scale): open_clip ships no type information

    def __init__(
        self,
        name: str,
        pretrained: str | None,
        weights_path: str | None = None,
        frozen: bool = False,
        model_config: dict[str, Any] | None = None,
        in_channels: int = 3,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"CLIPBackbone takes 1- or 3-channel images, got in_channels={in_channels}.")
        architecture = clip_architecture(name, model_config)
        tag_config = weights_config(name, pretrained)
        self.name, self.pretrained, self.in_channels = name, pretrained, in_channels
        self.model = self._create(name, architecture, model_config or {}, tag_config)
        weights_file = weights_path or (pretrained if pretrained and not tag_config else None)
        if weights_file is None and tag_config and pretrained is not None:  # a tag_config means a pretrained tag
            weights_file = fetch_weights(name, pretrained, tag_config, cache_dir)
        if weights_file is None:
            log.warning("CLIPBackbone(%r) is randomly initialised (pretrained: null).", name)
        else:
            self._load(weights_file, name)
        self.tokenizer = open_clip.get_tokenizer(name, context_length=architecture["text_cfg"].get("context_length"))
        self.input = ModelInput(
            _side(architecture["vision_cfg"].get("image_size", 224)),
            tag_config.get("mean", OPENAI_DATASET_MEAN),
            tag_config.get("std", OPENAI_DATASET_STD),
            tag_config.get("interpolation", "bicubic"),
        )
        self.out_features = int(architecture["embed_dim"])
        if frozen:
            self.freeze()

    @staticmethod
    def _create(name: str, architecture: dict, overrides: dict, tag_config: dict) -> nn.Module:
        """The architecture with random weights (weights are loaded by :meth:`_load`, never downloaded by open_clip)."""
        changed = {key: architecture[key] for key in overrides}
        with _quiet_random_init_warning():
            return open_clip.create_model(
                name, pretrained=None, force_quick_gelu=bool(tag_config.get("quick_gelu", False)), **changed
            )

    def _load(self, weights_file: str, name: str) -> None:
        try:
            with checkpoint_load_errors_reported(weights_file):  # open_clip reads it with weights_only
                open_clip.load_checkpoint(self.model, weights_file)
        except (RuntimeError, AssertionError, KeyError) as error:  # missing, unexpected or mis-shaped weights
            raise ValueError(
                f"The weights file {weights_file} does not fit open_clip model {name!r} (with its model_config): "
                f"{str(error)[:2000]}"
            ) from error

    def forward(self, images: Tensor) -> Tensor:
        return self.model.encode_image(self.input(images))

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Text-tower features [len(texts), out_features] (not normalised), tokenised by the model's tokenizer."""
        if not texts:
            raise ValueError("encode_text needs at least one text.")
        tokens = self.tokenizer(list(texts)).to(self.input.mean.device)
        return torch.cat([self.model.encode_text(chunk) for chunk in tokens.split(batch_size)])

    @property
    def logit_scale(self) -> Tensor:
        """The learned inverse temperature of the cosine similarities (100 for the trained models)."""
        return self.model.logit_scale.exp().clamp(max=100.0)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, pretrained={self.pretrained!r}, frozen={self.frozen}, "
            f"out_features={self.out_features}"
        )


def _side(image_size: int | Sequence[int]) -> int:
    if isinstance(image_size, int):
        return image_size
    height, width = image_size
    if height != width:
        raise ValueError(f"CLIPBackbone takes square inputs; this model is built for {height}x{width}.")
    return int(height)
