"""fsl_lightning: few-shot image classification with PyTorch Lightning."""

__version__ = "0.1.0"
