"""Decoding image files from anywhere into uint8 tensors, with errors that name the file.

Images come from datasets and from users' folders, so every kind of file is expected. Each decodes to what the
models were trained on, or ends in one :class:`CorruptImageError` line that names the file and says what to do:

* the size is read from the header before any pixel is decoded: an image over :func:`max_image_pixels` (a
  decompression bomb: a few KB on disk, gigabytes decoded) is refused, except a JPEG, which is decoded at 1/2, 1/4
  or 1/8 of its size (libjpeg's own reduced decode) until it fits, so memory stays bounded by the limit (PIL's
  own bomb check, left as it is, refuses any image over twice ``PIL.Image.MAX_IMAGE_PIXELS``, 179 megapixels);
* the EXIF orientation of a photo is applied (as every viewer shows it);
* transparency (an alpha channel, or a palette's transparent colour) is laid over white, the background of the
  Omniglot characters and of most product photos;
* 16-bit images are scaled to 8 bits (65535 becomes 255); CMYK and palette images are converted to RGB or grey;
* an animated image (GIF, WebP, APNG) gives its first frame;
* a symbolic link that never reaches a file, or a file that is not a regular file (a FIFO would block the read),
  is named as such.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from fsl_lightning.run.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

#: the environment variable that changes :func:`max_image_pixels`
MAX_PIXELS_VARIABLE = "FSL_MAX_IMAGE_PIXELS"
#: 64 megapixels: a 9248 x 6936 photo, larger than phone and most camera photos; decoded RGB, 192 MB
DEFAULT_MAX_PIXELS = 64_000_000
#: EXIF tag of the orientation in which a photo is to be shown
EXIF_ORIENTATION = 0x0112
#: integer modes: 16-bit PNG and TIFF greyscale
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class CorruptImageError(UserError):
    """An image file that cannot be decoded (missing, unreadable, truncated, not an image, too large...)."""


def max_image_pixels() -> int:
    """The largest image decoded at full size, in pixels: ``$FSL_MAX_IMAGE_PIXELS``, default 64 million."""
    value = os.environ.get(MAX_PIXELS_VARIABLE, "")
    try:
        return int(value) if value else DEFAULT_MAX_PIXELS
    except ValueError:
        raise UserError(f"{MAX_PIXELS_VARIABLE}={value!r} is not a whole number of pixels (e.g. 100000000).") from None


def open_image(data: bytes | Path, name: str | Path, mode: str) -> Image.Image:
    """Decodes ``data`` (bytes or a path) into a PIL image of ``mode`` ("L" or "RGB"), as the module docstring says.

    ``name`` is what the error message shows: the file path, or ``archive.zip:member``.
    """
    if isinstance(data, Path):
        _check_regular_file(data, name)
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        with Image.open(source) as image:
            _reduce_to_pixel_limit(image, name)
            return _converted(_upright(image), mode, name)
    except CorruptImageError:
        raise
    except Image.DecompressionBombError as error:  # PIL's own check, at opening: twice PIL.Image.MAX_IMAGE_PIXELS
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(claimed.group(1)) / 1e6:.0f} megapixels" if claimed else "too many pixels"
        raise CorruptImageError(
            f"Image {name} claims {size}, more than PIL decodes at all (a decompression bomb, or a very large "
            "scan): downscale it."
        ) from error
    except UnidentifiedImageError as error:
        raise CorruptImageError(
            f"{name} is not an image that can be read ({', '.join(IMAGE_SUFFIXES)}): replace it with an image file, "
            "or move it out of the image folder."
        ) from error
    except PermissionError as error:
        raise CorruptImageError(
            f"Cannot read image {name}: permission denied. Give this user read access to it (chmod a+r)."
        ) from error
    except Exception as error:  # PIL raises OSError, SyntaxError, struct.error... for damaged files
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CorruptImageError(
            f"Cannot decode image {name} ({reason}): the file is truncated or damaged. Replace it with a "
            "readable copy (for a downloaded dataset, from its original archive)."
        ) from error


def _check_regular_file(path: Path, name: str | Path) -> None:
    """A path that is not a readable regular file gets its own message: a broken link or a loop of links, a FIFO
    or a device (whose read would block), a folder."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise CorruptImageError(
                f"{name} is a symbolic link that leads back to itself (a loop): remove it or point it at an image."
            ) from error
        if path.is_symlink():
            raise CorruptImageError(
                f"{name} is a symbolic link to {os.readlink(path)}, which does not exist: remove it or point it at "
                "an image."
            ) from error
        raise CorruptImageError(f"No image file {name}: it does not exist (any more?).") from error
    if not stat.S_ISREG(mode):
        raise CorruptImageError(
            f"{name} is not a regular file (a folder, FIFO, socket or device): move it out of the image folder."
        )


def _reduce_to_pixel_limit(image: Image.Image, name: str | Path) -> None:
    """Refuses an image whose header claims more pixels than :func:`max_image_pixels`, before decoding it; a JPEG
    is instead set to decode at the largest of 1/2, 1/4, 1/8 of its size that fits (``Image.draft``)."""
    limit = max_image_pixels()
    width, height = image.size
    if width * height <= limit:
        return
    if image.format == "JPEG":
        for scale in (2, 4, 8):
            if (width // scale) * (height // scale) <= limit:
                image.draft(image.mode, (width // scale, height // scale))
                return
    raise CorruptImageError(
        f"Image {name} is {width} x {height} pixels ({width * height / 1e6:.0f} megapixels), more than the "
        f"{limit / 1e6:.0f} megapixels decoded at most (a decompression bomb, or a very large scan): downscale it, "
        f"or set {MAX_PIXELS_VARIABLE}=<pixels> to allow larger images."
    )


def _upright(image: Image.Image) -> Image.Image:
    """The image as its EXIF orientation says it is to be shown (only photos that carry one are copied)."""
    if image.getexif().get(EXIF_ORIENTATION, 1) in (0, 1):
        return image
    return ImageOps.exif_transpose(image)


def _converted(image: Image.Image, mode: str, name: str | Path) -> Image.Image:
    """``image`` in ``mode``: 16-bit scaled to 8, transparency laid over white, the rest by PIL's conversions."""
    if image.mode in SIXTEEN_BIT_MODES:
        image = _eight_bit(image, name)
    if image.mode == "F":
        raise CorruptImageError(
            f"Image {name} holds floating-point pixels, whose range is unknown: save it as an 8- or 16-bit image."
        )
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        with_alpha = image.convert("RGBA")
        white = Image.new("RGBA", with_alpha.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, with_alpha)
    try:
        return image.convert(mode)
    except ValueError as error:  # a colour space PIL cannot convert
        raise CorruptImageError(
            f"Image {name} is in the {image.mode} colour mode, which cannot be converted to {mode}: save it as RGB."
        ) from error


def _eight_bit(image: Image.Image, name: str | Path) -> Image.Image:
    """A 16-bit greyscale image (PIL's integer modes) scaled to 8 bits: 0-65535 onto 0-255, rounded. (PIL's own
    conversion clips at 255 instead, which turns almost every 16-bit image white.) A 32-bit integer image whose
    values all fit 8 bits is taken as it is."""
    pixels = np.asarray(image, dtype=np.int64)
    if image.mode == "I" and pixels.size and 0 <= pixels.min() and pixels.max() <= 255:
        return Image.fromarray(pixels.astype(np.uint8), "L")
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
        raise CorruptImageError(
            f"Image {name} holds integer pixels outside 0-65535 (mode {image.mode}): save it as an 8- or 16-bit image."
        )
    return Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8), "L")


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
