"""Training pairs for verification networks (Koch et al. 2015): balanced same/different pairs, affine distortions.

Both are pure functions of their inputs and a ``torch.Generator`` (``None``: the global RNG of the
tensors' device), built from tensor operations only, so they run on the device without a host sync.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def balanced_pairs(labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Every image anchors one same-class pair and one different-class pair, so the two kinds are balanced.

    The partner is drawn uniformly among the other images of the anchor's class (same pairs) or among all
    images of other classes (different pairs). Each class must hold at least two images and there must be
    at least two classes (true of every episode: ``shot + query >= 2``, ``way >= 2``); this is not checked,
    since checking label values would synchronise the host with the device.

    labels [N] -> (first [2N], second [2N], same [2N] float): indices into the N images, and 1.0 for the
    N same pairs (first half), 0.0 for the N different pairs (second half).
    """
    count = len(labels)
    same_class = labels.unsqueeze(0) == labels.unsqueeze(1)  # [N, N]
    itself = torch.eye(count, dtype=torch.bool, device=labels.device)
    noise = torch.rand(2, count, count, generator=generator, device=labels.device)
    # argmax of uniform noise over the allowed partners (the others set below every draw) is a uniform choice
    same_partner = noise[0].masked_fill(~same_class | itself, -1.0).argmax(dim=-1)
    different_partner = noise[1].masked_fill(same_class, -1.0).argmax(dim=-1)
    anchors = torch.arange(count, device=labels.device)
    same = torch.cat([torch.ones(count, device=labels.device), torch.zeros(count, device=labels.device)])
    return anchors.repeat(2), torch.cat([same_partner, different_partner]), same


def random_affine(
    images: Tensor,
    generator: torch.Generator | None = None,
    max_rotation_degrees: float = 10.0,
    max_shear: float = 0.3,
    scale_range: tuple[float, float] = (0.8, 1.2),
    max_translation_pixels: float = 2.0,
    component_probability: float = 0.5,
) -> Tensor:
    """Koch et al.'s (2015, section 4.1) random affine distortion, drawn independently for every image.

    Rotation ``θ``, shears ``ρx, ρy``, scales ``sx, sy`` and translations ``tx, ty`` are uniform in the given
    ranges, each kept with probability ``component_probability`` (else the identity value). Out-of-image
    pixels are 0, the background of the stored (inverted) Omniglot images.

    One parameter set per image, as in the paper, needs one matrix per image: ``affine_grid`` and
    ``grid_sample`` apply a batch of matrices in one call, where torchvision's ``v2.functional.affine``
    takes one parameter set per call (a Python loop over the batch).

    images [B, C, H, W] (float) -> [B, C, H, W].
    """
    batch, _, height, width = images.shape
    draws = torch.rand(2, 7, batch, generator=generator, device=images.device, dtype=images.dtype)
    kept = draws[0] < component_probability  # [7, B]: which components this image gets

    def uniform(index: int, low: float, high: float, identity: float) -> Tensor:
        value = low + (high - low) * draws[1, index]
        return torch.where(kept[index], value, torch.full_like(value, identity))

    angle = uniform(0, -max_rotation_degrees, max_rotation_degrees, 0.0) * (math.pi / 180)
    shear_x, shear_y = uniform(1, -max_shear, max_shear, 0.0), uniform(2, -max_shear, max_shear, 0.0)
    scale_x, scale_y = uniform(3, *scale_range, 1.0), uniform(4, *scale_range, 1.0)
    # pixels -> affine_grid's normalised coordinates, which span 2 over the image side
    shift_x = uniform(5, -max_translation_pixels, max_translation_pixels, 0.0) * (2 / width)
    shift_y = uniform(6, -max_translation_pixels, max_translation_pixels, 0.0) * (2 / height)
    forward = _rotation(angle) @ _shear(shear_x, shear_y) @ _scale(scale_x, scale_y)  # [B, 2, 2]
    grid = F.affine_grid(
        _inverse_map(forward, torch.stack([shift_x, shift_y], dim=-1)), list(images.shape), align_corners=False
    )
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _rotation(angle: Tensor) -> Tensor:
    cos, sin = angle.cos(), angle.sin()
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def _shear(shear_x: Tensor, shear_y: Tensor) -> Tensor:
    ones = torch.ones_like(shear_x)
    return torch.stack([torch.stack([ones, shear_x], -1), torch.stack([shear_y, ones], -1)], -2)


def _scale(scale_x: Tensor, scale_y: Tensor) -> Tensor:
    zeros = torch.zeros_like(scale_x)
    return torch.stack([torch.stack([scale_x, zeros], -1), torch.stack([zeros, scale_y], -1)], -2)


def _inverse_map(forward: Tensor, shift: Tensor) -> Tensor:
    """The sampling matrices [B, 2, 3] of the transform ``x -> forward @ x + shift`` ([B, 2, 2], [B, 2]).

    ``grid_sample`` reads each output pixel from the input, so it needs the inverse transform. The 2x2
    inverse is written out (adjugate over determinant) because ``torch.linalg.inv`` checks for singular
    matrices, a host sync; the determinant here is at least ``0.8^2 * (1 - 0.3^2) > 0``.
    """
    a, b, c, d = forward[:, 0, 0], forward[:, 0, 1], forward[:, 1, 0], forward[:, 1, 1]
    determinant = a * d - b * c
    inverse = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / determinant[:, None, None]
    return torch.cat([inverse, -(inverse @ shift.unsqueeze(-1))], dim=-1)
