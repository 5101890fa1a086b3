"""Decoding image files into uint8 tensors, with errors that name the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from fsl_lightning.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class CorruptImageError(UserError):
    """An image file cannot be decoded."""


def open_image(data: bytes | Path, name: str | Path, mode: str) -> Image.Image:
    """Decodes ``data`` (bytes or a path) into a PIL image of ``mode`` ("L" or "RGB").

    ``name`` is what the error message shows: the file path, or ``archive.zip:member``.
    """
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        with Image.open(source) as image:
            return image.convert(mode)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise CorruptImageError(
            f"Cannot decode image {name}: {error}. The file is missing, truncated or not an image: replace it "
            "with a readable copy (for a downloaded dataset, from its original archive)."
        ) from error


def pil_to_uint8(image: Image.Image) -> Tensor:
    """PIL image ("L" or "RGB") to a uint8 tensor [C, H, W]."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """Resizes a uint8 batch [B, C, H, W] to [B, C, size, size] by area averaging (no aliasing)."""
    if images.shape[-2:] == (size, size):
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="area")
    return resized.round().clamp(0, 255).to(torch.uint8)


def as_model_input(images: Tensor) -> Tensor:
    """Images as every model sees them: uint8 pixels become floats in [0, 1] (divided by 255); float images are
    taken as already converted and returned as they are (no copy)."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()
