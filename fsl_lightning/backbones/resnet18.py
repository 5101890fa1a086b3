"""ResNet-18 as the few-shot baseline backbone of Chen et al. 2019 ("A Closer Look at Few-Shot Classification")."""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


class ResNet18(ResNet):
    """Standard ResNet-18 (He et al. 2016), randomly initialised, ending in global average pooling.

    Input [B, in_channels, H, W] (84x84 or 224x224 in Chen et al.); output [B, 512], ``out_features = 512``.
    Built on torchvision's ResNet so the parameter names match ``torchvision.models.resnet18`` (without ``fc``),
    which lets an ImageNet state dict be loaded with ``strict=False`` when that is wanted.

    Args:
        in_channels: 1 for grayscale, 3 for RGB; anything but 3 gets its own first convolution.
    """

    fc: nn.Module  # torchvision's Linear head, replaced by the identity

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2])
        self.in_channels = in_channels
        self.out_features = self.fc.in_features
        self.fc = nn.Identity()
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
