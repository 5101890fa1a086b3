"""The convolutional twin of Koch, Zemel & Salakhutdinov's Siamese networks (ICML Deep Learning Workshop 2015)."""

from __future__ import annotations

from torch import Tensor, nn


class KochNet(nn.Module):
    """Conv 64@10x10, pool, 128@7x7, pool, 128@4x4, pool, 256@4x4, then a 4096-unit sigmoid layer (fig. 4).

    Every convolution is unpadded and followed by ReLU; pooling is 2x2 max pooling. Input
    [B, in_channels, H, H] with ``H = image_size``; output [B, out_features]: the 105x105 images of the paper
    give 256 maps of 6x6 before the fully connected layer. Weights are initialised as in section 3.2.

    Args:
        in_channels: 1 for Omniglot.
        image_size: side of the square input images (105 in the paper, at least 65).
        out_features: width of the embedding layer (4096).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 105, out_features: int = 4096) -> None:
        super().__init__()
        side = self.feature_size(image_size)
        if side < 1:
            raise ValueError(f"KochNet needs images of at least 65x65, got image_size={image_size}.")
        self.in_channels = in_channels
        self.out_features = out_features
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=10),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, kernel_size=7),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(128, 128, kernel_size=4),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(128, 256, kernel_size=4),
            nn.ReLU(inplace=True),
        )
        self.embedding = nn.Sequential(nn.Flatten(), nn.Linear(256 * side * side, out_features), nn.Sigmoid())
        self._initialise()

    @staticmethod
    def feature_size(image_size: int) -> int:
        """Side of the last convolution's maps: each conv removes ``kernel - 1`` pixels, each pool halves."""
        side = image_size
        for kernel, pool in ((10, True), (7, True), (4, True), (4, False)):
            side -= kernel - 1
            side = side // 2 if pool else side
        return side

    def _initialise(self) -> None:
        # Section 3.2: conv weights N(0, 1e-2), fully connected weights N(0, 2e-1), all biases N(0.5, 1e-2).
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, 0.2 if isinstance(module, nn.Linear) else 0.01)
                if module.bias is not None:  # every layer here has one; as torch's reset_parameters checks
                    nn.init.normal_(module.bias, 0.5, 0.01)

    def forward(self, images: Tensor) -> Tensor:
        return self.embedding(self.features(images))
