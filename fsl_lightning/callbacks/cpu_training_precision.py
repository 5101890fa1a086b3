"""bf16 autocast for the training steps only, on CPUs with AMX units: the CPU default of the metric and transfer
families (``speed.cpu_bf16``).

Why training only: on this project's 2-core Xeon (AMX-BF16) a bf16 Conv4 training step with channels-last weights
runs about 2.6x faster than fp32 (BENCHMARKS.md, ``benchmarks/cpu_kernels.py``) while test accuracy stays within the
confidence interval; validation and test stay in fp32, so that a checkpoint's reported accuracy does not depend on
whether the machine that evaluates it has AMX units, nor on this default.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

import torch
from lightning.pytorch.plugins.precision import MixedPrecision


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has the AMX tile units that make bf16 convolutions and matrix products fast (Sapphire Rapids
    and later Xeons). Without them bf16 runs emulated on AVX-512 and is no faster than fp32."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x: absent means unknown, so no
    return bool(probe and probe())


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
