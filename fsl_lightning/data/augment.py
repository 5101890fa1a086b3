"""Training augmentation of whole image batches on the compute device.

Images are resident on the device and gathered into float batches ``[..., C, H, W]`` in [0, 1] there, so the
augmentation works on the batch at once: every image gets its own random transform, drawn as tensors on the
images' device, with no Python loop over images and nothing read back to the host (no ``.item()``), so a GPU
step never waits on it. Randomness comes from the ``torch.Generator`` the caller passes (the global RNG when
None), which makes a training run reproducible.

Cropping uses :func:`torchvision.ops.roi_align` (see :func:`crop_resize` for why).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor
from torchvision.ops import roi_align

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale, so jitter strengths mean what they mean there.
_LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ: Y is luma, (I, Q) the chroma plane; a rotation of that plane shifts the hue and keeps the luma.
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]], dtype=torch.float64
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)  # inverted in float64, used on the device in float32


class BatchAugmentation:
    """Random (resized or padded) crop, horizontal flip and colour jitter, a different draw for every image.

    The constructor takes plain values so that it can be chosen in YAML, for example
    ``augmentation: {class_path: fsl_lightning.data.augment.BatchAugmentation, init_args: {color_jitter: 0.2}}``.

    Args:
        random_resized_crop: crop a random box of every image and resize it back to the image's size.
        crop_scale: range of the box's area, as a fraction of the image's area (as torchvision's ``scale``).
        crop_ratio: range of the box's aspect ratio width / height, sampled log-uniformly.
        crop_padding: when above 0, a padded random crop instead: pad every image with this many zero pixels
            on each side and cut an image-sized window at a random integer offset (torchvision's
            ``RandomCrop(size, padding=crop_padding)``; RFS uses 8 on 84x84 images). Excludes
            ``random_resized_crop``.
        horizontal_flip: mirror every image left-right with probability 0.5.
        color_jitter: strength ``s`` of brightness, contrast and saturation jitter: each factor is uniform in
            ``[max(0, 1 - s), 1 + s]``; 0 turns colour jitter off.
        hue: hue shift, uniform in ``[-hue, hue]`` of a full turn of the colour wheel (at most 0.5); 0 is off.

    Colour operations run in a fixed order (brightness, contrast, saturation, hue), not torchvision's random
    order: a random order per image would need a gather of four candidate batches, for little gain. Images with
    one channel (grayscale) get brightness and contrast only.
    """

    def __init__(
        self,
        random_resized_crop: bool = True,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        crop_padding: int = 0,
        horizontal_flip: bool = True,
        color_jitter: float = 0.4,
        hue: float = 0.0,
    ) -> None:
        _check_range("crop_scale", crop_scale, upper=1.0)
        _check_range("crop_ratio", crop_ratio, upper=math.inf)
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be at least 0 (0 turns the padded crop off), got {crop_padding}.")
        if crop_padding > 0 and random_resized_crop:
            raise ValueError(
                "Choose one crop: set random_resized_crop: false to use crop_padding (a padded random crop)."
            )
        if color_jitter < 0:
            raise ValueError(f"color_jitter must be at least 0 (0 turns it off), got {color_jitter}.")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] (a fraction of a full turn; 0 turns it off), got {hue}.")
        self.random_resized_crop = random_resized_crop
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.crop_padding = int(crop_padding)
        self.horizontal_flip = horizontal_flip
        self.color_jitter = float(color_jitter)
        self.hue = float(hue)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(random_resized_crop={self.random_resized_crop}, crop_scale={self.crop_scale}, "
            f"crop_ratio={self.crop_ratio}, crop_padding={self.crop_padding}, horizontal_flip={self.horizontal_flip}, "
            f"color_jitter={self.color_jitter}, hue={self.hue})"
        )

    @torch.no_grad()
    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment float images ``[..., C, H, W]`` in [0, 1]; the result has the same shape and dtype.

        Leading dimensions (a batch, or tasks x images) are all treated as independent images. ``generator``,
        when given, must live on the images' device (a CUDA generator for CUDA images): PyTorch generators are
        device-specific, and drawing on the device is what keeps the augmentation free of host synchronisation.
        """
        _check_images(images)
        _check_generator(generator, images.device)
        channels, height, width = images.shape[-3:]
        if (self.color_jitter > 0 or self.hue > 0) and channels not in (1, 3):
            raise ValueError(f"Colour jitter needs 1 (grayscale) or 3 (RGB) channels, got {channels}.")
        batch = images.reshape(-1, channels, height, width)
        if self.random_resized_crop:
            boxes = sample_crop_boxes(
                len(batch), height, width, self.crop_scale, self.crop_ratio, generator, batch.device
            )
            batch = crop_resize(batch, boxes)
        if self.crop_padding > 0:
            batch = padded_random_crop(batch, self.crop_padding, generator)
        if self.horizontal_flip:
            batch = horizontal_flip(batch, _uniform(len(batch), 0.0, 1.0, generator, batch.device) < 0.5)
        batch = self._jitter_colours(batch, generator)
        return batch.clamp(0.0, 1.0).reshape(images.shape)

    def _jitter_colours(self, batch: Tensor, generator: torch.Generator | None) -> Tensor:
        count, device, rgb = len(batch), batch.device, batch.shape[1] == 3
        if self.color_jitter > 0:
            low, high = max(0.0, 1.0 - self.color_jitter), 1.0 + self.color_jitter
            batch = adjust_brightness(batch, _uniform(count, low, high, generator, device))
            batch = adjust_contrast(batch, _uniform(count, low, high, generator, device))
            if rgb:
                batch = adjust_saturation(batch, _uniform(count, low, high, generator, device))
        if self.hue > 0 and rgb:
            batch = adjust_hue(batch, _uniform(count, -self.hue, self.hue, generator, device))
        return batch


def sample_crop_boxes(
    count: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random crop boxes ``[count, 4]`` as ``(x1, y1, x2, y2)`` in pixel coordinates, float32.

    As torchvision's RandomResizedCrop, the area fraction is uniform in ``scale`` and the aspect ratio
    log-uniform in ``ratio``; but where torchvision retries a box that does not fit (a loop, and a host
    decision per image), a too wide or too tall box is clamped to the image, which slightly biases extreme
    draws towards the image's own shape. Boxes are continuous (sub-pixel), which bilinear resampling handles.
    """
    area = _uniform(count, scale[0], scale[1], generator, device) * (height * width)
    aspect = torch.exp(_uniform(count, math.log(ratio[0]), math.log(ratio[1]), generator, device))
    box_width = torch.sqrt(area * aspect).clamp(max=width)
    box_height = torch.sqrt(area / aspect).clamp(max=height)
    x1 = _uniform(count, 0.0, 1.0, generator, device) * (width - box_width)
    y1 = _uniform(count, 0.0, 1.0, generator, device) * (height - box_height)
    return torch.stack([x1, y1, x1 + box_width, y1 + box_height], dim=1)


def crop_resize(images: Tensor, boxes: Tensor, output_size: tuple[int, int] | None = None) -> Tensor:
    """Crop box ``boxes[i] = (x1, y1, x2, y2)`` (pixel coordinates) of image ``i`` and resize it bilinearly.

    ``images`` is ``[B, C, H, W]``, ``boxes`` ``[B, 4]``; the output is ``[B, C, *output_size]`` (the input's
    size by default). Pixel ``j`` covers ``[j, j + 1)``, so the box ``(0, 0, W, H)`` returns the image exactly.

    Why ``roi_align`` rather than ``F.affine_grid`` + ``F.grid_sample``: it takes the boxes directly in pixel
    coordinates (no conversion to normalised affine matrices to get right), crops and resizes every image in
    one kernel, and ``aligned=True`` samples at the same points as ``grid_sample(align_corners=False)`` with
    edge clamping. When a box is larger than the output it also averages several samples per output pixel
    (adaptive ``sampling_ratio``), which anti-aliases the downscaling.
    """
    if output_size is None:
        output_size = (images.shape[-2], images.shape[-1])
    image_index = torch.arange(len(images), device=images.device, dtype=images.dtype).unsqueeze(1)
    rois = torch.cat([image_index, boxes.to(images.dtype)], dim=1)
    return roi_align(images, rois, output_size=output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def padded_random_crop(images: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Pad images ``[B, C, H, W]`` with ``padding`` zeros on every side and cut an ``H x W`` window of each at
    a random integer offset in ``[0, 2 * padding]`` (both axes independent): exact pixels, no resampling."""
    count, _, height, width = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, count, 1), generator=generator, device=images.device)
    rows = offsets[0] + torch.arange(height, device=images.device)  # [B, H] rows of the padded image
    cols = offsets[1] + torch.arange(width, device=images.device)  # [B, W]
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    image_index = torch.arange(count, device=images.device).view(-1, 1, 1)
    # advanced indexing puts the indexed dimensions first: [B, H, W, C] -> [B, C, H, W]
    return padded.permute(0, 2, 3, 1)[image_index, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)


