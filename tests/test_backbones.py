"""Backbones: output shapes as documented, and the registry's error for an unknown name."""

import pytest
import torch

from fsl_lightning.backbones import Conv4, ResNet12, build_backbone


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
