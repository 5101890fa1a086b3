"""ResNet-12, the few-shot variant (Oreshkin et al. 2018, TADAM; Lee et al. 2019, MetaOptNet)."""

from __future__ import annotations

from torch import Tensor, nn


class ResidualBlock(nn.Module):
    """Three 3x3 conv-BN layers with leaky ReLU, a 1x1 conv-BN shortcut, then 2x2 max pooling."""

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(3):
            layers += [
                nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
            ]
            if index < 2:
                layers.append(nn.LeakyReLU(negative_slope))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.activation = nn.LeakyReLU(negative_slope)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.activation(self.body(x) + self.shortcut(x)))


class ResNet12(nn.Module):
    """Four residual blocks (64, 160, 320, 640 channels by default), then global average pooling.

    Input [B, in_channels, H, W]; output [B, out_features] with ``out_features = channels[-1]`` (640).
    With ``pool=False`` the output is the last feature map [B, 640, H // 16, W // 16].
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, ...] = (64, 160, 320, 640),
        pool: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        widths = (in_channels, *channels)
        self.blocks = nn.Sequential(*(ResidualBlock(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.out_features = channels[-1]
        self.pool = pool
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, images: Tensor) -> Tensor:
        features = self.blocks(images)
        return features.mean(dim=(2, 3)) if self.pool else features
