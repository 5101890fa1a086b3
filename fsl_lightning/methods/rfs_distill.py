"""RFS-distill (Tian et al., ECCV 2020): born-again self-distillation of the pre-trained network."""

from __future__ import annotations

from typing import Any

from fsl_lightning.methods.registry import registered
from fsl_lightning.methods.rfs import RFSSimple


@registered
class RFSDistill(RFSSimple):
    """An RFS network of the next generation: the same architecture, trained from scratch on the base classes
    with ``(1 - w) * CE + w * KD`` against the previous generation (``teacher_checkpoint``, required; RFS uses
    w = 0.5, T = 4). Run the RFS-simple config first, then this one with its checkpoint (the shipped configs
    name its ``last.ckpt``, RFS distils from the final model); repeat for more generations. Arguments as :class:`~fsl_lightning.methods.transfer.Transfer`."""

    def __init__(self, *args: Any, teacher_checkpoint: str, **kwargs: Any) -> None:
        if not teacher_checkpoint:
            raise ValueError("RFSDistill needs teacher_checkpoint: a checkpoint of an RFS-simple run (its last.ckpt).")
        # mypy: *args might reach the keywords; it holds only the base's leading arguments, and jsonargparse
        # reads the signature through this very call
        super().__init__(*args, teacher_checkpoint=teacher_checkpoint, **kwargs)
