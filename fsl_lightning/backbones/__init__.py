"""Embedding backbones, chosen in config by class path (``fsl_lightning.backbones.Conv4``) or by name."""

from __future__ import annotations

from torch import nn

from fsl_lightning.backbones.conv4 import Conv4
from fsl_lightning.backbones.koch import KochNet
from fsl_lightning.backbones.maml_conv4 import MAMLConv4
from fsl_lightning.backbones.plain_batchnorm import PlainBatchNorm2d
from fsl_lightning.backbones.r2d2_conv import R2D2Conv
from fsl_lightning.backbones.relation_conv4 import RelationConv4
from fsl_lightning.backbones.resnet12 import ResNet12
from fsl_lightning.backbones.resnet18 import ResNet18
from fsl_lightning.backbones.torchvision_backbone import PretrainedWeightsUnavailableError, TorchvisionBackbone
from fsl_lightning.backbones.wide_resnet import WideResNet

BACKBONES: dict[str, type[nn.Module]] = {
    "conv4": Conv4,
    "resnet12": ResNet12,
    "koch": KochNet,
    "relation_conv4": RelationConv4,
    "maml_conv4": MAMLConv4,
    "r2d2_conv": R2D2Conv,
    "resnet18": ResNet18,
    "wrn28_10": WideResNet,
    "torchvision": TorchvisionBackbone,
}


def build_backbone(name: str, /, **kwargs) -> nn.Module:
    """A backbone by its registry name, for example ``build_backbone("conv4", in_channels=1)``.

    ``name`` is positional-only so that a backbone's own ``name`` argument (``TorchvisionBackbone``) passes through.
    """
    try:
        backbone_class = BACKBONES[name.lower()]
    except KeyError:
        raise ValueError(f"Unknown backbone {name!r}: choose one of {', '.join(sorted(BACKBONES))}.") from None
    return backbone_class(**kwargs)


__all__ = [
    "BACKBONES",
    "Conv4",
    "KochNet",
    "MAMLConv4",
    "PlainBatchNorm2d",
    "PretrainedWeightsUnavailableError",
    "R2D2Conv",
    "RelationConv4",
    "ResNet12",
    "ResNet18",
    "TorchvisionBackbone",
    "WideResNet",
    "build_backbone",
]
