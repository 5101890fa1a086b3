"""Backbones for natural images: ResNet-18, WRN-28-10 and any torchvision model, offline and on CPU."""

from __future__ import annotations

import os
from urllib.error import URLError

import jsonargparse
import pytest
import torch
import torchvision

from fsl_lightning.backbones import (
    PretrainedWeightsUnavailableError,
    ResNet18,
    TorchvisionBackbone,
    WideResNet,
    build_backbone,
)
from fsl_lightning.backbones.torchvision_backbone import checkpoint_path, resolve_weights

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch):
    """An empty torch.hub cache and no downloads, so no test can touch the network or the real cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse_download(url, *args, **kwargs):
        raise URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse_download)


def save_random_resnet18(path) -> None:
    """A random torchvision resnet18 state dict, classifier included, standing in for pretrained weights."""
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)


@pytest.mark.parametrize("in_channels", [3, 1])
def test_resnet18_pools_to_512_features(in_channels):
    backbone = ResNet18(in_channels=in_channels)
    assert backbone.out_features == 512
    assert backbone(torch.rand(2, in_channels, 84, 84)).shape == (2, 512)


def test_small_wide_resnet_has_64k_features_and_rejects_bad_depths():
    backbone = WideResNet(depth=10, widen_factor=2, dropout=0.3, in_channels=1)
    assert backbone.out_features == 128
    assert backbone(torch.rand(2, 1, 32, 32)).shape == (2, 128)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=27)


def test_wrn28_10_by_registry_name_gives_640_features():
    backbone = build_backbone("wrn28_10").eval()
    assert backbone.out_features == 640
    assert backbone(torch.rand(1, 3, 32, 32)).shape == (1, 640)


@pytest.mark.parametrize("name, features", [("resnet18", 512), ("resnet50", 2048), ("mobilenet_v3_small", 1024)])
def test_torchvision_backbone_outputs_pooled_features(name, features):
    backbone = build_backbone("torchvision", name=name, weights=None).eval()
    assert backbone.out_features == features
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, features)


def test_frozen_backbone_has_no_gradients_and_fixed_batchnorm_statistics():
    backbone = TorchvisionBackbone("resnet18", weights=None, frozen=True)
    backbone.train()
    batch_norms = [module for module in backbone.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    before = [norm.running_mean.clone() for norm in batch_norms]
    backbone(torch.rand(2, 3, 32, 32))
    assert backbone.training and not any(norm.training for norm in batch_norms)
    assert not any(parameter.requires_grad for parameter in backbone.parameters())
    assert all(torch.equal(old, norm.running_mean) for old, norm in zip(before, batch_norms))


def test_pretrained_weights_normalise_inputs_and_random_init_does_not(tmp_path):
    weights_path = tmp_path / "resnet18.pth"
    save_random_resnet18(weights_path)
    images = torch.rand(2, 3, 32, 32)
    pretrained = TorchvisionBackbone("resnet18", weights="IMAGENET1K_V1", weights_path=str(weights_path)).eval()
    expected = pretrained.model((images - IMAGENET_MEAN) / IMAGENET_STD)
    assert torch.allclose(pretrained(images), expected, atol=1e-5)
    random = TorchvisionBackbone("resnet18", weights=None).eval()
    assert torch.equal(random(images), random.model(images))


def test_grayscale_images_are_repeated_to_rgb():
    backbone = TorchvisionBackbone("resnet18", weights=None, in_channels=1).eval()
    gray = torch.rand(2, 1, 32, 32)
    assert torch.equal(backbone(gray), backbone.model(gray.repeat(1, 3, 1, 1)))


def test_offline_error_says_where_to_put_the_checkpoint():
    expected_file = checkpoint_path(resolve_weights("resnet18", "IMAGENET1K_V1"))
    assert expected_file.endswith("checkpoints/resnet18-f37072fd.pth")
    with pytest.raises(PretrainedWeightsUnavailableError) as error:
        TorchvisionBackbone("resnet18", weights="IMAGENET1K_V1")
    message = str(error.value)
    assert isinstance(error.value, RuntimeError)
    assert expected_file in message and "weights_path" in message and "weights: null" in message


def test_checkpoint_placed_in_the_hub_cache_is_used_offline():
    weights = resolve_weights("resnet18", "IMAGENET1K_V1")
    cached = checkpoint_path(weights)
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    save_random_resnet18(cached)
    backbone = TorchvisionBackbone("resnet18", weights="IMAGENET1K_V1")
    assert torch.equal(backbone.model.conv1.weight, torch.load(cached, weights_only=True)["conv1.weight"])


def test_weights_path_round_trip_and_strict_feature_loading(tmp_path):
    source = TorchvisionBackbone("resnet18", weights=None).eval()
    features_only, with_classifier, broken = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.pth"
    torch.save(source.model.state_dict(), features_only)
    save_random_resnet18(with_classifier)
    images = torch.rand(2, 3, 32, 32)
    loaded = TorchvisionBackbone("resnet18", weights=None, weights_path=str(features_only)).eval()
    assert torch.equal(loaded(images), source(images))
    TorchvisionBackbone("resnet18", weights=None, weights_path=str(with_classifier))
    state = source.model.state_dict()
    del state["layer1.0.conv1.weight"]
    torch.save(state, broken)
    with pytest.raises(RuntimeError, match="layer1.0.conv1.weight"):
        TorchvisionBackbone("resnet18", weights=None, weights_path=str(broken))


def test_unknown_names_and_missing_weights_are_clear_errors():
    with pytest.raises(ValueError, match=r"Unknown torchvision.*'resnet19'.*list_models"):
        TorchvisionBackbone("resnet19", weights=None)
    with pytest.raises(ValueError, match=r"Unknown weights 'IMAGENET22K'.*IMAGENET1K_V1.*weights: null"):
        TorchvisionBackbone("resnet18", weights="IMAGENET22K")
    with pytest.raises(TypeError, match="weights"):
        TorchvisionBackbone("resnet18")


def test_config_accepts_a_weights_name_or_null():
    """The signature is plain typed values, as a YAML ``class_path`` config needs."""
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(TorchvisionBackbone, "backbone")
    config = parser.parse_args(["--backbone.name=resnet18", "--backbone.weights=null", "--backbone.frozen=true"])
    assert config.backbone.weights is None and config.backbone.frozen is True
    assert parser.parse_args(["--backbone.name=resnet18", "--backbone.weights=DEFAULT"]).backbone.weights == "DEFAULT"
