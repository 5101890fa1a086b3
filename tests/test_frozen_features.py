"""FrozenFeatures: a frozen pretrained backbone, the features of a split computed once, episodes by look-up."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage

from fsl_lightning.backbones.timm_backbone import TimmBackbone
from fsl_lightning.cli import main
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import Episode, EpisodeSpec
from fsl_lightning.methods import FrozenFeatures
from fsl_lightning.methods.episode_classifiers import LogisticRegression, NearestCentroid

REPO = Path(__file__).resolve().parents[1]
TINY_DINOV2 = {"depth": 2, "embed_dim": 48, "num_heads": 2, "init_values": 1.0}
TINY_DINOV2_YAML = """
model:
  init_args:
    backbone:
      init_args:
        pretrained: null
        image_size: 28
        model_kwargs: {depth: 2, embed_dim: 48, num_heads: 2, init_values: 1.0}
data:
  dataset:
    init_args:
      image_size: 32
"""

pytestmark = pytest.mark.usefixtures("one_thread", "offline_hubs")


class CountingBackbone(TimmBackbone):
    """The tiny DINOv2, counting the images it embeds (what a cache hit must not increase)."""

    def __init__(self) -> None:
        super().__init__(
            "vit_small_patch14_dinov2", pretrained=None, frozen=True, image_size=28, model_kwargs=TINY_DINOV2
        )
        self.images_seen = 0

    def forward(self, images):
        self.images_seen += len(images)
        return super().forward(images)


def datamodule(dataset, episodes=30, shot=1):
    return EpisodicDataModule(dataset, evaluation=EpisodeSpec(5, shot, 15), val_episodes=5, test_episodes=episodes)


def trainer():
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


def method(backbone=None, **kwargs):
    torch.manual_seed(0)
    return FrozenFeatures(backbone or CountingBackbone(), episode_classifier=NearestCentroid(), **kwargs)


def test_a_split_is_embedded_once_and_a_second_test_reads_the_cache(caltech_subset32):
    model, dm = method(), datamodule(caltech_subset32)
    first = trainer().test(model, dm, verbose=False)[0]
    test_images = len(dm.splits["test"].images)
    assert model.backbone.images_seen == test_images == model.images_embedded
    second = trainer().test(model, dm, verbose=False)[0]
    assert model.backbone.images_seen == test_images  # nothing recomputed
    assert second["test/acc"] == first["test/acc"]


def test_looked_up_features_equal_the_features_of_the_episode_images(caltech_subset32):
    model, dm = method(feature_batch_size=97), datamodule(caltech_subset32)
    run = trainer()
    run.test(model, dm, verbose=False)
    run.state.stage = RunningStage.TESTING  # as inside the test loop: the data module builds test episodes
    episode: Episode = dm.on_after_batch_transfer(next(iter(dm.test_dataloader())), 0)
    looked_up = model.features(episode.query_images, episode.query_indices)
    assert torch.allclose(looked_up, model.embed(episode.query_images), atol=1e-5)
    support = model.features(episode.support_images, episode.support_indices)
    assert torch.allclose(support, model.embed(episode.support_images), atol=1e-5)


def test_episodes_without_split_indices_embed_their_images(caltech_subset32):
    model = method()
    images = caltech_subset32.load_split("test").images[:6].float() / 255
    episode = Episode(images[:5], torch.arange(5), images[5:], torch.tensor([-1]), torch.arange(5))
    assert model.episode_logits(episode).shape == (1, 5)
    assert model.backbone.images_seen == 6


def test_features_on_disk_serve_a_new_model_with_the_same_weights(caltech_subset32, tmp_path):
    first = method(feature_cache_dir=str(tmp_path))
    accuracy = trainer().test(first, datamodule(caltech_subset32), verbose=False)[0]["test/acc"]
    assert len(list(tmp_path.glob("CountingBackbone-test-*.pt"))) == 1

    same = method(feature_cache_dir=str(tmp_path))
    same.load_state_dict(first.state_dict())
    assert trainer().test(same, datamodule(caltech_subset32), verbose=False)[0]["test/acc"] == accuracy
    assert same.backbone.images_seen == 0 and same.images_embedded == 0

    other = method(feature_cache_dir=str(tmp_path))
    with torch.no_grad():
        other.backbone.model.patch_embed.proj.weight.mul_(2)
    trainer().test(other, datamodule(caltech_subset32), verbose=False)
    assert other.backbone.images_seen > 0 and len(list(tmp_path.glob("*.pt"))) == 2


def test_frozen_dinov2_architecture_beats_chance_with_prototypes_and_logistic_regression(caltech_subset32):
    prototypes = trainer().test(method(), datamodule(caltech_subset32, episodes=100), verbose=False)[0]
    assert prototypes["test/acc"] - prototypes["test/acc_ci95"] > 0.2  # chance is 1/5
    logistic = FrozenFeatures(CountingBackbone(), episode_classifier=LogisticRegression())
    result = trainer().test(logistic, datamodule(caltech_subset32, episodes=8, shot=5), verbose=False)[0]
    assert 0.0 <= result["test/acc"] <= 1.0 and logistic.backbone.images_seen == logistic.images_embedded


def test_torchvision_and_timm_cnns_serve_as_frozen_backbones_too(caltech_subset32):
    from fsl_lightning.backbones import TorchvisionBackbone

    for backbone in (
        TorchvisionBackbone("resnet18", weights=None, frozen=True),
        TimmBackbone("resnet18", pretrained=None, frozen=True, image_size=32),
    ):
        model = FrozenFeatures(backbone, episode_classifier=NearestCentroid())
        dm = datamodule(caltech_subset32, episodes=5)
        result = trainer().test(model, dm, verbose=False)[0]
        assert 0.0 <= result["test/acc"] <= 1.0 and model.images_embedded == len(dm.splits["test"].images)


def test_a_timm_backbone_fine_tunes_through_transfer(caltech_subset32):
    from fsl_lightning.methods import Transfer

    torch.manual_seed(0)
    backbone = TimmBackbone(
        "vit_small_patch14_dinov2", pretrained=None, frozen=False, image_size=28, model_kwargs=TINY_DINOV2
    )
    before = backbone.model.blocks[0].attn.qkv.weight.detach().clone()
    model = Transfer(backbone, num_base_classes=64, optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    dm = EpisodicDataModule(
        caltech_subset32, pretrain_batch_size=16, evaluation=EpisodeSpec(5, 1, 15), val_episodes=2, test_episodes=2
    )
    L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    ).fit(model, dm)
    assert not torch.equal(before, backbone.model.blocks[0].attn.qkv.weight)


def test_fit_is_refused_with_what_to_run_instead(caltech_subset32):
    with pytest.raises(ValueError, match=r"nothing to train: run `test`.*Transfer"):
        L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False).fit(
            method(), datamodule(caltech_subset32)
        )
    with pytest.raises(ValueError, match="feature_batch_size"):
        method(feature_batch_size=0)


@pytest.mark.usefixtures("data_root")
def test_dinov2_config_runs_test_through_the_cli(tmp_path):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(TINY_DINOV2_YAML)
    cli = main(
        [
            "test",
            "--config",
            str(REPO / "experiments" / "caltech101" / "dinov2_5w5s.yaml"),
            "--config",
            str(tiny),
            "--data.test_episodes=6",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert "test/acc" in cli.trainer.callback_metrics
    assert cli.model.images_embedded == len(cli.datamodule.splits["test"].images)
