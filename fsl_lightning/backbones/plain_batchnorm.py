"""Batch normalisation written with plain tensor operations, exact under ``torch.func`` transforms.

Under ``vmap``, ``F.batch_norm`` in training mode gives silently wrong second-order gradients
(pytorch/functorch#534): its fused double-backward is not batched correctly. Written as mean, variance and
``rsqrt``, every derivative comes from ordinary autograd formulas and is exact in both adaptation engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class PlainBatchNorm2d(nn.Module):
    """Batch norm over [N, C, H, W].

    By default it always uses the statistics of the current batch: the MAML setting (Finn et al. 2017, reference
    code: batch statistics at training and at test, no running averages), so it behaves the same in ``train()``
    and ``eval()``: every episode's support set and query set are normalised with their own statistics
    (transductive at test, as in the paper).

    With ``running_statistics=True`` it keeps running averages (as ``nn.BatchNorm2d``, with ``momentum``) and
    uses them in ``eval()``: evaluation is then not transductive, each query is normalised alone. Buffers cannot
    be updated in place inside ``vmap`` over tasks, so the averages are updated only inside
    :func:`recording_running_statistics` (MAML records them on one plain pass of each meta-batch, outside the
    adaptation engines, so that both engines keep giving the same results).

    Args:
        num_features: channels C.
        eps: added to the variance.
        affine: learnable per-channel scale (init 1) and shift (init 0).
        running_statistics: keep and use running averages in ``eval()``.
        momentum: weight of the newest batch in the running averages.
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, affine: bool = True, running_statistics: bool = False,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.running_statistics = running_statistics
        self.momentum = momentum
        self.recording = False
        if running_statistics:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, inputs: Tensor) -> Tensor:
        """[N, C, H, W] -> [N, C, H, W], normalised per channel over N, H and W (biased variance, as cuDNN)."""
        if self.running_statistics and not self.training:
            mean, variance = self.running_mean.view(1, -1, 1, 1), self.running_var.view(1, -1, 1, 1)
        else:
            mean = inputs.mean(dim=(0, 2, 3), keepdim=True)
            variance = (inputs - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)
            if self.recording:
                self._record(mean, variance, inputs.numel() // inputs.shape[1])
        normalised = (inputs - mean) * torch.rsqrt(variance + self.eps)
        if self.weight is None:
            return normalised
        return normalised * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    @torch.no_grad()
    def _record(self, mean: Tensor, variance: Tensor, count: int) -> None:
        # running_var averages the unbiased variance, as nn.BatchNorm2d does
        unbiased = variance.flatten() * count / max(count - 1, 1)
        self.running_mean.lerp_(mean.flatten().detach(), self.momentum)
        self.running_var.lerp_(unbiased.detach(), self.momentum)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}, "
                f"running_statistics={self.running_statistics}")


def tracks_running_statistics(module: nn.Module) -> bool:
    """Whether any :class:`PlainBatchNorm2d` of ``module`` keeps running averages."""
    return any(isinstance(m, PlainBatchNorm2d) and m.running_statistics for m in module.modules())


@contextmanager
def recording_running_statistics(module: nn.Module) -> Iterator[None]:
    """Within this block, forward passes of ``module`` in training mode update its running averages."""
    norms = [m for m in module.modules() if isinstance(m, PlainBatchNorm2d) and m.running_statistics]
    for norm in norms:
        norm.recording = True
    try:
        yield
    finally:
        for norm in norms:
            norm.recording = False
