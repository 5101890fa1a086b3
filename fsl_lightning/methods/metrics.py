"""Few-shot accuracy as it is reported: mean over episodes with a 95% confidence interval."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import CatMetric


def mean_and_ci95(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and half-width of its 95% confidence interval, ``1.96 * std / sqrt(n)`` (sample std)."""
    values = values.double().flatten()
    if values.numel() < 2:
        return values.mean(), torch.zeros((), dtype=values.dtype, device=values.device)
    return values.mean(), 1.96 * values.std(unbiased=True) / math.sqrt(values.numel())


class EpisodeAccuracy(CatMetric):
    """Collects one accuracy per episode; ``compute()`` gives ``(mean, ci95, episodes)``.

    Under DDP the per-episode values of all ranks are gathered before the mean, so the result equals
    the single-device one for the same episodes.
    """

    def compute(self) -> tuple[Tensor, Tensor, int]:
        values = super().compute()
        mean, ci95 = mean_and_ci95(values)
        return mean, ci95, values.numel()
