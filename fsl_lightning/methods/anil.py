"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020): MAML adapting only the head."""

from __future__ import annotations

from torch import Tensor, nn

from fsl_lightning.methods.maml import MAML
from fsl_lightning.methods.registry import registered


@registered
class ANIL(MAML):
    """MAML whose inner loop adapts only the final linear layer; the body is meta-learned in the outer loop.

    The backbone must expose ``features`` (images -> [B, D]) and ``head`` (``[B, D] -> [B, way]``), as
    :class:`~fsl_lightning.backbones.maml_conv4.MAMLConv4` does. The body runs once per task and set (support,
    queries) instead of once per inner step: its parameters do not change in the inner loop, so the result is
    the same as MAML restricted to the head, and the meta-gradient still reaches the body through the features
    (second order unless ``first_order``). Arguments as :class:`~fsl_lightning.methods.maml.MAML`.
    """

    def inner_learner(self) -> nn.Module:
        return self._backbone_part("head")

    def inner_inputs(self, images: Tensor) -> Tensor:
        """[T, N, C, H, W] -> features [T, N, D], per task (batch norm uses each task's statistics)."""
        return self.engine.map_tasks(self._backbone_part("features"), images)

    def _backbone_part(self, name: str) -> nn.Module:
        part = getattr(self.backbone, name, None)
        if not isinstance(part, nn.Module):
            raise TypeError(
                f"ANIL needs a backbone with `features` and `head` modules (as MAMLConv4), got "
                f"{type(self.backbone).__name__} without `{name}`."
            )
        return part
