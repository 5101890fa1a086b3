"""The input a pretrained model was trained on, made on the device from the data module's images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


class ModelInput(nn.Module):
    """Float images in [0, 1] at the dataset's size, [B, C, H, W] -> the model's input.

    Grayscale images are repeated to three channels, images of another size are resized to ``size`` x ``size``
    (antialiased when shrinking, so a 518-pixel input does not alias into a 224-pixel model), and the channels are
    normalised with the mean and std the weights were trained with. Mean and std are buffers that are not saved,
    so the state dict holds only the model's own weights.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], interpolation: str = "bicubic") -> None:
        super().__init__()
        if interpolation not in INTERPOLATIONS:
            interpolation = "bicubic"  # timm / open_clip also name PIL-only modes (lanczos, box); bicubic is closest
        self.size, self.interpolation = int(size), interpolation
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[1] != 3:
            raise ValueError(f"Pretrained models take 1- or 3-channel images, got {images.shape[1]} channels.")
        if images.shape[-2:] != (self.size, self.size):
            smooth = self.interpolation != "nearest"
            images = F.interpolate(
                images.float(),
                size=(self.size, self.size),
                mode=self.interpolation,
                antialias=smooth,
                align_corners=False if smooth else None,
            ).clamp_(0.0, 1.0)  # bicubic overshoots; PIL, which the models were trained with, clamps to the range
        return (images - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"size={self.size}, interpolation={self.interpolation}"
