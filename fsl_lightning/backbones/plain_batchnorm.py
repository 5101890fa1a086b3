"""Batch normalisation written with plain tensor operations, exact under ``torch.func`` transforms.

Under ``vmap``, ``F.batch_norm`` in training mode gives silently wrong second-order gradients
(pytorch/functorch#534): its fused double-backward is not batched correctly. Written as mean, variance and
``rsqrt``, every derivative comes from ordinary autograd formulas and is exact in every adaptation engine.
Outside ``vmap`` torch's fused kernel is exact too, and faster: engines that call the network task by task
switch to it with :func:`native_batch_norm`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
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
        scale: with ``affine``, whether the scale is learned; ``False`` keeps the shift only, as MAML's reference
            (cbfinn/maml, TensorFlow's ``batch_norm`` with its default ``scale=False``).
        running_statistics: keep and use running averages in ``eval()``.
        momentum: weight of the newest batch in the running averages.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        running_statistics: bool = False,
        momentum: float = 0.1,
        scale: bool = True,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine and scale else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.running_statistics = running_statistics
        self.momentum = momentum
        self.recording = False
        self.native = False  # torch's fused kernel instead of plain ops: see native_batch_norm()
        self.running_mean: Tensor  # registered, and used, only with running_statistics
        self.running_var: Tensor
        if running_statistics:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, inputs: Tensor) -> Tensor:
        """[N, C, H, W] -> [N, C, H, W], normalised per channel over N, H and W (biased variance, as cuDNN)."""
        if self.native and not self.recording:
            return self._fused(inputs)
        if self.running_statistics and not self.training:
            mean, variance = self.running_mean.view(1, -1, 1, 1), self.running_var.view(1, -1, 1, 1)
        else:
            mean = inputs.mean(dim=(0, 2, 3), keepdim=True)
            variance = (inputs - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)
            if self.recording:
                self._record(mean, variance, inputs.numel() // inputs.shape[1])
        normalised = (inputs - mean) * torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            normalised = normalised * self.weight.view(1, -1, 1, 1)
        if self.bias is not None:
            normalised = normalised + self.bias.view(1, -1, 1, 1)
        return normalised

    def _fused(self, inputs: Tensor) -> Tensor:
        """The same maths by ``F.batch_norm``; momentum 0 and no buffers passed in training: nothing is updated."""
        running = self.running_statistics and not self.training
        mean, variance = (self.running_mean, self.running_var) if running else (None, None)
        weight: Tensor | None = self.weight
        if weight is None and self.bias is not None:
            # a shift without a scale: torch's double backward fails on a bias without a weight, so pass a scale of 1
            weight = torch.ones(self.num_features, device=inputs.device, dtype=inputs.dtype)
        return F.batch_norm(inputs, mean, variance, weight, self.bias, not running, 0.0, self.eps)

    @torch.no_grad()
    def _record(self, mean: Tensor, variance: Tensor, count: int) -> None:
        # running_var averages the unbiased variance, as nn.BatchNorm2d does
        unbiased = variance.flatten() * count / max(count - 1, 1)
        self.running_mean.lerp_(mean.flatten().detach(), self.momentum)
        self.running_var.lerp_(unbiased.detach(), self.momentum)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints of a backbone built with nn.BatchNorm2d (replaced by this class in MAML-like methods) carry
        # its batch counter; nothing here uses it.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, scale={self.weight is not None}, shift={self.bias is not None}, "
            f"running_statistics={self.running_statistics}"
        )


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


@contextmanager
def native_batch_norm(module: nn.Module) -> Iterator[None]:
    """Within this block, every :class:`PlainBatchNorm2d` of ``module`` computes with torch's fused kernel.

    Same values and exact higher-order gradients when the network is called task by task (checked against finite
    differences in tests/test_adaptation.py), but wrong second-order gradients under ``vmap``: only engines that
    loop over tasks use it. Recording passes (:func:`recording_running_statistics`) keep the plain ops.
    """
    norms = [m for m in module.modules() if isinstance(m, PlainBatchNorm2d)]
    previous = [norm.native for norm in norms]
    for norm in norms:
        norm.native = True
    try:
        yield
    finally:
        for norm, state in zip(norms, previous):
            norm.native = state


def as_plain_batch_norm(norm: nn.BatchNorm2d) -> PlainBatchNorm2d:
    """A :class:`PlainBatchNorm2d` that computes what ``norm`` computes, with its affine weights and statistics.

    ``track_running_stats=True`` becomes ``running_statistics=True`` (batch statistics in ``train()``, the copied
    running averages in ``eval()``, updated with the same ``momentum``); without it, batch statistics always.
    """
    if norm.momentum is None:
        raise ValueError(
            f"{norm} has momentum=None (a cumulative running average), which PlainBatchNorm2d does not implement: "
            "give it a momentum (e.g. nn.BatchNorm2d(C, momentum=0.1)) or use PlainBatchNorm2d in the backbone."
        )
    tracks = norm.track_running_stats
    plain = PlainBatchNorm2d(norm.num_features, norm.eps, norm.affine, tracks, norm.momentum)
    plain.train(norm.training)
    reference = norm.weight if norm.affine else norm.running_mean
    if reference is not None:
        plain.to(device=reference.device, dtype=reference.dtype)
    names = (("weight", "bias") if norm.affine else ()) + (("running_mean", "running_var") if tracks else ())
    with torch.no_grad():
        for name in names:
            getattr(plain, name).copy_(getattr(norm, name))
    return plain


def replace_torch_batch_norm(module: nn.Module) -> list[str]:
    """Replaces, in place, every ``nn.BatchNorm2d`` inside ``module`` by its :func:`as_plain_batch_norm`.

    Returns the names of the replaced modules. Other normalisations built on ``F.batch_norm`` (BatchNorm1d/3d,
    SyncBatchNorm, InstanceNorm*) are refused with an error: their second-order gradients are also wrong under
    ``vmap`` (measured for InstanceNorm2d) and they have no plain counterpart here. GroupNorm and LayerNorm are
    exact and kept.
    """
    replaced = []
    for name, child in list(module.named_modules()):
        if type(child) is nn.BatchNorm2d:
            parent, _, attribute = name.rpartition(".")
            setattr(module.get_submodule(parent), attribute, as_plain_batch_norm(child))
            replaced.append(name)
        elif isinstance(child, nn.modules.batchnorm._NormBase):
            raise ValueError(
                f"{type(child).__name__} at '{name}' cannot be adapted exactly by MAML-like methods (second-order "
                "gradients of F.batch_norm are wrong under torch.func.vmap, pytorch/functorch#534): use "
                "nn.BatchNorm2d or fsl_lightning.backbones.PlainBatchNorm2d (both batch norm over [N, C, H, W]), "
                "or nn.GroupNorm / nn.LayerNorm."
            )
    return replaced
