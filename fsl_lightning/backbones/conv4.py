"""Conv4: the four-block convolutional embedding of Matching Networks, Prototypical Networks and MAML."""

from __future__ import annotations

from torch import Tensor, nn


def conv_block(
    in_channels: int, out_channels: int, padding: int = 1, pool: bool = True, negative_slope: float = 0.0
) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU (leaky when ``negative_slope`` > 0), then 2x2 max pooling when ``pool``."""
    activation = nn.LeakyReLU(negative_slope, inplace=True) if negative_slope else nn.ReLU(inplace=True)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=padding),
        nn.BatchNorm2d(out_channels),
        activation,
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """Four conv blocks of ``hidden_channels`` filters, flattened (Vinyals et al. 2016; Snell et al. 2017).

    Input [B, in_channels, H, W]; output [B, out_features] where ``out_features`` is
    ``hidden_channels * (H // 16) * (W // 16)``: 64 for 28x28 Omniglot, 1600 for 84x84 images.

    Args:
        in_channels: 1 for Omniglot, 3 for RGB datasets.
        hidden_channels: filters per block (64 in the papers).
        flatten: return [B, C * h * w] embeddings; ``False`` keeps the feature maps [B, C, h, w]
            (Relation Networks score feature maps).
        pooled_blocks: how many of the blocks, from the first, end with 2x2 max pooling (4, all, in the papers
            above). DN4's Conv64F pools after the first two only, keeping a map of local descriptors
            (21x21 for 84x84 images, 7x7 for 28x28 Omniglot).
        negative_slope: 0 for ReLU (the papers above); DN4's Conv64F uses LeakyReLU(0.2).
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden_channels: int = 64,
        flatten: bool = True,
        pooled_blocks: int = 4,
        negative_slope: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= pooled_blocks <= 4:
            raise ValueError(f"pooled_blocks must be between 0 and 4 (Conv4 has four blocks), got {pooled_blocks}.")
        self.in_channels = in_channels
        self.out_channels = hidden_channels
        self.encoder = nn.Sequential(
            *(
                conv_block(
                    in_channels if block == 0 else hidden_channels,
                    hidden_channels,
                    pool=block < pooled_blocks,
                    negative_slope=negative_slope,
                )
                for block in range(4)
            )
        )
        self.flatten = flatten

    def forward(self, images: Tensor) -> Tensor:
        features = self.encoder(images)
        return features.flatten(1) if self.flatten else features
