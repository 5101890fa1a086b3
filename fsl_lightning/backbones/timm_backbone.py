"""Any timm model (DINOv2, ViTs, ConvNeXts, ResNets...) as a feature extractor, pretrained or not, frozen or not."""

from __future__ import annotations

import logging
from typing import Any

import timm
import torch
from timm.data import resolve_model_data_config
from torch import Tensor, nn

from fsl_lightning.backbones.frozen_model import FreezableWrapper
from fsl_lightning.checkpoint_io import checkpoint_load_errors_reported
from fsl_lightning.pretrained import ModelInput, download_from_hugging_face, download_from_url

log = logging.getLogger(__name__)

#: The files a timm repository on the Hugging Face Hub holds its weights in, in the order timm looks for them.
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def check_model_name(name: str) -> None:
    """Fail early, with a way to find valid names, instead of timm's bare ``Unknown model``."""
    if not timm.is_model(name):
        raise ValueError(
            f"Unknown timm model {name!r}. List the names with `timm.list_models(pretrained=True)` (a pretrained tag "
            "may follow a dot); for example vit_small_patch14_dinov2 (DINOv2 ViT-S/14), vit_base_patch14_dinov2, "
            "resnet50.a1_in1k, convnext_tiny."
        )


def pretrained_config(name: str) -> Any:
    """timm's pretrained config of ``name`` (its default tag when the name has none); a clear error for a bad tag."""
    try:
        config = timm.models.get_pretrained_cfg(name)
    except RuntimeError as error:  # an architecture with pretrained configs, but not this tag
        raise ValueError(
            f"{error} List the tags with `timm.list_models({name.split('.')[0]!r} + '*', pretrained=True)`."
        ) from None
    if config is None:  # an architecture registered without any pretrained config
        raise ValueError(
            f"timm has no pretrained weights for {name!r}: set `pretrained: null` for random initialisation, or "
            "`weights_path` to a local state dict of this architecture."
        )
    return config


