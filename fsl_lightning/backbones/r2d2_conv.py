"""The four-block CNN of R2D2 (Bertinetto et al., ICLR 2019, Sec. 4.1), whose last two feature maps are concatenated."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _block(
    in_channels: int, out_channels: int, pool_stride: int, negative_slope: float, dropout: float
) -> nn.Sequential:
    # The reference (bertinetto/r2d2, fewshots/models/load_model.py) pools before the activation: conv, BN, pool, LeakyReLU.
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.MaxPool2d(2, stride=pool_stride),
        nn.LeakyReLU(negative_slope),
    ]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class R2D2Conv(nn.Module):
    """Four blocks of 3x3 convolution, batch norm, 2x2 max pooling and LeakyReLU(0.1), with 96, 192, 384 and 512
    filters; the first three pool with stride 2, the last with stride 1. The embedding concatenates the third block's
    output, max-pooled once more with stride 1, and the fourth block's, both flattened (the paper's "features of the
    last two layers"): 1536 + 2048 = 3584 features for 28x28 Omniglot, 31104 + 41472 for 84x84 images.

    Args:
        in_channels: 1 for Omniglot, 3 for RGB datasets.
        channels: filters of the four blocks; ``[64, 64, 64, 64]`` is the reference's smaller "64C" network.
        dropout: after the third and fourth blocks; the reference uses 0 on Omniglot, 0.1 on miniImageNet and 0.4
            on CIFAR-FS (``scripts/train/experiments.sh``).
        negative_slope: of the LeakyReLU (0.1 in the reference).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, int, int, int] = (96, 192, 384, 512),
        dropout: float = 0.0,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"R2D2Conv has four blocks: give four channel counts, got {list(channels)}.")
        self.in_channels = in_channels
        first, second, third, fourth = channels
        self.first_three = nn.Sequential(
            _block(in_channels, first, 2, negative_slope, 0.0),
            _block(first, second, 2, negative_slope, 0.0),
            _block(second, third, 2, negative_slope, dropout),
        )
        self.third_pool = nn.MaxPool2d(2, stride=1)
        self.fourth = _block(third, fourth, 1, negative_slope, dropout)

    def forward(self, images: Tensor) -> Tensor:
        third = self.first_three(images)
        return torch.cat([self.third_pool(third).flatten(1), self.fourth(third).flatten(1)], dim=1)
