"""fsl_lightning: few-shot image classification with PyTorch Lightning."""

from fsl_lightning.run.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError"]
