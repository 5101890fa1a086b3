"""Any torchvision classification model as a feature extractor, optionally ImageNet-pretrained and frozen."""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum, get_model, get_model_weights, list_models

from fsl_lightning.backbones.frozen_model import FreezableWrapper
from fsl_lightning.checkpoint_io import checkpoint_load_errors_reported, load_checkpoint_file

log = logging.getLogger(__name__)

#: Where torchvision keeps a classification model's head, in the order they are looked for.
HEAD_ATTRIBUTES = ("fc", "classifier", "heads", "head")
#: Auxiliary classifiers (Inception v3, GoogLeNet) that are only used for training on ImageNet.
AUXILIARY_HEADS = ("AuxLogits", "aux1", "aux2")


class PretrainedWeightsUnavailableError(RuntimeError):
    """The pretrained weights could not be downloaded; the message says where to put the file instead."""


def check_model_name(name: str) -> None:
    """Fail early, with a way to find the valid names, instead of torchvision's bare ``Unknown model name``."""
    names = list_models(module=torchvision.models)
    if name not in names:
        raise ValueError(
            f"Unknown torchvision classification model {name!r}. List the names with "
            f"`torchvision.models.list_models(module=torchvision.models)`; for example {', '.join(names[:6])}, ..."
        )


def resolve_weights(name: str, weights: str | None) -> WeightsEnum | None:
    """The weights enum member for a short name like ``"IMAGENET1K_V1"`` or ``"DEFAULT"``; ``None`` stays ``None``."""
    if weights is None:
        return None
    available = get_model_weights(name)
    try:
        return available[weights]
    except KeyError:
        choices = ", ".join(["DEFAULT", *(key for key in available.__members__ if key != "DEFAULT")])
        raise ValueError(
            f"Unknown weights {weights!r} for torchvision model {name!r}: choose one of {choices}, "
            "or `weights: null` for random initialisation."
        ) from None


def architecture_kwargs(name: str, weights: WeightsEnum | None) -> dict[str, Any]:
    """The builder arguments torchvision itself sets when it builds ``name`` for ``weights``.

    The model is built without weights (so torchvision never downloads anything on its own), then loaded from a
    state dict, so the architecture must match what torchvision's builder would have made for those weights.
    """
    if weights is None:
        return {}
    kwargs: dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
    if name in ("inception_v3", "googlenet"):
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    elif name.startswith("vit_"):
        kwargs["image_size"] = weights.meta["min_size"][0]
    elif name == "maxvit_t":
        kwargs["input_size"] = weights.meta["min_size"]
    return kwargs


def last_classifier_layer(head: nn.Module) -> tuple[nn.Module, str, int]:
    """The (parent, attribute, input width) of the head's last Linear (or SqueezeNet's final 1x1 convolution)."""
    found: tuple[nn.Module, str, int] | None = None
    for parent in head.modules():
        for attribute, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, attribute, child.in_features)
            elif isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1):
                found = (parent, attribute, child.in_channels)
    if found is None:
        raise ValueError(f"No Linear layer found in the classifier head {type(head).__name__}.")
    return found


def remove_classifier(model: nn.Module) -> int:
    """Replace the model's last classification layer by the identity and drop auxiliary heads.

    Returns the width of the features that are now the model's output.
    """
    for attribute in AUXILIARY_HEADS:
        if getattr(model, attribute, None) is not None:
            setattr(model, attribute, None)
    if hasattr(model, "aux_logits"):
        setattr(model, "aux_logits", False)  # not an attribute nn.Module declares
    for attribute in HEAD_ATTRIBUTES:
        head = getattr(model, attribute, None)
        if isinstance(head, nn.Linear):
            setattr(model, attribute, nn.Identity())
            return head.in_features
        if isinstance(head, nn.Module):
            parent, child, width = last_classifier_layer(head)
            setattr(parent, child, nn.Identity())
            return width
    raise ValueError(f"Cannot find the classifier of {type(model).__name__} (looked for {', '.join(HEAD_ATTRIBUTES)}).")


