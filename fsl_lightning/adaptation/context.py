"""Where the inner loop runs: with gradients during evaluation, and in fp32 under mixed precision."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor


@contextmanager
def gradients_enabled() -> Iterator[None]:
    """Autograd on, even inside Lightning's validation/test/predict loops.

    Those loops run under ``torch.inference_mode()`` (``Trainer(inference_mode=True)``, the default) or
    ``torch.no_grad()``; test-time adaptation needs gradients with respect to the parameters, so both are
    lifted here and configs need not set ``trainer.inference_mode: false``. Tensors created under inference
    mode (the episode) must still go through :func:`usable_in_autograd`.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


def usable_in_autograd(tensor: Tensor) -> Tensor:
    """A normal copy of an inference-mode tensor (those cannot be saved for backward); others as they are."""
    return tensor.clone() if tensor.is_inference() else tensor


def inner_precision(device_type: str, full_precision: bool) -> torch.autocast | nullcontext:
    """Autocast disabled (fp32 maths on fp32 parameters) when ``full_precision``; else the caller's autocast.

    Second-order MAML under bf16 autocast drifts far from fp32 (measured: cosine 0.25-0.45 between meta-gradients
    with 5 inner steps), hence fp32 by default.
    """
    return torch.autocast(device_type=device_type, enabled=False) if full_precision else nullcontext()
