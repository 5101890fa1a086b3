"""timm backbones (DINOv2 and any timm model): small real architectures with random weights, offline, on CPU."""

from __future__ import annotations

from pathlib import Path

import jsonargparse
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from fsl_lightning.backbones.timm_backbone import TimmBackbone
from fsl_lightning.backbones.torchvision_backbone import PretrainedWeightsUnavailableError
from fsl_lightning.pretrained import download_from_url, hugging_face_cache_folder

DINOV2 = "vit_small_patch14_dinov2"
#: DINOv2 ViT-S/14's architecture (14-pixel patches, layer scale, class-token pooling), 2 blocks 48 wide, so that it
#: runs in milliseconds; layer scale 1 instead of 1e-5, else random blocks barely change the class token.
TINY_DINOV2 = {"depth": 2, "embed_dim": 48, "num_heads": 2, "init_values": 1.0}
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
pytestmark = pytest.mark.usefixtures("one_thread", "offline_hubs")


def tiny_dinov2(**kwargs) -> TimmBackbone:
    settings = {"pretrained": None, "image_size": 28, "model_kwargs": TINY_DINOV2, **kwargs}
    return TimmBackbone(DINOV2, **settings).eval()


def test_dinov2_gives_pooled_features_of_its_width_at_any_input_size():
    backbone = tiny_dinov2()
    assert backbone.out_features == 48 and backbone.model.patch_embed.img_size == (28, 28)
    for side in (28, 32, 84):
        assert backbone(torch.rand(2, 3, side, side)).shape == (2, 48)
    first, second = backbone(torch.rand(2, 3, 28, 28))
    assert not torch.allclose(first, second)  # the features depend on the image


def test_inputs_are_resized_and_normalised_with_the_pretrained_config():
    backbone = tiny_dinov2()
    images = torch.rand(2, 3, 32, 32)
    resized = F.interpolate(images, size=(28, 28), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    expected = backbone.model((resized - IMAGENET_MEAN) / IMAGENET_STD)
    assert torch.allclose(backbone(images), expected, atol=1e-5)
    assert "mean" not in backbone.state_dict() and "input.mean" not in backbone.state_dict()


def test_grayscale_images_are_repeated_to_rgb():
    backbone = tiny_dinov2(in_channels=1)
    gray = torch.rand(2, 1, 28, 28)
    assert torch.equal(backbone(gray), backbone(gray.repeat(1, 3, 1, 1)))


def test_cnn_default_input_size_comes_from_its_pretrained_config():
    backbone = TimmBackbone("resnet18.a1_in1k", pretrained=None).eval()
    assert backbone.image_size == 224 and backbone.out_features == 512
    assert backbone(torch.rand(1, 3, 40, 40)).shape == (1, 512)


def test_frozen_backbone_has_no_gradients_and_stays_in_eval_mode():
    backbone = TimmBackbone("resnet18", pretrained=None, frozen=True, image_size=32)
    backbone.train()
    assert backbone.training and not backbone.model.training
    assert not any(parameter.requires_grad for parameter in backbone.parameters())
    trainable = TimmBackbone("resnet18", pretrained=None, image_size=32).train()
    assert trainable.model.training and all(parameter.requires_grad for parameter in trainable.parameters())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_path_loads_a_local_file(tmp_path, suffix):
    source = tiny_dinov2()
    path = tmp_path / f"weights{suffix}"
    state = {key: value.contiguous() for key, value in source.model.state_dict().items()}
    safetensors.torch.save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    loaded = tiny_dinov2(weights_path=str(path))
    images = torch.rand(2, 3, 28, 28)
    assert torch.equal(loaded(images), source(images))


def test_weights_in_the_hugging_face_cache_are_used_offline(tmp_path):
    """A copied Hub cache folder (what the offline error suggests) is found without the network."""
    source = tiny_dinov2()
    repo = "timm/vit_small_patch14_dinov2.lvd142m"
    commit = "0" * 40
    folder = hugging_face_cache_folder(repo)
    assert folder == tmp_path / "hf_hub" / "models--timm--vit_small_patch14_dinov2.lvd142m"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    safetensors.torch.save_file(
        {key: value.contiguous() for key, value in source.model.state_dict().items()},
        folder / "snapshots" / commit / "model.safetensors",
    )
    pretrained = tiny_dinov2(pretrained=True)
    assert pretrained.pretrained
    images = torch.rand(2, 3, 28, 28)
    assert torch.equal(pretrained(images), source(images))


def test_offline_error_says_which_file_to_put_where(tmp_path):
    with pytest.raises(PretrainedWeightsUnavailableError) as error:
        TimmBackbone(DINOV2, pretrained=True)
    message = str(error.value)
    assert "timm/vit_small_patch14_dinov2.lvd142m" in message
    assert "https://huggingface.co/timm/vit_small_patch14_dinov2.lvd142m/resolve/main/model.safetensors" in message
    assert str(tmp_path / "hf_hub" / "models--timm--vit_small_patch14_dinov2.lvd142m") in message
    assert "weights_path" in message and "pretrained: null" in message


def test_url_weights_offline_error_names_the_target_file(tmp_path):
    url = "https://example.org/weights/model-1234.pth"
    with pytest.raises(PretrainedWeightsUnavailableError) as error:
        download_from_url(url, tmp_path / "checkpoints", "test model", "weights_path")
    assert str(tmp_path / "checkpoints" / "model-1234.pth") in str(error.value) and url in str(error.value)
    (tmp_path / "checkpoints" / "model-1234.pth").write_bytes(b"weights")
    assert download_from_url(url, tmp_path / "checkpoints", "test model", "weights_path") == str(
        tmp_path / "checkpoints" / "model-1234.pth"
    )


def test_bad_names_tags_and_missing_pretrained_are_clear_errors():
    with pytest.raises(ValueError, match=r"Unknown timm model 'vit_small_patch99'.*list_models"):
        TimmBackbone("vit_small_patch99", pretrained=None)
    with pytest.raises(ValueError, match=r"Invalid pretrained tag \(nope\).*list_models"):
        TimmBackbone(f"{DINOV2}.nope", pretrained=True)
    with pytest.raises(TypeError, match="pretrained"):
        TimmBackbone(DINOV2)
    with pytest.raises(ValueError, match="in_channels"):
        TimmBackbone(DINOV2, pretrained=None, in_channels=2)


def test_config_takes_pretrained_true_or_null_and_model_kwargs():
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(TimmBackbone, "backbone")
    config = parser.parse_args(
        [
            f"--backbone.name={DINOV2}",
            "--backbone.pretrained=null",
            "--backbone.image_size=224",
            "--backbone.model_kwargs={drop_path_rate: 0.1}",
        ]
    )
    assert config.backbone.pretrained is None and config.backbone.model_kwargs == {"drop_path_rate": 0.1}
    assert parser.parse_args([f"--backbone.name={DINOV2}", "--backbone.pretrained=true"]).backbone.pretrained is True


def test_dinov2_configs_name_the_real_model():
    for config in ("dinov2_5w1s", "dinov2_5w5s"):
        text = (Path(__file__).resolve().parents[1] / "experiments" / "caltech101" / f"{config}.yaml").read_text()
        assert f"name: {DINOV2}" in text and "pretrained: true" in text and "frozen: true" in text
