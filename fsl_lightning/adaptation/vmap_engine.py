"""Vectorised inner loop: ``torch.func.grad`` inside ``torch.func.vmap`` over the tasks of a meta-batch.

One batched computation per meta-batch instead of a Python loop over tasks. The outer (meta) gradient is
ordinary autograd through the ``torch.func`` transforms, which are differentiable: with ``first_order=False``
it includes the second-order terms of MAML exactly. Batch norm must be written with plain tensor ops
(:class:`~fsl_lightning.backbones.plain_batchnorm.PlainBatchNorm2d`), see pytorch/functorch#534: a learner with
torch's batch or instance norm is refused (MAML-like methods replace ``nn.BatchNorm2d`` before they get here).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fsl_lightning.adaptation.base import AdaptedParams, InnerLoop, InnerLR, rate_of, support_loss


def _support_loss_at(params: dict[str, Tensor], learner: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    """Support loss of one task as a function of the parameters (what ``grad`` differentiates)."""
    return support_loss(functional_call(learner, params, (inputs,)), labels)


_support_grad = grad(_support_loss_at)


def refuse_fused_batch_norm(module: nn.Module) -> None:
    """An error if ``module`` holds a torch batch/instance norm, whose second-order gradients vmap gets wrong."""
    for name, child in module.named_modules():
        if isinstance(child, nn.modules.batchnorm._NormBase):
            raise ValueError(
                f"The vmap engine cannot differentiate {type(child).__name__} at '{name}' exactly "
                "(pytorch/functorch#534): build the method through MAML/ANIL/MetaSGD/Reptile (they replace "
                "nn.BatchNorm2d by PlainBatchNorm2d), use PlainBatchNorm2d yourself, or engine='learn2learn'."
            )


def _inner_gradients(
    params: dict[str, Tensor], learner: nn.Module, inputs: Tensor, labels: Tensor, first_order: bool
) -> dict[str, Tensor]:
    """Gradient of one task's support loss; differentiable by the outer autograd unless ``first_order``."""
    if not first_order:
        return _support_grad(params, learner, inputs, labels)
    # Inner gradients are constants: no path back to theta, nor to ANIL's features. Taking them at detached
    # parameters also spares building the second-order graph only to drop it.
    point = {name: p.detach() for name, p in params.items()}
    return {name: g.detach() for name, g in _support_grad(point, learner, inputs, labels).items()}


class VmapInnerLoop(InnerLoop):
    """All tasks of a meta-batch adapted in one vectorised computation."""

    name = "vmap"

    def adapt(
        self,
        learner: nn.Module,
        support_inputs: Tensor,
        support_labels: Tensor,
        steps: int,
        lr: InnerLR,
        first_order: bool,
    ) -> AdaptedParams:
        refuse_fused_batch_norm(learner)
        params: dict[str, Tensor] = dict(learner.named_parameters())
        tasks = support_inputs.shape[0]
        if steps == 0:
            return {name: p.unsqueeze(0).expand(tasks, *p.shape) for name, p in params.items()}

        def adapt_one_task(inputs: Tensor, labels: Tensor) -> dict[str, Tensor]:
            fast = params
            for _ in range(steps):
                grads = _inner_gradients(fast, learner, inputs, labels, first_order)
                fast = {name: p - rate_of(lr, name) * grads[name] for name, p in fast.items()}
            return fast

        return vmap(adapt_one_task)(support_inputs, support_labels)

    def logits(self, learner: nn.Module, params: AdaptedParams, inputs: Tensor) -> Tensor:
        def one_task(task_params: dict[str, Tensor], task_inputs: Tensor) -> Tensor:
            return functional_call(learner, task_params, (task_inputs,))

        return vmap(one_task)(params, inputs)

    def map_tasks(self, module: nn.Module, inputs: Tensor) -> Tensor:
        refuse_fused_batch_norm(module)
        return vmap(module)(inputs)