def horizontal_flip(images: Tensor, flip: Tensor) -> Tensor:
    """Mirror left-right the images ``[B, C, H, W]`` where the boolean mask ``flip`` ``[B]`` is True."""
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def grayscale(images: Tensor) -> Tensor:
    """Luma ``[B, 1, H, W]`` of RGB images ``[B, 3, H, W]``; a 1-channel image is its own grayscale."""
    if images.shape[1] == 1:
        return images
    red, green, blue = images.unbind(1)
    return (_LUMA[0] * red + _LUMA[1] * green + _LUMA[2] * blue).unsqueeze(1)


def adjust_brightness(images: Tensor, factors: Tensor) -> Tensor:
    """Scale image ``i`` by ``factors[i]`` (blend with black), clamped to [0, 1]."""
    return (images * _per_image(factors, images)).clamp(0.0, 1.0)


def adjust_contrast(images: Tensor, factors: Tensor) -> Tensor:
    """Blend image ``i`` with its mean gray level by ``factors[i]`` (0 gives flat gray, 1 the image)."""
    mean_gray = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean_gray, _per_image(factors, images))


def adjust_saturation(images: Tensor, factors: Tensor) -> Tensor:
    """Blend RGB image ``i`` with its grayscale by ``factors[i]`` (0 gives grayscale, 1 the image)."""
    return _blend(images, grayscale(images), _per_image(factors, images))


