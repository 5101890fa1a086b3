"""DropBlock (Ghiasi, Lin & Le, NeurIPS 2018) with the linear warm-up of MetaOptNet's and RFS's ResNet-12."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DropBlock(nn.Module):
    """Zeroes random ``block_size x block_size`` squares of every feature map in training; identity in eval.

    As the ResNet-12 of MetaOptNet (Lee et al. 2019) and RFS (Tian et al. 2020): block seeds are drawn only where
    a whole block fits (its top-left corner in ``[0, H - block_size] x [0, W - block_size]``) with probability

        gamma = (1 - keep) / block_size^2 * H W / ((H - block_size + 1) (W - block_size + 1)),

    so that about ``1 - keep`` of the units are dropped, and the kept units are rescaled by
    ``numel / kept`` to keep the expected activation. The drop rate ``1 - keep`` grows linearly from 0 to
    ``drop_rate`` over the first ``schedule_steps`` training forward passes (their ``20 * 2000``), then stays.
    Their counter also counts evaluation batches; this one counts training passes only (a buffer, so that it
    resumes from a checkpoint). A block larger than the feature map is shrunk to it (their code would fail).

    Input and output [B, C, H, W].
    """

    def __init__(self, block_size: int = 5, drop_rate: float = 0.1, schedule_steps: int = 40_000) -> None:
        super().__init__()
        if block_size < 1:
            raise ValueError(f"DropBlock block_size must be at least 1, got {block_size}.")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"DropBlock drop_rate must be in [0, 1), got {drop_rate}.")
        if schedule_steps < 0:
            raise ValueError(f"DropBlock schedule_steps must be >= 0 (0: full rate at once), got {schedule_steps}.")
        self.block_size, self.drop_rate, self.schedule_steps = block_size, drop_rate, schedule_steps
        self.training_steps: Tensor
        self.register_buffer("training_steps", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, drop_rate={self.drop_rate}, schedule_steps={self.schedule_steps}"

    def current_drop_rate(self) -> Tensor:
        """``1 - keep`` now: ``drop_rate * min(1, steps / schedule_steps)`` (a tensor: no host synchronisation)."""
        if self.schedule_steps == 0:
            return torch.tensor(self.drop_rate, device=self.training_steps.device)
        return (self.training_steps.float() / self.schedule_steps).clamp(max=1.0) * self.drop_rate

    def forward(self, features: Tensor) -> Tensor:
        if not self.training or self.drop_rate == 0:
            return features
        self.training_steps += 1
        mask = self.block_mask(features)
        return features * mask * (mask.numel() / mask.sum().clamp(min=1.0))

    def block_mask(self, features: Tensor) -> Tensor:
        """1 where units are kept, 0 inside dropped blocks, [B, C, H, W] in the features' dtype."""
        batch, channels, height, width = features.shape
        size = min(self.block_size, height, width)
        valid_height, valid_width = height - size + 1, width - size + 1
        gamma = self.current_drop_rate() / size**2 * (height * width) / (valid_height * valid_width)
        seeds = torch.rand(batch, channels, valid_height, valid_width, device=features.device) < gamma
        # a max filter over zero padding grows each seed into the block whose top-left corner it is
        blocks = F.max_pool2d(F.pad(seeds.to(features.dtype), (size - 1,) * 4), size, stride=1)
        return 1 - blocks


def restart_dropblock_schedules(module: nn.Module) -> None:
    """Sets the ramp of every DropBlock in ``module`` back to its start: a new training stage started from another
    run's weights ramps its DropBlock up again, as FEAT's meta-training does (its counter is a plain attribute,
    not saved with the pre-trained weights)."""
    for block in module.modules():
        if isinstance(block, DropBlock):
            block.training_steps.zero_()
