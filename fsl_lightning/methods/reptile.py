"""Reptile (Nichol, Achiam & Schulman, 2018): move the initialisation towards the task-adapted weights."""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from fsl_lightning.adaptation import AdaptedParams, inner_precision
from fsl_lightning.adaptation.carried_adam import CarriedAdam, CarriedAdamMoments
from fsl_lightning.episode import Episode
from fsl_lightning.methods.episode_classifiers import UNSEEDED_EPISODE_SEED
from fsl_lightning.methods.maml import MAML, as_meta_batch
from fsl_lightning.methods.registry import registered
from fsl_lightning.run.errors import UserError


def reptile_surrogate(learner: nn.Module, adapted: AdaptedParams) -> Tensor:
    """``0.5 * sum ||theta - mean_t phi_t||^2`` with ``phi`` constant: its gradient is ``theta - mean_t phi_t``.

    So one step of plain SGD with learning rate epsilon on this loss is the batched Reptile update
    ``theta <- theta + epsilon * mean_t (phi_t - theta)`` (Nichol et al. 2018, Algorithm 2), and it goes through
    the ordinary Lightning optimiser, scheduler, gradient clipping and DDP gradient averaging.
    """
    total = sum(0.5 * (p - adapted[name].detach().mean(dim=0)).pow(2).sum() for name, p in learner.named_parameters())
    if not isinstance(total, Tensor):  # sum's start value 0: no parameter was summed
        raise ValueError("Reptile's learner has no parameters to meta-learn.")
    return total


