"""Backbones: output shapes as documented, and the registry's error for an unknown name."""

import pytest
import torch

from fsl_lightning.backbones import Conv4, MAMLConv4, R2D2Conv, ResNet12, build_backbone


@pytest.mark.parametrize("size, features", [(28, 64), (84, 64 * 5 * 5)])
def test_conv4_embedding_size(size, features):
    assert Conv4(in_channels=1)(torch.rand(2, 1, size, size)).shape == (2, features)
    assert Conv4(in_channels=3, flatten=False)(torch.rand(2, 3, size, size)).shape == (2, 64, size // 16, size // 16)


def test_resnet12_pools_to_640_features():
    backbone = ResNet12(in_channels=3)
    assert backbone.out_features == 640
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, 640)
    assert ResNet12(in_channels=3, pool=False)(torch.rand(2, 3, 32, 32)).shape == (2, 640, 2, 2)


def test_registry_builds_by_name_and_names_the_choices_for_an_unknown_one():
    assert isinstance(build_backbone("Conv4", in_channels=1), Conv4)
    with pytest.raises(ValueError, match=r"Unknown backbone 'vgg'.*conv4.*resnet12"):
        build_backbone("vgg")


@pytest.mark.parametrize("channels, size, features", [(1, 28, 1536 + 2048), (3, 84, 31104 + 41472)])
def test_r2d2_conv_concatenates_its_last_two_feature_maps(channels, size, features):
    """The sizes of bertinetto/r2d2's ``out_dim`` (scripts/train/train.py) for Omniglot and miniImageNet."""
    assert R2D2Conv(in_channels=channels)(torch.rand(2, channels, size, size)).shape == (2, features)


def test_r2d2_conv_pools_before_its_activation_as_the_reference():
    """conv, batch norm, max pooling, LeakyReLU(0.1), the reference's blocks (max pooling commutes with a monotone
    activation, so the order is the reference's layout rather than a numerical difference); the last pools with
    stride 1."""
    block = R2D2Conv().fourth
    assert [type(layer).__name__ for layer in block] == ["Conv2d", "BatchNorm2d", "MaxPool2d", "LeakyReLU"]
    assert block[2].stride == 1 and block[3].negative_slope == 0.1
    assert R2D2Conv(dropout=0.1).fourth[-1].p == 0.1


def test_maml_conv4_is_initialised_and_normalised_as_cbfinn_maml():
    """maml.py's construct_conv_weights: Glorot-uniform convolutions, zero biases, an N(0, 1) head for the strided
    Omniglot model; utils.py's TensorFlow batch_norm: an offset, no scale, eps 1e-3."""
    torch.manual_seed(0)
    network = MAMLConv4(hidden_channels=64, downsampling="stride")
    conv = network.features[1][0]
    bound = (6 / (9 * 64 + 9 * 64)) ** 0.5  # Glorot: sqrt(6 / (fan_in + fan_out))
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound
    assert not conv.bias.any() and not network.head.bias.any()
    assert 0.9 < network.head.weight.std() < 1.1  # PyTorch's default would give about 1 / sqrt(3 * 64) = 0.07
    norm = network.features[0][1]
    assert norm.weight is None and norm.bias is not None and norm.eps == 1e-3
    pooled = MAMLConv4(in_channels=3, hidden_channels=32, image_size=84, downsampling="max_pool")
    head_bound = (6 / (32 * 5 * 5 + 5)) ** 0.5  # the max-pooling (miniImageNet) head is Glorot-uniform
    assert pooled.head.weight.abs().max() <= head_bound


def test_maml_conv4_keeps_pytorchs_initialisation_when_asked():
    torch.manual_seed(0)
    network = MAMLConv4(downsampling="stride", initialisation="pytorch", batch_norm_scale=True, batch_norm_eps=1e-5)
    assert network.head.weight.std() < 0.2 and network.features[0][0].bias.any()
    assert network.features[0][1].weight is not None
