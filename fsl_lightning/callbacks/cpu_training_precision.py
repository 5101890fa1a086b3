"""bf16 autocast for the training steps only, on CPUs with bf16 hardware (AMX tiles or AVX-512's BF16 dot
products: :func:`~fsl_lightning.run.cpu_features.bf16_training_is_fast`): the CPU default of the metric and transfer
families (``speed.cpu_bf16``).

Why training only: on a 2-core Xeon (AMX-BF16) and a 2-core EPYC (AVX512-BF16) a bf16 Conv4 training step with
channels-last weights runs about 3x faster than fp32 (BENCHMARKS.md, ``benchmarks/cpu_kernels.py``) while test
accuracy stays within the confidence interval; validation and test stay in fp32, so that a checkpoint's reported
accuracy does not depend on whether the machine that evaluates it has bf16 units, nor on this default.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

from lightning.pytorch.plugins.precision import MixedPrecision


class BF16TrainingSteps(MixedPrecision):
    """Lightning's bf16 mixed precision on the CPU in ``training_step`` (forward and loss under autocast, weights and
    optimiser in fp32), and plain fp32 in validation, test and prediction."""

    def __init__(self) -> None:
        super().__init__(precision="bf16-mixed", device="cpu")

    @contextmanager
    def val_step_context(self) -> Generator[None, None, None]:
        yield

    @contextmanager
    def test_step_context(self) -> Generator[None, None, None]:
        yield

    @contextmanager
    def predict_step_context(self) -> Generator[None, None, None]:
        yield
