"""ResNet-12, the few-shot variant (Oreshkin et al. 2018, TADAM; Lee et al. 2019, MetaOptNet)."""

from __future__ import annotations

from torch import Tensor, nn

from fsl_lightning.backbones.dropblock import DropBlock


class ResidualBlock(nn.Module):
    """Three 3x3 conv-BN layers with leaky ReLU, a 1x1 conv-BN shortcut, 2x2 max pooling, then ``regulariser``
    (dropout or DropBlock; none by default)."""

    def __init__(
        self, in_channels: int, out_channels: int, negative_slope: float = 0.1, regulariser: nn.Module | None = None
    ) -> None:
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
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.activation = nn.LeakyReLU(negative_slope)
        self.pool = nn.MaxPool2d(2)
        self.regulariser = regulariser or nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.regulariser(self.pool(self.activation(self.body(x) + self.shortcut(x))))


class ResNet12(nn.Module):
    """Four residual blocks (64, 160, 320, 640 channels by default), then global average pooling.

    Input [B, in_channels, H, W]; output [B, out_features] with ``out_features = channels[-1]`` (640).
    With ``pool=False`` the output is the last feature map [B, 640, H // 16, W // 16].

    ``drop_rate > 0`` regularises as the ResNet-12 of MetaOptNet and RFS (their ``drop_rate=0.1,
    dropblock_size=5``): dropout of rate ``drop_rate`` after each of the first two blocks and
    :class:`~fsl_lightning.backbones.dropblock.DropBlock` (``dropblock_size``, rate ramped up linearly over
    ``dropblock_schedule_steps`` training steps) after each of the last two. Off by default.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, ...] = (64, 160, 320, 640),
        pool: bool = True,
        drop_rate: float = 0.0,
        dropblock_size: int = 5,
        dropblock_schedule_steps: int = 40_000,
    ) -> None:
        super().__init__()
        if not 0 <= drop_rate < 1:
            raise ValueError(f"ResNet12 drop_rate must be in [0, 1) (0: no dropout, no DropBlock), got {drop_rate}.")
        self.in_channels = in_channels
        widths = (in_channels, *channels)
        regularisers = [
            self._regulariser(index, len(channels), drop_rate, dropblock_size, dropblock_schedule_steps)
            for index in range(len(channels))
        ]
        self.blocks = nn.Sequential(
            *(ResidualBlock(a, b, regulariser=r) for a, b, r in zip(widths[:-1], widths[1:], regularisers))
        )
        self.out_features = channels[-1]
        self.pool = pool
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    @staticmethod
    def _regulariser(index: int, count: int, drop_rate: float, block_size: int, schedule_steps: int) -> nn.Module:
        if drop_rate == 0:
            return nn.Identity()
        if index < count - 2:
            return nn.Dropout(drop_rate)
        return DropBlock(block_size, drop_rate, schedule_steps)

    def forward(self, images: Tensor) -> Tensor:
        features = self.blocks(images)
        return features.mean(dim=(2, 3)) if self.pool else features