def checkpoint_path(weights: WeightsEnum) -> str:
    """Where torch.hub looks for the weights' file before downloading it."""
    file_name = os.path.basename(urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", file_name)


def download_state_dict(weights: WeightsEnum) -> dict[str, Tensor]:
    """The weights from torch.hub's cache or the internet; offline, an error that says how to provide them."""
    try:
        with checkpoint_load_errors_reported(checkpoint_path(weights)):  # a file someone put in the cache
            return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except OSError as error:  # URLError, HTTPError and socket errors are all OSErrors
        raise PretrainedWeightsUnavailableError(
            f"Could not download the torchvision weights {weights} from {weights.url} ({error}). "
            f"On an offline machine, copy that file to {checkpoint_path(weights)} "
            "(torch.hub's checkpoints folder, under $TORCH_HOME), or set `weights_path: <local .pth>` "
            "to a state dict of the model, or `weights: null` for random initialisation."
        ) from error


def load_features(model: nn.Module, state_dict: dict[str, Tensor], classifier_keys: set[str]) -> None:
    """Load ``state_dict`` strictly into the feature part; the classifier's keys may be present or not."""
    features_only = {key: value for key, value in state_dict.items() if key not in classifier_keys}
    model.load_state_dict(features_only, strict=True)


class TorchvisionBackbone(FreezableWrapper):
    """A torchvision classification model without its classifier: output [B, out_features] pooled features.

    Input: float images in [0, 1], [B, in_channels, H, W]. With pretrained weights the images are normalised
    inside ``forward`` with the weights' mean and std, so datasets need no model-specific transform; one-channel
    images are repeated to three channels.

    Args:
        name: a torchvision model name, e.g. ``resnet18``, ``resnet50``, ``efficientnet_b0``, ``vit_b_16``
            (``torchvision.models.list_models(module=torchvision.models)`` lists them).
        weights: a torchvision weights name such as ``IMAGENET1K_V1`` or ``DEFAULT``, or ``None`` for random
            initialisation. Required in Python, so code always says which it wants. (jsonargparse 4 still fills an
            omitted optional argument with ``None``, so a YAML config without ``weights`` gets random init; that
            case is logged as a warning and the saved config shows ``weights: null``.)
        weights_path: a local state dict (``.pth``) to load instead of downloading ``weights``; with
            ``weights: null`` it is loaded and no normalisation is applied (its statistics are unknown).
        frozen: no gradients to the model's parameters and its batch norms stay in eval mode, so a method can use
            it as a fixed feature extractor.
        in_channels: 3 for RGB, 1 for grayscale (repeated to RGB).
    """

    def __init__(
        self,
        name: str,
        weights: str | None,
        weights_path: str | None = None,
        frozen: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"TorchvisionBackbone takes 1- or 3-channel images, got in_channels={in_channels}.")
        check_model_name(name)
        resolved = resolve_weights(name, weights)
        self.name, self.in_channels = name, in_channels
        self.model = get_model(name, weights=None, **architecture_kwargs(name, resolved))
        all_keys = set(self.model.state_dict())
        self.out_features = remove_classifier(self.model)
        classifier_keys = all_keys - set(self.model.state_dict())
        if weights_path is not None:
            load_features(self.model, load_checkpoint_file(weights_path), classifier_keys)
        elif resolved is not None:
            load_features(self.model, download_state_dict(resolved), classifier_keys)
        else:
            log.warning("TorchvisionBackbone(%r) is randomly initialised (weights: null).", name)
        self._register_normalisation(resolved)
        if frozen:
            self.freeze()

    def _register_normalisation(self, weights: WeightsEnum | None) -> None:
        """Keep the weights' mean/std as (non-saved) buffers so they follow the module across devices."""
        self.mean: Tensor  # registered, and used, only when normalising
        self.std: Tensor
        self.normalise = weights is not None
        if weights is not None:
            preprocessing = weights.transforms()
            self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if self.normalise:
            images = (images - self.mean) / self.std
        return self.model(images)