@registered
class Reptile(MAML):
    """Per task, ``inner_steps`` first-order steps on all its labelled images (support and queries: Reptile has no
    query split), then the Reptile update of the initialisation; no gradient flows through the inner loop. Use
    ``torch.optim.SGD`` with the outer step size epsilon as learning rate (a linear decay to 0, as in the paper,
    with ``LinearLR``). Evaluation adapts on the support set with ``test_inner_steps``, and so does the logged
    training accuracy (with ``inner_steps``, see :meth:`training_step`).

    Args:
        inner_optimizer: ``adam`` (the reference code's, default): Adam with beta1 = 0 at ``inner_lr`` (1e-3), whose
            second moments carry over from task to task and are saved with the model
            (:mod:`~fsl_lightning.adaptation.carried_adam`); evaluation adapts from them without changing them. In
            DDP each process adapts its own tasks and the moments follow the first process's (buffers are
            broadcast). ``sgd``: a named departure, plain SGD steps of ``inner_lr`` through the MAML engine (the
            effect of the choice is measured in BENCHMARKS.md).
        inner_batch_size: images per inner step in meta-training, cut from shuffled passes over the task's
            images (the reference's ``--inner-batch``, 10 on Omniglot); ``None``: all of them every step.
        test_inner_batch_size: the same for adaptation on a support set (``--eval-batch``, 5 on Omniglot).
        adapt_batch_norm: ``true`` (the reference's inner Adam updates every trainable variable, batch norm's
            included); ``false`` only with ``inner_optimizer: sgd``.
        other arguments: as :class:`~fsl_lightning.methods.maml.MAML` (``first_order`` is ignored: Reptile is
            first order).
    """

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerCallable = torch.optim.SGD,
        *args: Any,
        inner_lr: float = 1e-3,
        inner_steps: int = 5,
        test_inner_steps: int = 50,
        first_order: bool = True,
        inner_optimizer: Literal["adam", "sgd"] = "adam",
        inner_batch_size: int | None = 10,
        test_inner_batch_size: int | None = 5,
        adapt_batch_norm: bool = True,
        **kwargs: Any,
    ) -> None:
        # mypy: *args might reach the keywords; it holds only the base's leading arguments, and jsonargparse
        # reads the signature through this very call
        super().__init__(
            backbone,
            optimizer,
            *args,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            test_inner_steps=test_inner_steps,
            first_order=True,
            adapt_batch_norm=adapt_batch_norm,
            **kwargs,
        )
        if inner_optimizer == "adam" and not adapt_batch_norm:
            raise ValueError(
                "Reptile's Adam inner loop adapts every parameter, batch norm's included (the reference's): "
                "adapt_batch_norm: false needs inner_optimizer: sgd."
            )
        if inner_optimizer not in ("adam", "sgd"):
            raise ValueError(f"Unknown inner_optimizer {inner_optimizer!r}: use 'adam' (the reference's) or 'sgd'.")
        for name, size in (("inner_batch_size", inner_batch_size), ("test_inner_batch_size", test_inner_batch_size)):
            if size is not None and size < 1:
                raise ValueError(f"{name} must be >= 1 or null (all images), got {size}.")
        self.inner_optimizer = inner_optimizer
        self.inner_batch_size = inner_batch_size
        self.test_inner_batch_size = test_inner_batch_size
        if inner_optimizer == "adam":
            self.inner_adam = CarriedAdam(inner_lr)
            self.inner_adam_moments = CarriedAdamMoments(self.inner_learner())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint of the other inner optimiser would fail on missing or unexpected moments: say so."""
        super().on_load_checkpoint(checkpoint)
        saved = any(key.startswith("inner_adam_moments.") for key in checkpoint.get("state_dict", {}))
        if saved != (self.inner_optimizer == "adam"):
            trained_with = "adam" if saved else "sgd"
            hparams = checkpoint.get("hyper_parameters", {})
            settings = [f"--model.init_args.inner_optimizer={trained_with}"] + [
                f"--model.init_args.{name}={hparams[name]}"
                for name in ("inner_lr", "test_inner_steps")
                if name in hparams
            ]
            raise UserError(
                f"This Reptile checkpoint was trained with inner_optimizer={trained_with}, but the model is built with "
                f"inner_optimizer={self.inner_optimizer}: pass {' '.join(settings)}."
            )

    def reptile_loss(self, batch: Episode) -> Tensor:
        """The surrogate loss of a meta-batch: each task adapted on its support and query images together."""
        with inner_precision(self.device.type, self.inner_loop_fp32):
            learner = self.inner_learner()
            images = torch.cat([batch.support_images, batch.query_images], dim=1)
            labels = torch.cat([batch.support_labels, batch.query_labels], dim=1)
            if self.inner_optimizer == "adam":
                generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))  # seed_everything-driven
                adapted = self.inner_adam.adapt(
                    learner,
                    self.inner_adam_moments,
                    images,
                    labels,
                    self.inner_steps,
                    self.inner_batch_size,
                    generator,
                    keep_moments=True,
                )
            else:
                adapted = self.engine.adapt(learner, images, labels, self.inner_steps, self.inner_rates(), True)
        return reptile_surrogate(learner, adapted)

    def adapt_tasks(
        self, inputs: Tensor, labels: Tensor, steps: int, first_order: bool, seed: int | None
    ) -> AdaptedParams:
        """Adaptation to support sets (evaluation, and the logged training accuracy): Adam from the carried moments,
        which stay unchanged, with mini-batch order from the episode's ``seed``; or MAML's SGD (``sgd``)."""
        if self.inner_optimizer == "sgd":
            return super().adapt_tasks(inputs, labels, steps, first_order, seed)
        generator = torch.Generator().manual_seed(UNSEEDED_EPISODE_SEED if seed is None else seed)
        return self.inner_adam.adapt(
            self.inner_learner(),
            self.inner_adam_moments,
            inputs,
            labels,
            steps,
            self.test_inner_batch_size,
            generator,
            keep_moments=False,
        )

    def training_step(self, episode: Episode, batch_idx: int) -> Tensor:
        """Logs ``train/loss`` and ``train/acc``: query cross-entropy and accuracy after ``inner_steps`` on the
        support set ALONE (what MAML logs and evaluation measures). The update's own inner loop has trained on the
        queries, so its query accuracy would only measure memorisation. Costs one more inner loop on
        the support images only (a few percent of the step: they are ``way * shot`` of ``way * (shot + query)``).
        """
        batch = as_meta_batch(episode)
        surrogate = self.reptile_loss(batch)
        query_loss, logits = self.meta_loss(batch)  # first order: its inner gradients are already constants
        self._log_training(query_loss.detach(), logits.detach(), batch)
        self.log("train/reptile_distance", surrogate.detach(), batch_size=batch.query_labels.numel())
        return surrogate