def adjust_hue(images: Tensor, shifts: Tensor) -> Tensor:
    """Shift the hue of RGB image ``i`` by ``shifts[i]`` of a full turn, clamped to [0, 1].

    A rotation of the chroma plane in YIQ space: one 3x3 matrix per image, applied by a batched matrix
    product, instead of an RGB -> HSV -> RGB round trip with its branches per pixel. It keeps the luma and
    approximates torchvision's HSV hue shift (the two colour wheels differ slightly).
    """
    angle = (2 * math.pi) * shifts.to(torch.float32)
    cos, sin, zero, one = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
    rotation = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], dim=1).view(-1, 3, 3)
    to_yiq, to_rgb = _yiq_matrices(images.device)
    mixing = (to_rgb @ rotation @ to_yiq).to(images.dtype)  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", mixing, images).clamp(0.0, 1.0)


@functools.cache
def _yiq_matrices(device: torch.device) -> tuple[Tensor, Tensor]:
    # Copied to the device once: a copy per call would be a host-to-device transfer every training step.
    return _RGB_TO_YIQ.to(device, torch.float32), _YIQ_TO_RGB.to(device, torch.float32)


def _blend(images: Tensor, other: Tensor, weight: Tensor) -> Tensor:
    return (weight * images + (1 - weight) * other).clamp(0.0, 1.0)


def _per_image(values: Tensor, images: Tensor) -> Tensor:
    return values.to(images.dtype).view(-1, 1, 1, 1)


def _uniform(
    count: int, low: float, high: float, generator: torch.Generator | None, device: torch.device | str | None
) -> Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, device=device)


def _check_range(name: str, bounds: tuple[float, float], upper: float) -> None:
    if len(bounds) != 2:
        raise ValueError(f"{name} must be a pair (low, high), got {bounds}.")
    low, high = bounds
    if not 0 < low <= high <= upper:
        limit = "1" if upper == 1.0 else "infinity"
        raise ValueError(f"{name} must satisfy 0 < low <= high <= {limit}, got ({low}, {high}).")


def _check_images(images: Tensor) -> None:
    if images.dim() < 3:
        raise ValueError(f"Expected images [..., C, H, W], got shape {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ValueError(f"Expected float images in [0, 1], got dtype {images.dtype}.")


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"The generator is on {generator.device} but the images are on {device}: pass a generator created "
            f"with torch.Generator(device=images.device), so that random numbers are drawn on the device."
        )
