"""The two-stage transfer family on real Caltech-101: pre-training batches, then episodes on frozen features."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from fsl_lightning.backbones import Conv4
from fsl_lightning.cli import main
from fsl_lightning.data import Caltech101, EpisodicDataModule
from fsl_lightning.data.augment import BatchAugmentation
from fsl_lightning.episode import EpisodeSpec, LabelledBatch
from fsl_lightning.methods import SKD, RFSDistill, RFSSimple
from fsl_lightning.methods.skd import rotated_copies

REPO = Path(__file__).resolve().parents[1]
FEATURES_32PX = 64 * 2 * 2  # Conv4 on 32x32 images


@pytest.fixture(scope="module")
def caltech32(data_root):
    dataset = Caltech101(image_size=32, download=False)
    dataset.prepare()
    return dataset


def datamodule(dataset, pretrain_batch_size=64, **kwargs):
    settings = dict(evaluation=EpisodeSpec(5, 1, 15), train_episodes_per_epoch=50, val_episodes=10, test_episodes=150)
    return EpisodicDataModule(dataset, pretrain_batch_size=pretrain_batch_size, **{**settings, **kwargs})


def trainer(steps, **kwargs):
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **{"enable_checkpointing": False, **kwargs},
    )


def test_pretraining_batches_carry_the_class_of_each_image(caltech32):
    dm = datamodule(caltech32, pretrain_batch_size=32, seed=5)
    dm.setup("fit")
    indices, labels = next(iter(dm.train_dataloader()))
    offsets = dm.splits["train"].class_offsets
    assert len(set(indices.tolist())) == 32
    assert all(offsets[c] <= i < offsets[c + 1] for i, c in zip(indices.tolist(), labels.tolist()))
    same_seed = datamodule(caltech32, pretrain_batch_size=32, seed=5)
    same_seed.setup("fit")
    again, _ = next(iter(same_seed.train_dataloader()))
    assert torch.equal(indices, again)


def test_augmented_pretraining_batch_reaches_the_method_as_labelled_images(caltech32):
    dm = datamodule(caltech32, pretrain_batch_size=8, augmentation=BatchAugmentation())
    dm.setup("fit")
    dm.trainer = trainer(1)
    dm.trainer.state.stage = "train"
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert isinstance(batch, LabelledBatch)
    assert batch.images.shape == (8, 3, 32, 32) and batch.images.dtype == torch.float32
    assert 0.0 <= float(batch.images.min()) and float(batch.images.max()) <= 1.0


def test_rfs_pretraining_then_episodes_beats_chance_on_caltech(caltech32):
    torch.manual_seed(0)
    model = RFSSimple(Conv4(in_channels=3), num_base_classes=64, feature_dim=FEATURES_32PX)
    dm = datamodule(caltech32)
    trainer(150).fit(model, dm)
    trainer(1).test(model, dm, verbose=False)
    summary = model.last_accuracy["test"]
    assert summary.episodes == 150
    assert float(summary.mean - summary.ci95) > 0.2  # chance is 1/5


def test_transfer_methods_refuse_episodic_training_data(caltech32):
    model = RFSSimple(Conv4(in_channels=3), num_base_classes=64, feature_dim=FEATURES_32PX)
    with pytest.raises(ValueError, match="pretrain_batch_size"):
        trainer(1).fit(model, datamodule(caltech32, pretrain_batch_size=None, train=EpisodeSpec(5, 1, 5)))


def test_wrong_number_of_base_classes_says_the_right_one(caltech32):
    model = RFSSimple(Conv4(in_channels=3), num_base_classes=60, feature_dim=FEATURES_32PX)
    with pytest.raises(ValueError, match="num_base_classes: 64"):
        trainer(1).fit(model, datamodule(caltech32))


@pytest.mark.parametrize("method", [RFSSimple, SKD])
def test_head_sizes_are_counted_from_the_data_and_a_checkpoint_loads_alone(caltech32, tmp_path, method):
    """Neither ``num_base_classes`` nor ``feature_dim`` is needed: fit counts the training classes and measures
    Conv4's output (it has no ``out_features``), and testing a checkpoint with a model made without them works."""
    model = method(Conv4(in_channels=3))
    run = trainer(2, enable_checkpointing=True, default_root_dir=tmp_path)
    run.fit(model, datamodule(caltech32))
    assert (model.num_base_classes, model.feature_dim) == (64, FEATURES_32PX)
    assert model.base_head.weight.shape == (64, FEATURES_32PX)
    checkpoint = run.checkpoint_callback.last_model_path or run.checkpoint_callback.best_model_path
    trainer(1).test(model, datamodule(caltech32), verbose=False)
    expected = model.last_accuracy["test"].mean
    from_checkpoint = method(Conv4(in_channels=3))  # as ``test --config ... --ckpt_path`` builds it
    trainer(1).test(from_checkpoint, datamodule(caltech32), ckpt_path=checkpoint, verbose=False)
    assert from_checkpoint.last_accuracy["test"].mean == expected
    loaded = method.load_from_checkpoint(checkpoint, backbone=Conv4(in_channels=3))
    assert (loaded.num_base_classes, loaded.feature_dim) == (64, FEATURES_32PX)


