"""Inner-loop (task adaptation) engines for optimisation-based meta-learning, one interface, two implementations.

``"learn2learn"``: learn2learn functional clones, task by task (the reference).
``"vmap"``: ``torch.func`` vectorised over the tasks of a meta-batch (the fast one).
"""

from __future__ import annotations

from fsl_lightning.adaptation.base import AdaptedParams, InnerLoop, InnerLR, support_loss
from fsl_lightning.adaptation.context import gradients_enabled, inner_precision, usable_in_autograd
from fsl_lightning.adaptation.learn2learn_engine import Learn2LearnInnerLoop
from fsl_lightning.adaptation.vmap_engine import VmapInnerLoop

ENGINES: dict[str, type[InnerLoop]] = {"learn2learn": Learn2LearnInnerLoop, "vmap": VmapInnerLoop}


def build_engine(name: str) -> InnerLoop:
    """The engine called ``name`` (``"learn2learn"`` or ``"vmap"``)."""
    try:
        return ENGINES[name]()
    except KeyError:
        raise ValueError(f"Unknown adaptation engine {name!r}: choose one of {', '.join(sorted(ENGINES))}.") from None


__all__ = [
    "ENGINES", "AdaptedParams", "InnerLR", "InnerLoop", "Learn2LearnInnerLoop", "VmapInnerLoop", "build_engine",
    "gradients_enabled", "inner_precision", "support_loss", "usable_in_autograd",
]
