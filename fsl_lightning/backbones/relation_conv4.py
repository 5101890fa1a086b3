"""The embedding module of Relation Networks (Sung et al. 2018): four conv blocks, pooling in the first two only."""

from __future__ import annotations

from torch import Tensor, nn

from fsl_lightning.backbones.conv4 import conv_block


class RelationConv4(nn.Module):
    """Feature maps for a relation module (Sung et al. 2018, fig. 2, embedding module).

    Blocks 1-2: unpadded 3x3 conv, BN, ReLU, 2x2 max pooling; blocks 3-4: padded 3x3 conv, BN, ReLU, no
    pooling, so that the relation module still has a spatial map to convolve. Input [B, in_channels, H, W];
    output [B, hidden_channels, h, w] with ``h = ((H - 2) // 2 - 2) // 2``: [B, 64, 5, 5] for 28x28 Omniglot,
    [B, 64, 19, 19] for 84x84 images.

    Args:
        in_channels: 1 for Omniglot, 3 for RGB datasets.
        hidden_channels: filters per block (64 in the paper).
    """

    def __init__(self, in_channels: int = 1, hidden_channels: int = 64) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = hidden_channels
        self.encoder = nn.Sequential(
            conv_block(in_channels, hidden_channels, padding=0, pool=True),
            conv_block(hidden_channels, hidden_channels, padding=0, pool=True),
            conv_block(hidden_channels, hidden_channels, padding=1, pool=False),
            conv_block(hidden_channels, hidden_channels, padding=1, pool=False),
        )

    @staticmethod
    def output_size(image_size: int) -> int:
        """Side h of the output feature maps for square images of side ``image_size``."""
        return ((image_size - 2) // 2 - 2) // 2

    def forward(self, images: Tensor) -> Tensor:
        return self.encoder(images)