def test_born_again_student_distils_from_a_frozen_teacher_checkpoint(caltech32, tmp_path):
    teacher = RFSSimple(Conv4(in_channels=3), num_base_classes=64, feature_dim=FEATURES_32PX)
    run = trainer(3, enable_checkpointing=True, default_root_dir=tmp_path)
    run.fit(teacher, datamodule(caltech32))
    checkpoint = tmp_path / "teacher.ckpt"
    run.save_checkpoint(checkpoint)

    student = RFSDistill(
        Conv4(in_channels=3), num_base_classes=64, feature_dim=FEATURES_32PX, teacher_checkpoint=str(checkpoint)
    )
    trainer(2).fit(student, datamodule(caltech32))
    (frozen,) = student._teacher
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    assert torch.equal(frozen[0].encoder[0][0].weight, teacher.backbone.encoder[0][0].weight)
    assert not any(key.startswith("_teacher") for key in student.state_dict())


def test_distillation_loss_is_zero_for_equal_logits_and_matches_the_kl_formula():
    model = RFSSimple(Conv4(in_channels=3), num_base_classes=4, feature_dim=FEATURES_32PX, temperature=2.0)
    student, teacher = torch.randn(3, 4), torch.randn(3, 4)
    assert float(model.distillation_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)
    p = (teacher / 2).softmax(-1)
    expected = (p * (p.log() - (student / 2).log_softmax(-1))).sum(-1).mean() * 4
    assert float(model.distillation_loss(student, teacher)) == pytest.approx(float(expected), rel=1e-5)


def test_a_missing_teacher_checkpoint_is_named(caltech32, tmp_path):
    student = RFSDistill(
        Conv4(in_channels=3),
        num_base_classes=64,
        feature_dim=FEATURES_32PX,
        teacher_checkpoint=str(tmp_path / "none.ckpt"),
    )
    with pytest.raises(FileNotFoundError, match="none.ckpt"):
        trainer(1).fit(student, datamodule(caltech32))


def test_skd_learns_rotations_alongside_the_classes(caltech32):
    torch.manual_seed(0)
    model = SKD(Conv4(in_channels=3), num_base_classes=64, feature_dim=FEATURES_32PX)
    dm = datamodule(caltech32, pretrain_batch_size=32)
    dm.setup("fit")
    images = dm.splits["train"].images[:32].float() / 255
    copies, rotation_labels = rotated_copies(images)
    assert torch.equal(copies[32:64], torch.rot90(images, 1, dims=(-2, -1)))

    def rotation_loss():
        with torch.no_grad():
            logits = model.rotation_head(model.base_head(model.backbone(copies)))
        return float(torch.nn.functional.cross_entropy(logits, rotation_labels))

    before = rotation_loss()
    trainer(60).fit(model, dm)
    model.eval()
    assert rotation_loss() < before


@pytest.mark.usefixtures("data_root")
@pytest.mark.parametrize("config", ["rfs_simple_5w1s", "baseline_pp_5w5s", "r2d2_5w1s"])
def test_caltech_configs_run_through_the_cli(config, tmp_path):
    cli = main(
        [
            "fit",
            "--config",
            str(REPO / "experiments" / "caltech101" / f"{config}.yaml"),
            "--data.dataset.init_args.image_size=32",
            "--model.init_args.backbone.init_args.channels=[8,16,32,64]",
            "--trainer.max_steps=6",
            "--data.train_episodes_per_epoch=6",
            "--data.val_episodes=4",
            "--data.test_episodes=20",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert "test/acc" in cli.trainer.callback_metrics
    assert (Path(cli.trainer.log_dir) / "config.yaml").exists()
