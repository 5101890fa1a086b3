"""Batch normalisation written with plain tensor operations, exact under ``torch.func`` transforms.

Under ``vmap``, ``F.batch_norm`` in training mode gives silently wrong second-order gradients
(pytorch/functorch#534): its fused double-backward is not batched correctly. Written as mean, variance and
``rsqrt``, every derivative comes from ordinary autograd formulas and is exact in both adaptation engines.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PlainBatchNorm2d(nn.Module):
    """Batch norm over [N, C, H, W] that always uses the statistics of the current batch.

    This is the MAML setting (Finn et al. 2017, reference code: batch statistics at training and at test, no
    running averages), so the module keeps no buffers and behaves the same in ``train()`` and ``eval()``:
    every episode's support set and query set are normalised with their own statistics (transductive at test,
    as in the paper). Running statistics are deliberately not offered: updating buffers in place is not
    possible inside ``vmap`` over tasks.

    Args:
        num_features: channels C.
        eps: added to the variance.
        affine: learnable per-channel scale (init 1) and shift (init 0).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, inputs: Tensor) -> Tensor:
        """[N, C, H, W] -> [N, C, H, W], normalised per channel over N, H and W (biased variance, as cuDNN)."""
        mean = inputs.mean(dim=(0, 2, 3), keepdim=True)
        centred = inputs - mean
        variance = centred.pow(2).mean(dim=(0, 2, 3), keepdim=True)
        normalised = centred * torch.rsqrt(variance + self.eps)
        if self.weight is None:
            return normalised
        return normalised * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"
