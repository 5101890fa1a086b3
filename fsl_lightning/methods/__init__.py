"""Few-shot methods, one per module, each a LightningModule over :class:`FewShotMethod`."""

from fsl_lightning.methods.base import FewShotMethod
from fsl_lightning.methods.protonet import ProtoNet

#: name -> class, for error messages and programmatic use; the CLI also takes full class paths
METHODS: dict[str, type[FewShotMethod]] = {"ProtoNet": ProtoNet}

__all__ = ["METHODS", "FewShotMethod", "ProtoNet"]
