"""Reptile's reference inner optimiser: Adam with beta1 = 0 whose second moments carry over from task to task.

Nichol et al.'s code (openai/supervised-reptile) adapts each task with one TensorFlow ``AdamOptimizer(lr, beta1=0)``
shared by every task of the whole run. Before a task, only the network's weights are reset to the initialisation;
Adam's second moments and its step count are not, so each inner step is scaled by a running average of squared
gradients over all tasks seen so far. Evaluation adapts from those moments and restores them afterwards. Inner
steps run on mini-batches cut from shuffled passes over the task's labelled images.

With beta1 = 0 the first moment is the gradient itself, so one step is::

    v <- beta2 * v + (1 - beta2) * g^2;   t <- t + 1
    phi <- phi - lr * sqrt(1 - beta2^t) * g / (sqrt(v) + eps)

(TensorFlow's form, epsilon added to the uncorrected root; torch's ``Adam(betas=(0, beta2))`` differs only in where
epsilon enters.) Inner gradients are first order: Reptile never differentiates through the inner loop.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fsl_lightning.adaptation.base import AdaptedParams, support_loss


class CarriedAdamMoments(nn.Module):
    """The inner optimiser's state, kept with the model (buffers: saved in checkpoints, moved with the module):
    ``squares`` is the second moment of every adapted parameter, flattened into one vector, ``step`` Adam's
    step count ``t``."""

    squares: Tensor
    step: Tensor

    def __init__(self, learner: nn.Module) -> None:
        super().__init__()
        size = sum(p.numel() for p in learner.parameters())
        self.register_buffer("squares", torch.zeros(size))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))


class CarriedAdam:
    """Adapts tasks one after another with Adam (beta1 = 0) from the moments in ``moments``.

    Args:
        lr: Adam's step size (1e-3 in the reference's Omniglot and miniImageNet runs).
        beta2: second-moment decay (TensorFlow's default, 0.999).
        eps: TensorFlow's default, 1e-8.
    """

    def __init__(self, lr: float, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.lr, self.beta2, self.eps = lr, beta2, eps

    def adapt(
        self,
        learner: nn.Module,
        moments: CarriedAdamMoments,
        inputs: Tensor,
        labels: Tensor,
        steps: int,
        batch_size: int | None,
        generator: torch.Generator,
        keep_moments: bool,
    ) -> AdaptedParams:
        """Adapts ``learner`` to each task of ``inputs`` [T, N, ...] / ``labels`` [T, N] in turn, ``steps`` Adam steps
        on mini-batches of ``batch_size`` (``None``: all N at once). With ``keep_moments`` the moments after the last
        task are written back (training); otherwise every task starts from the stored moments and they are left
        as they were (evaluation, as the reference restores its whole state). Returns name -> [T, *shape], detached.
        """
        theta = {name: p.detach() for name, p in learner.named_parameters()}
        squares, step = moments.squares.clone(), moments.step.clone()
        adapted = []
        for task_inputs, task_labels in zip(inputs, labels):
            if not keep_moments:
                squares, step = moments.squares.clone(), moments.step.clone()
            fast = dict(theta)
            for batch in _mini_batches(len(task_labels), batch_size, steps, generator, task_labels.device):
                fast, squares, step = self._step(learner, fast, task_inputs[batch], task_labels[batch], squares, step)
            adapted.append(fast)
        if keep_moments:
            moments.squares.copy_(squares)
            moments.step.copy_(step)
        return {name: torch.stack([task[name] for task in adapted]) for name in theta}

    def _step(
        self, learner: nn.Module, fast: dict[str, Tensor], inputs: Tensor, labels: Tensor, squares: Tensor, step: Tensor
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        point = {name: p.detach().requires_grad_() for name, p in fast.items()}
        loss = support_loss(functional_call(learner, point, (inputs,)), labels)
        gradient = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(point.values()))])
        squares = self.beta2 * squares + (1 - self.beta2) * gradient.square()
        step = step + 1
        rate = self.lr * torch.sqrt(1 - self.beta2 ** step.double()).to(gradient.dtype)
        update = (rate * gradient / (squares.sqrt() + self.eps)).split([p.numel() for p in point.values()])
        fast = {name: (p - u.view_as(p)).detach() for (name, p), u in zip(point.items(), update)}
        return fast, squares, step


def _mini_batches(
    count: int, batch_size: int | None, batches: int, generator: torch.Generator, device: torch.device
) -> Iterator[Tensor]:
    """``batches`` index batches of ``batch_size`` cut from a stream of shuffled passes over ``count`` items (a batch
    may straddle two passes), as the reference's sampling without replacement; ``None``: every item, every time."""
    if batch_size is None:
        for _ in range(batches):
            yield torch.arange(count, device=device)
        return
    stream = torch.empty(0, dtype=torch.long)
    for _ in range(batches):
        while len(stream) < batch_size:
            stream = torch.cat([stream, torch.randperm(count, generator=generator)])
        batch, stream = stream[:batch_size], stream[batch_size:]
        yield batch.to(device)
