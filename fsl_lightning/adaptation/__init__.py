"""Inner-loop (task adaptation) engines for optimisation-based meta-learning, one interface, three implementations.

``"loop"``: plain autograd task by task, torch's fused batch norm (the fastest exact engine on a CPU).
``"vmap"``: ``torch.func`` vectorised over the tasks of a meta-batch (batched: the GPU's).
``"learn2learn"``: learn2learn functional clones, task by task (the reference).
``"auto"`` (the default of the methods): ``loop`` on the CPU, ``vmap`` on other devices.
"""

from __future__ import annotations

from typing import Literal

from fsl_lightning.adaptation.auto_engine import DeviceInnerLoop
from fsl_lightning.adaptation.base import AdaptedParams, InnerLoop, InnerLR, support_loss
from fsl_lightning.adaptation.context import gradients_enabled, inner_precision, usable_in_autograd
from fsl_lightning.adaptation.learn2learn_engine import Learn2LearnInnerLoop
from fsl_lightning.adaptation.loop_engine import LoopInnerLoop
from fsl_lightning.adaptation.vmap_engine import VmapInnerLoop
from fsl_lightning.run.errors import UserError

ENGINES: dict[str, type[InnerLoop]] = {
    "auto": DeviceInnerLoop,
    "loop": LoopInnerLoop,
    "vmap": VmapInnerLoop,
    "learn2learn": Learn2LearnInnerLoop,
}
#: the ``engine`` argument of the MAML-family methods
EngineName = Literal["auto", "loop", "vmap", "learn2learn"]


def build_engine(name: str) -> InnerLoop:
    """The engine called ``name`` (a key of :data:`ENGINES`)."""
    try:
        return ENGINES[name]()
    except KeyError:
        raise UserError(f"Unknown adaptation engine {name!r}: choose one of {', '.join(sorted(ENGINES))}.") from None


__all__ = [
    "ENGINES",
    "AdaptedParams",
    "DeviceInnerLoop",
    "EngineName",
    "InnerLR",
    "InnerLoop",
    "Learn2LearnInnerLoop",
    "LoopInnerLoop",
    "VmapInnerLoop",
    "build_engine",
    "gradients_enabled",
    "inner_precision",
    "support_loss",
    "usable_in_autograd",
]
