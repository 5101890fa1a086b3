"""Task-by-task inner loop: ``functional_call`` and ``torch.autograd.grad``, with torch's fused batch norm.

The plainest formulation of MAML (Finn et al. 2017, eq. 1): per task, the support loss of the network called
with the current fast weights, its gradient with ``create_graph=True`` (second order) and the step
``phi <- phi - lr * grad``. No ``vmap``, so torch's fused batch-norm kernel, whose double backward is exact
outside ``vmap``, replaces the plain-op version (:func:`~fsl_lightning.backbones.plain_batchnorm.native_batch_norm`).
On a CPU it was measured about 1.5x faster than the vmap engine (benchmarks/maml_engines.py, MAML 5-way 1-shot,
meta-batch 8); the plain-op batch norm costs several kernels where the fused one costs one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fsl_lightning.adaptation.base import AdaptedParams, InnerLoop, InnerLR, rate_of, support_loss
from fsl_lightning.backbones.plain_batchnorm import native_batch_norm


def _inner_gradients(
    learner: nn.Module, params: dict[str, Tensor], inputs: Tensor, labels: Tensor, first_order: bool
) -> dict[str, Tensor]:
    """Gradient of one task's support loss at ``params``: part of the graph unless ``first_order``."""
    if first_order:
        # Constants: taken at detached weights, so no second-order graph is built only to be dropped.
        params = {name: p.detach().requires_grad_() for name, p in params.items()}
    loss = support_loss(functional_call(learner, params, (inputs,)), labels)
    # materialize_grads: a parameter the loss does not use gets a zero step, as torch.func.grad gives it
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order, materialize_grads=True)
    return dict(zip(params, grads))


class LoopInnerLoop(InnerLoop):
    """The tasks of a meta-batch adapted one after the other by plain autograd."""

    name = "loop"

    def adapt(
        self,
        learner: nn.Module,
        support_inputs: Tensor,
        support_labels: Tensor,
        steps: int,
        lr: InnerLR,
        first_order: bool,
    ) -> AdaptedParams:
        params: dict[str, Tensor] = dict(learner.named_parameters())
        if steps == 0:
            return {name: p.unsqueeze(0).expand(support_inputs.shape[0], *p.shape) for name, p in params.items()}
        per_task = []
        with native_batch_norm(learner):
            for inputs, labels in zip(support_inputs, support_labels):
                fast = params
                for _ in range(steps):
                    grads = _inner_gradients(learner, fast, inputs, labels, first_order)
                    fast = {name: p - rate_of(lr, name) * grads[name] for name, p in fast.items()}
                per_task.append(fast)
        return {name: torch.stack([task[name] for task in per_task]) for name in params}

    def logits(self, learner: nn.Module, params: AdaptedParams, inputs: Tensor) -> Tensor:
        # unbind, not indexing: its backward is one stack per parameter instead of a zero-filled copy per task
        per_task = zip(*(p.unbind(0) for p in params.values()))
        with native_batch_norm(learner):
            scores = [
                functional_call(learner, dict(zip(params, task_params)), (task_inputs,))
                for task_params, task_inputs in zip(per_task, inputs)
            ]
        return torch.stack(scores)

    def map_tasks(self, module: nn.Module, inputs: Tensor) -> Tensor:
        with native_batch_norm(module):
            return torch.stack([module(task_inputs) for task_inputs in inputs])
