"""The four-block convolutional classifier of MAML (Finn, Abbeel & Levine, ICML 2017, section 5.2)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from fsl_lightning.backbones.plain_batchnorm import PlainBatchNorm2d

DOWNSAMPLING = ("max_pool", "stride")
INITIALISATIONS = ("maml", "glorot", "pytorch")


def maml_block(
    in_channels: int,
    out_channels: int,
    downsampling: str,
    running_statistics: bool = False,
    batch_norm_scale: bool = True,
    batch_norm_eps: float = 1e-5,
) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU, then 2x2 max pooling or a stride-2 convolution."""
    stride = 2 if downsampling == "stride" else 1
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
        PlainBatchNorm2d(out_channels, batch_norm_eps, running_statistics=running_statistics, scale=batch_norm_scale),
        nn.ReLU(),  # not in place: the functional engines must not mutate saved activations
    ]
    if downsampling == "max_pool":
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class MAMLConv4(nn.Module):
    """Conv4 body and a linear head to ``way`` logits: the network that MAML-like methods adapt.

    Input [B, in_channels, H, W]; output [B, way]. ``features`` (the body, [B, D]) and ``head`` (a
    ``nn.Linear(D, way)``) are separate attributes so that ANIL can adapt the head alone.

    The paper's Omniglot model uses strided convolutions instead of max pooling; its reference code then
    averages the last feature map over space (``downsampling="stride"``, D = hidden_channels). With
    ``"max_pool"`` (the paper's MiniImagenet model) the maps are flattened: D = hidden * (H // 16) * (W // 16).

    Args:
        in_channels: 1 for Omniglot, 3 for RGB.
        way: classes per task; training and test episodes must both have this many.
        hidden_channels: filters per block (64 in the paper; 32 for MiniImagenet).
        image_size: side of the square input, needed to size the head with max pooling.
        downsampling: ``"max_pool"`` or ``"stride"``.
        batch_norm: ``"batch"`` (the paper: batch statistics, also at test, transductive) or ``"running"``
            (running averages recorded during meta-training, used at evaluation: each query normalised alone).
        batch_norm_scale: learn a per-channel scale in batch norm. cbfinn/maml has none (TensorFlow's
            ``batch_norm`` defaults to ``scale=False``: an offset only); openai/supervised-reptile has one.
        batch_norm_eps: added to the variance; 1e-3 in both references (TensorFlow's default), 1e-5 in PyTorch.
        initialisation: ``maml`` (cbfinn/maml, ``construct_conv_weights``: Glorot-uniform convolutions with zero
            biases; the head N(0, 1) with a zero bias for the strided Omniglot model, Glorot-uniform for the
            max-pooling one), ``glorot`` (every weight Glorot-uniform, biases zero: TensorFlow's layer defaults,
            as openai/supervised-reptile) or ``pytorch`` (PyTorch's layer defaults: this project's former
            initialisation; measured effect in BENCHMARKS.md).
    """

    def __init__(
        self,
        in_channels: int = 1,
        way: int = 5,
        hidden_channels: int = 64,
        image_size: int = 28,
        downsampling: str = "max_pool",
        batch_norm: Literal["batch", "running"] = "batch",
        batch_norm_scale: bool = False,
        batch_norm_eps: float = 1e-3,
        initialisation: Literal["maml", "glorot", "pytorch"] = "maml",
    ) -> None:
        super().__init__()
        if downsampling not in DOWNSAMPLING:
            raise ValueError(f"downsampling must be one of {DOWNSAMPLING}, got {downsampling!r}.")
        if batch_norm not in ("batch", "running"):
            raise ValueError(f"batch_norm must be 'batch' or 'running', got {batch_norm!r}.")
        if initialisation not in INITIALISATIONS:
            raise ValueError(f"initialisation must be one of {INITIALISATIONS}, got {initialisation!r}.")
        side = image_size // 16
        if downsampling == "max_pool" and side < 1:
            raise ValueError(f"image_size {image_size} is too small for four 2x2 max poolings (need >= 16).")
        widths = [in_channels] + [hidden_channels] * 4
        blocks = [
            maml_block(
                widths[i], widths[i + 1], downsampling, batch_norm == "running", batch_norm_scale, batch_norm_eps
            )
            for i in range(4)
        ]
        tail: list[nn.Module] = [nn.AdaptiveAvgPool2d(1)] if downsampling == "stride" else []
        self.features = nn.Sequential(*blocks, *tail, nn.Flatten())
        feature_dim = hidden_channels if downsampling == "stride" else hidden_channels * side * side
        self.head = nn.Linear(feature_dim, way)
        self.way = way
        if initialisation != "pytorch":
            self._initialise(normal_head=initialisation == "maml" and downsampling == "stride")

    @torch.no_grad()
    def _initialise(self, normal_head: bool) -> None:
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(layer.weight)  # the fans of TensorFlow's Glorot initialisers, for both kinds
                if layer.bias is not None:  # every layer here has one; as torch's reset_parameters checks
                    nn.init.zeros_(layer.bias)
        if normal_head:  # cbfinn/maml: w5 = tf.random_normal([dim_hidden, dim_output]) for Omniglot
            nn.init.normal_(self.head.weight)

    def forward(self, images: Tensor) -> Tensor:
        """[B, C, H, W] -> logits [B, way]."""
        return self.head(self.features(images))
