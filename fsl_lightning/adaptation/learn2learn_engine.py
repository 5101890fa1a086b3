"""learn2learn inner loop: ``l2l.algorithms.MAML`` / ``MetaSGD`` functional clones, one task at a time.

The reference implementation the vectorised engine is checked against (and the usual way MAML is written in
PyTorch): ``clone()`` makes a differentiable copy of the learner, ``adapt(loss)`` replaces its parameters by
``p - lr * grad`` (with ``create_graph`` unless first order). learn2learn's ``Lightning*`` classes are not used:
they subclass ``pytorch_lightning.LightningModule``, which ``lightning``'s Trainer rejects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fsl_lightning.adaptation.base import AdaptedParams, InnerLoop, InnerLR, support_loss


def _wrap(learner: nn.Module, lr: InnerLR, first_order: bool) -> Any:
    """``l2l.algorithms.MAML`` for one step size, ``MetaSGD`` for a step size per parameter (``Any``: learn2learn
    ships no type information, and its ``clone``/``adapt`` are not ``nn.Module``'s)."""
    import learn2learn as l2l  # imported here: it is slow to import and only this engine needs it

    if isinstance(lr, Mapping):
        # A plain list (not a ParameterList, which would re-wrap tensors as new leaves and cut the graph to
        # the method's learned rates); MetaSGD.clone() clones it differentiably.
        rates = [lr[name] for name, _ in learner.named_parameters()]
        return l2l.algorithms.MetaSGD(learner, first_order=first_order, lrs=rates)
    return l2l.algorithms.MAML(learner, lr=lr, first_order=first_order)


class Learn2LearnInnerLoop(InnerLoop):
    """Tasks adapted one after the other with learn2learn clones."""

    name = "learn2learn"

    def adapt(
        self,
        learner: nn.Module,
        support_inputs: Tensor,
        support_labels: Tensor,
        steps: int,
        lr: InnerLR,
        first_order: bool,
    ) -> AdaptedParams:
        wrapper = _wrap(learner, lr, first_order)
        names = [name for name, _ in learner.named_parameters()]
        per_task = []
        for inputs, labels in zip(support_inputs, support_labels):
            clone = wrapper.clone()
            for _ in range(steps):
                clone.adapt(support_loss(clone(inputs), labels))
            # After adapt() the clone's "parameters" are non-leaf tensors of the graph; same order as names.
            per_task.append(list(clone.module.parameters()))
        return {name: torch.stack([task[i] for task in per_task]) for i, name in enumerate(names)}

    def logits(self, learner: nn.Module, params: AdaptedParams, inputs: Tensor) -> Tensor:
        scores = [
            functional_call(learner, {name: p[task] for name, p in params.items()}, (task_inputs,))
            for task, task_inputs in enumerate(inputs)
        ]
        return torch.stack(scores)

    def map_tasks(self, module: nn.Module, inputs: Tensor) -> Tensor:
        return torch.stack([module(task_inputs) for task_inputs in inputs])