def creation_kwargs(name: str, image_size: int | None, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``model_kwargs``, plus ``img_size`` for models built for one input size (ViTs) when another is asked for.

    Built for that size, the model gets its position embeddings resampled once, from the checkpoint's grid, when
    the weights are loaded.
    """
    kwargs = dict(model_kwargs)
    try:
        fixed = bool(getattr(timm.models.get_pretrained_cfg(name), "fixed_input_size", False))
    except RuntimeError:
        fixed = False  # a bad tag: pretrained_config() reports it when weights are asked for
    if image_size is not None and fixed:
        kwargs.setdefault("img_size", image_size)
    return kwargs


def fetch_weights(name: str, cache_dir: str | None) -> str:
    """The local path of ``name``'s pretrained weights, from the Hub (or the URL of older models) or their cache."""
    config = pretrained_config(name)
    if not (config.hf_hub_id or config.url):
        raise ValueError(
            f"timm has no pretrained weights for {name!r}: set `pretrained: null` for random initialisation, or "
            "`weights_path` to a local state dict of this architecture."
        )
    what = f"timm {config.architecture}.{config.tag}"
    if config.hf_hub_id:
        files = (config.hf_hub_filename,) if config.hf_hub_filename else HUB_WEIGHT_FILES
        return download_from_hugging_face(config.hf_hub_id, files, what, "weights_path", cache_dir)
    return download_from_url(config.url, f"{torch.hub.get_dir()}/checkpoints", what, "weights_path")


class TimmBackbone(FreezableWrapper):
    """A timm model without its classifier: output [B, out_features] pooled features (timm's ``num_classes=0``).

    Input: float images in [0, 1], [B, in_channels, H, W], at any size: they are resized to ``image_size`` and
    normalised with the mean and std of the model's pretrained config inside ``forward``, so datasets need no
    model-specific transform (one-channel images are repeated to three channels).

    Args:
        name: a timm model name, optionally with a pretrained tag after a dot: ``vit_small_patch14_dinov2``
            (DINOv2 ViT-S/14, tag ``lvd142m``), ``vit_base_patch14_dinov2``, ``resnet50.a1_in1k``,
            ``convnext_tiny``... (``timm.list_models(pretrained=True)`` lists them).
        pretrained: ``true`` for timm's pretrained weights of ``name``, downloaded once from the Hugging Face Hub into
            its cache; ``null`` (or ``false``) for random initialisation, which is logged as a warning. Required in
            Python, so that code always says which it wants (jsonargparse 4 still fills a YAML config's omitted
            ``pretrained`` with ``null``: random weights, with the warning, and the saved config shows ``null``).
        weights_path: a local weights file (``.safetensors``, ``.pth`` or ``.bin``: timm's format, or the original one
            where timm converts it, e.g. DINOv2's ``dinov2_vits14_pretrain.pth``) loaded instead of downloading.
        frozen: no gradients to the model's parameters and its normalisation layers stay in eval mode, so a method can
            use it as a fixed feature extractor (features cached once per image by
            :class:`~fsl_lightning.methods.frozen_features.FrozenFeatures`).
        image_size: the side of the square images the model sees; default the pretrained config's input size (518 for
            DINOv2, whose few-shot evaluations usually use 224: 5x fewer patches). ViTs' position embeddings are
            resampled to this size.
        model_kwargs: more arguments to ``timm.create_model``, e.g. ``{drop_path_rate: 0.1}`` for fine-tuning (a
            smaller ``depth`` or ``embed_dim`` makes small test models of the same architecture).
        in_channels: 3 for RGB, 1 for grayscale (repeated to RGB).
        cache_dir: the Hugging Face Hub cache to use instead of ``$HF_HUB_CACHE``.
    """

    # a timm model: timm.create_model is typed nn.Module, but what it builds has num_features, set_input_size...
    model: Any

    def __init__(
        self,
        name: str,
        pretrained: bool | None,
        weights_path: str | None = None,
        frozen: bool = False,
        image_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        in_channels: int = 3,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"TimmBackbone takes 1- or 3-channel images, got in_channels={in_channels}.")
        check_model_name(name)
        self.name, self.pretrained, self.in_channels = name, bool(pretrained), in_channels
        weights_file = weights_path or (fetch_weights(name, cache_dir) if pretrained else None)
        self.model = self._create(name, weights_file, creation_kwargs(name, image_size, model_kwargs or {}))
        if weights_file is None:
            log.warning("TimmBackbone(%r) is randomly initialised (pretrained: null).", name)
        data_config = resolve_model_data_config(self.model)
        self.image_size = image_size or int(data_config["input_size"][-1])
        self._fit_input_size(self.image_size)
        self.input = ModelInput(self.image_size, data_config["mean"], data_config["std"], data_config["interpolation"])
        self.out_features = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        if frozen:
            self.freeze()

    @staticmethod
    def _create(name: str, weights_file: str | None, model_kwargs: dict[str, Any]) -> nn.Module:
        """The model without classifier; with weights, timm loads the local file (its conversions included)."""
        if weights_file is None:
            return timm.create_model(name, pretrained=False, num_classes=0, **model_kwargs)
        with checkpoint_load_errors_reported(weights_file):  # timm reads it with weights_only
            return timm.create_model(
                name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": weights_file}, **model_kwargs
            )

    def _fit_input_size(self, size: int) -> None:
        """A ViT still built for another size (no pretrained config said it was fixed): resample its position
        embeddings to ``size``. CNNs take any size."""
        patch_embed = getattr(self.model, "patch_embed", None)
        built_for = getattr(patch_embed, "img_size", None)
        if built_for is not None and tuple(built_for) != (size, size) and hasattr(self.model, "set_input_size"):
            self.model.set_input_size(img_size=(size, size))

    def forward(self, images: Tensor) -> Tensor:
        return self.model(self.input(images))

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, pretrained={self.pretrained}, frozen={self.frozen}, out_features={self.out_features}"
        )
