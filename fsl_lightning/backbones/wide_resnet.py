"""Wide ResNet (Zagoruyko & Komodakis 2016), WRN-28-10 as in LEO (Rusu et al. 2019) and S2M2 (Mangla et al. 2020)."""

from __future__ import annotations

from torch import Tensor, nn


class PreActWideBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3, plus a shortcut.

    When the width or resolution changes, the shortcut is a 1x1 convolution that, like the residual branch,
    reads the pre-activated input (the original WRN formulation); otherwise it is the identity on the raw input.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.preactivation = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True))
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        )
        changes_shape = in_channels != out_channels or stride != 1
        self.projection = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False) if changes_shape else None

    def forward(self, x: Tensor) -> Tensor:
        activated = self.preactivation(x)
        shortcut = x if self.projection is None else self.projection(activated)
        return shortcut + self.residual(activated)


def wide_group(in_channels: int, out_channels: int, blocks: int, stride: int, dropout: float) -> nn.Sequential:
    """``blocks`` wide blocks; only the first changes width and resolution."""
    return nn.Sequential(
        *(
            PreActWideBlock(
                in_channels if index == 0 else out_channels, out_channels, stride if index == 0 else 1, dropout
            )
            for index in range(blocks)
        )
    )


class WideResNet(nn.Module):
    """WRN-depth-k: a 3x3 stem of 16 channels, three groups of (depth - 4) / 6 pre-activation wide blocks
    of 16k, 32k, 64k channels at strides 1, 2, 2, a final BN-ReLU and global average pooling.

    Input [B, in_channels, H, W] (32x32 or 80x80/84x84 in the few-shot papers); output [B, 64 * widen_factor],
    ``out_features = 640`` for WRN-28-10.

    Args:
        depth: total layer count; ``depth - 4`` must be a multiple of 6 (28 gives 4 blocks per group).
        widen_factor: k, the width multiplier (10 in LEO and S2M2).
        dropout: dropout between the two convolutions of every block (0 in S2M2).
        in_channels: 1 for grayscale, 3 for RGB.
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}.")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.in_channels = in_channels
        self.out_features = widths[-1]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.groups = nn.Sequential(
            *(wide_group(widths[i], widths[i + 1], blocks, stride, dropout) for i, stride in enumerate((1, 2, 2)))
        )
        self.final_activation = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True))
        self._initialise()

    def _initialise(self) -> None:
        """Kaiming-normal convolutions and unit batch norms, as in the reference WRN code."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        features = self.final_activation(self.groups(self.stem(images)))
        return features.mean(dim=(2, 3))
