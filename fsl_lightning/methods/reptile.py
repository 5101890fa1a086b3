"""Reptile (Nichol, Achiam & Schulman, 2018): move the initialisation towards the task-adapted weights."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from fsl_lightning.adaptation import AdaptedParams, EngineName, inner_precision
from fsl_lightning.episode import Episode
from fsl_lightning.methods.maml import MAML, as_meta_batch


def reptile_surrogate(learner: nn.Module, adapted: AdaptedParams) -> Tensor:
    """``0.5 * sum ||theta - mean_t phi_t||^2`` with ``phi`` constant: its gradient is ``theta - mean_t phi_t``.

    So one step of plain SGD with learning rate epsilon on this loss is the batched Reptile update
    ``theta <- theta + epsilon * mean_t (phi_t - theta)`` (Nichol et al. 2018, Algorithm 2), and it goes through
    the ordinary Lightning optimiser, scheduler, gradient clipping and DDP gradient averaging.
    """
    return sum(
        0.5 * (p - adapted[name].detach().mean(dim=0)).pow(2).sum() for name, p in learner.named_parameters()
    )


class Reptile(MAML):
    """Per task, ``inner_steps`` SGD steps of size ``inner_lr`` on all its labelled images (support and queries:
    Reptile has no query split), then the Reptile update of the initialisation; no gradient flows through the
    inner loop. Use ``torch.optim.SGD`` with the outer step size epsilon as learning rate (a linear decay to
    0, as in the paper, with ``LinearLR``). The paper's inner optimiser is Adam; this one uses plain SGD.
    Evaluation adapts on the support set with ``test_inner_steps`` as MAML does, and so does the logged training
    accuracy (with ``inner_steps``, see :meth:`training_step`). Arguments as
    :class:`~fsl_lightning.methods.maml.MAML` (``first_order`` is ignored: Reptile is first order).
    """

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        test_inner_steps: int = 10,
        first_order: bool = True,
        engine: EngineName = "auto",
        inner_loop_fp32: bool = True,
    ) -> None:
        super().__init__(
            backbone, optimizer, lr_scheduler, scheduler_interval, inner_lr, inner_steps, test_inner_steps,
            True, engine, inner_loop_fp32,
        )

    def reptile_loss(self, batch: Episode) -> Tensor:
        """The surrogate loss of a meta-batch: each task adapted on its support and query images together."""
        with inner_precision(self.device.type, self.inner_loop_fp32):
            learner = self.inner_learner()
            images = torch.cat([batch.support_images, batch.query_images], dim=1)
            labels = torch.cat([batch.support_labels, batch.query_labels], dim=1)
            adapted = self.engine.adapt(learner, images, labels, self.inner_steps, self.inner_rates(), True)
        return reptile_surrogate(learner, adapted)

    def training_step(self, episode: Episode, batch_idx: int) -> Tensor:
        """Logs ``train/loss`` and ``train/acc``: query cross-entropy and accuracy after ``inner_steps`` on the
        support set ALONE (what MAML logs and evaluation measures). The update's own inner loop has trained on the
        queries, so its query accuracy would only measure memorisation (issue 13). Costs one more inner loop on
        the support images only (a few percent of the step: they are ``way * shot`` of ``way * (shot + query)``).
        """
        batch = as_meta_batch(episode)
        surrogate = self.reptile_loss(batch)
        query_loss, logits = self.meta_loss(batch)  # first order: its inner gradients are already constants
        self._log_training(query_loss.detach(), logits.detach(), batch)
        self.log("train/reptile_distance", surrogate.detach(), batch_size=batch.query_labels.numel())
        return surrogate
