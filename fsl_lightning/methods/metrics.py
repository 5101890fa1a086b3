"""Few-shot accuracy as it is reported: mean over episodes with a 95% confidence interval."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torchmetrics import CatMetric


def mean_and_ci95(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and half-width of its 95% confidence interval, ``1.96 * std / sqrt(n)`` (sample std).

    The values are sorted first: floating-point sums depend on the order of their terms, and the order in
    which DDP ranks gather per-episode values depends on the number of processes. Sorted, the same episodes
    give bit-identical results on 1 or N processes.
    """
    values = values.double().flatten().sort().values
    if values.numel() < 2:
        return values.mean(), torch.zeros((), dtype=values.dtype, device=values.device)
    return values.mean(), 1.96 * values.std(unbiased=True) / math.sqrt(values.numel())


class AccuracySummary(NamedTuple):
    """Mean accuracy, half-width of its 95% confidence interval, and the per-episode accuracies behind them."""

    mean: Tensor
    ci95: Tensor
    per_episode: Tensor

    @property
    def episodes(self) -> int:
        return self.per_episode.numel()


class EpisodeAccuracy(CatMetric):
    """Collects one accuracy per episode; ``compute()`` gives an :class:`AccuracySummary`.

    Under DDP the per-episode values of all ranks are gathered before the mean, so the result equals
    the single-device one for the same episodes, to the last bit (:func:`mean_and_ci95` does not depend on
    the gathering order). ``per_episode`` keeps the gathered order.
    """

    # torchmetrics types Metric.compute as returning Any but CatMetric's as Tensor; this one summarises that tensor
    def compute(self) -> AccuracySummary:  # type: ignore[override]
        values = super().compute().flatten()
        return AccuracySummary(*mean_and_ci95(values), values)
