"""The inner loop's interface: adapt a learner to the support set of each task, then score queries.

Both engines (:mod:`~fsl_lightning.adaptation.learn2learn_engine`, :mod:`~fsl_lightning.adaptation.vmap_engine`)
compute the same thing (Finn et al. 2017, eq. 1, repeated ``steps`` times; Li et al. 2017 for per-parameter
rates)::

    phi_0 = theta;   phi_{k+1} = phi_k - lr * grad_phi CE(f(support; phi_k), support_labels)

and hand back the adapted parameters of every task stacked along a leading task dimension, which is the
common currency of the methods: they score queries with :meth:`InnerLoop.logits` and differentiate the
query loss back to ``theta`` (and to learned rates).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

#: one step size for every parameter, or a tensor per parameter name (scalar or of the parameter's shape)
InnerLR = float | Mapping[str, Tensor]
#: parameter name -> adapted values of every task, [T, *parameter.shape]
AdaptedParams = dict[str, Tensor]


class InnerLoop(ABC):
    """An adaptation engine. Inputs carry a leading task dimension T (a meta-batch; T = 1 for one episode)."""

    name: str

    @abstractmethod
    def adapt(
        self,
        learner: nn.Module,
        support_inputs: Tensor,
        support_labels: Tensor,
        steps: int,
        lr: InnerLR,
        first_order: bool,
    ) -> AdaptedParams:
        """Adapts every parameter of ``learner`` to each task.

        Args:
            learner: the module whose parameters are adapted (the whole network, or only a head for ANIL).
            support_inputs: [T, S, ...] inputs of the learner (images, or features for ANIL).
            support_labels: [T, S] labels in ``0..way-1``.
            steps: gradient steps on the support loss (0 returns the parameters unchanged).
            lr: inner step size(s).
            first_order: treat inner gradients as constants (FOMAML, Finn et al. 2017 section 5.2; Reptile),
                so that the meta-gradient is the query gradient at the adapted parameters.

        Returns:
            name -> [T, *shape]; differentiable with respect to the learner's parameters and tensor rates.
        """

    @abstractmethod
    def logits(self, learner: nn.Module, params: AdaptedParams, inputs: Tensor) -> Tensor:
        """Each task's inputs [T, Q, ...] through the learner with that task's parameters -> [T, Q, way]."""

    @abstractmethod
    def map_tasks(self, module: nn.Module, inputs: Tensor) -> Tensor:
        """``module`` (its own parameters) applied to each task separately: [T, N, ...] -> [T, N, ...].

        Per task, not on the flattened batch, because batch norm uses the statistics of each task's set.
        """


def support_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The inner objective: mean cross-entropy over a task's support set, logits [S, way], labels [S]."""
    return F.cross_entropy(logits, labels)


def rate_of(lr: InnerLR, name: str) -> float | Tensor:
    """The step size of parameter ``name``."""
    return lr if isinstance(lr, (int, float)) else lr[name]
