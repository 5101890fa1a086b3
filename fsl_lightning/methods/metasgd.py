"""Meta-SGD (Li, Zhou, Chen & Li, 2017): MAML with a learned step size for every parameter entry."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from fsl_lightning.adaptation import InnerLR
from fsl_lightning.methods.maml import MAML


def _key(parameter_name: str) -> str:
    """A ParameterDict key for a dotted parameter name (module attribute names cannot contain dots)."""
    return parameter_name.replace(".", "__")


class MetaSGD(MAML):
    """The inner update is ``phi = theta - alpha * grad`` with ``alpha`` a tensor of each parameter's shape,
    meta-learned together with ``theta`` by the same optimiser (Li et al. 2017, eq. 3; second order).

    ``alpha`` starts at ``inner_lr`` everywhere (the paper draws it uniformly from [0.005, 0.1]; a constant
    start makes the first meta-iterations identical to MAML's). Other arguments as
    :class:`~fsl_lightning.methods.maml.MAML`; ``first_order`` still gives the rates a gradient (through
    ``-grad``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        test_inner_steps: int = 3,
        first_order: bool = False,
        engine: Literal["vmap", "learn2learn"] = "vmap",
        inner_loop_fp32: bool = True,
    ) -> None:
        super().__init__(
            backbone, optimizer, lr_scheduler, scheduler_interval, inner_lr, inner_steps, test_inner_steps,
            first_order, engine, inner_loop_fp32,
        )
        self.inner_lrs = nn.ParameterDict(
            {_key(name): nn.Parameter(torch.full_like(p, inner_lr)) for name, p in backbone.named_parameters()}
        )

    def inner_rates(self) -> InnerLR:
        return {name: self.inner_lrs[_key(name)] for name, _ in self.backbone.named_parameters()}
