"""What the pretrained-model wrappers share: an inner ``model`` that can be frozen as a fixed feature extractor."""

from __future__ import annotations

from torch import nn


class FreezableWrapper(nn.Module):
    """A wrapper holding its network in ``self.model``; :meth:`freeze` turns off its gradients and keeps it in eval
    mode even when the wrapper is put in training mode (batch-norm statistics and dropout fixed)."""

    frozen: bool = False
    model: nn.Module

    def freeze(self) -> None:
        self.frozen = True
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> FreezableWrapper:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self
