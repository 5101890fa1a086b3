"""Meta-SGD (Li, Zhou, Chen & Li, 2017): MAML with a learned step size for every parameter entry."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fsl_lightning.adaptation import InnerLR
from fsl_lightning.methods.maml import MAML
from fsl_lightning.methods.registry import registered


def _key(parameter_name: str) -> str:
    """A ParameterDict key for a dotted parameter name (module attribute names cannot contain dots)."""
    return parameter_name.replace(".", "__")


def _initial_rates(parameter: Tensor, inner_lr: float, rate_range: tuple[float, float] | None) -> Tensor:
    """Step sizes of ``parameter``'s shape: uniform in ``rate_range``, or all ``inner_lr`` without one."""
    if rate_range is None:
        return torch.full_like(parameter, inner_lr, requires_grad=False)
    low, high = rate_range
    if not 0 <= low <= high:
        raise ValueError(f"initial_rate_range must be (low, high) with 0 <= low <= high, got {rate_range}.")
    return torch.empty_like(parameter, requires_grad=False).uniform_(low, high)


@registered
class MetaSGD(MAML):
    """The inner update is ``phi = theta - alpha * grad`` with ``alpha`` a tensor of each parameter's shape,
    meta-learned together with ``theta`` by the same optimiser (Li et al. 2017, eq. 3; second order).

    As in the paper, ``alpha`` entries start uniformly in ``initial_rate_range`` ([0.005, 0.1], section 4) and
    a task is learned in one step, at meta-training and at meta-test ("adapt any differentiable learner in just
    one step"): ``test_inner_steps`` defaults to 1. Other arguments as :class:`~fsl_lightning.methods.maml.MAML`;
    ``first_order`` still gives the rates a gradient (through ``-grad``).

    Args:
        inner_lr: (:class:`~fsl_lightning.methods.maml.MAML`'s) the initial rate of every entry, used only when
            ``initial_rate_range`` is ``None``.
        initial_rate_range: (low, high) of the uniform initial rates; ``None`` starts every rate at ``inner_lr``
            (a departure: the first meta-iterations are then exactly MAML's).
        adapt_batch_norm: ``true`` by default: Li et al. learn a rate for every parameter of the network and say
            nothing of batch norm (no reference code was published); ``false`` holds batch norm's parameters as
            MAML's reference does.
    """

    def __init__(
        self,
        *args: Any,
        test_inner_steps: int = 1,
        initial_rate_range: tuple[float, float] | None = (0.005, 0.1),
        adapt_batch_norm: bool = True,
        **kwargs: Any,
    ) -> None:
        # mypy: *args might reach the keywords; it holds only the base's leading arguments, and jsonargparse
        # reads the signature through this very call
        super().__init__(*args, test_inner_steps=test_inner_steps, adapt_batch_norm=adapt_batch_norm, **kwargs)
        self.inner_lrs = nn.ParameterDict(
            {
                _key(name): nn.Parameter(_initial_rates(p, self.inner_lr, initial_rate_range))
                for name, p in self.backbone.named_parameters()
            }
        )

    def inner_rates(self) -> InnerLR:
        return self.held_batch_norm({name: self.inner_lrs[_key(name)] for name, _ in self.backbone.named_parameters()})
