"""``engine: auto``: the fastest exact engine for the device the meta-batch is on, chosen at each call.

On the CPU, the task-by-task loop with torch's fused batch norm (:class:`LoopInnerLoop`); on every other device,
the vectorised engine (:class:`VmapInnerLoop`), as before this choice existed: GPUs were not measured for the
choice (benchmarks/maml_engines.py measures the CPU), and a batched computation is what keeps a GPU busy.
Both give the same meta-gradients (tests/test_adaptation.py), so the choice changes the speed, not the result.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fsl_lightning.adaptation.base import AdaptedParams, InnerLoop, InnerLR
from fsl_lightning.adaptation.loop_engine import LoopInnerLoop
from fsl_lightning.adaptation.vmap_engine import VmapInnerLoop


class DeviceInnerLoop(InnerLoop):
    """Delegates to :meth:`engine_for` the device of the inputs."""

    name = "auto"

    def __init__(self) -> None:
        self.cpu_engine, self.accelerator_engine = LoopInnerLoop(), VmapInnerLoop()

    def engine_for(self, device: torch.device) -> InnerLoop:
        """The engine that computes on ``device``."""
        return self.cpu_engine if device.type == "cpu" else self.accelerator_engine

    def adapt(
        self,
        learner: nn.Module,
        support_inputs: Tensor,
        support_labels: Tensor,
        steps: int,
        lr: InnerLR,
        first_order: bool,
    ) -> AdaptedParams:
        engine = self.engine_for(support_inputs.device)
        return engine.adapt(learner, support_inputs, support_labels, steps, lr, first_order)

    def logits(self, learner: nn.Module, params: AdaptedParams, inputs: Tensor) -> Tensor:
        return self.engine_for(inputs.device).logits(learner, params, inputs)

    def map_tasks(self, module: nn.Module, inputs: Tensor) -> Tensor:
        return self.engine_for(inputs.device).map_tasks(module, inputs)
