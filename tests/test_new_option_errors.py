"""Bad values of the options added for faithfulness name what is wrong and what to use."""

from __future__ import annotations

import pytest
import torch

from fsl_lightning.backbones import MAMLConv4, R2D2Conv
from fsl_lightning.methods import R2D2, Reptile


def test_an_unknown_maml_conv4_initialisation_names_the_choices():
    with pytest.raises(
        ValueError, match=r"initialisation must be one of \('maml', 'glorot', 'pytorch'\), got 'xavier'"
    ):
        MAMLConv4(initialisation="xavier")


def test_r2d2_conv_needs_four_channel_counts():
    with pytest.raises(ValueError, match=r"R2D2Conv has four blocks: give four channel counts, got \[64, 64\]"):
        R2D2Conv(channels=(64, 64))


def test_an_unknown_r2d2_regulariser_scaling_names_the_choices():
    with pytest.raises(ValueError, match="regulariser_scaling must be per_support_image or plain, got 'sqrt'"):
        R2D2(torch.nn.Flatten(), regulariser_scaling="sqrt")


def test_reptile_holding_batch_norm_needs_the_sgd_inner_loop():
    with pytest.raises(ValueError, match="adapt_batch_norm: false needs inner_optimizer: sgd"):
        Reptile(MAMLConv4(downsampling="stride"), adapt_batch_norm=False)
    Reptile(MAMLConv4(downsampling="stride"), adapt_batch_norm=False, inner_optimizer="sgd")  # allowed
