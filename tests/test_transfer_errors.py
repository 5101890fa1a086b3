"""Bad input to the natural-image data and the transfer family: each error says what is wrong and how to fix it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from fsl_lightning.backbones import Conv4, ResNet12
from fsl_lightning.data import Caltech101, DatasetNotFoundError, ImageFolderDataset
from fsl_lightning.data.datasets.natural import decode_classes, read_split_file, seeded_class_split
from fsl_lightning.data.sampler import ImageBatchStream
from fsl_lightning.methods import R2D2, RFSDistill, RFSSimple, Transfer
from fsl_lightning.methods.episode_classifiers import LogisticRegression


def _photo_folder(root: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (12, 10), (index * 40, 0, 0)).save(root / name / f"{index}.png")
    return root


def test_split_fractions_and_class_counts_are_checked():
    with pytest.raises(ValueError, match="three positive numbers"):
        seeded_class_split(["a", "b", "c"], 0, fractions=(1, 0, 1))
    with pytest.raises(ValueError, match="too few.*add classes or give a split_file"):
        seeded_class_split(["a", "b"], 0)


def test_a_split_file_without_the_three_splits_shows_the_expected_form(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["a"], "test": ["b"]}))
    with pytest.raises(ValueError, match=r'"train": \["cat"'):
        read_split_file(path)


def test_a_class_without_images_is_named():
    with pytest.raises(ValueError, match="'empty' has no images"):
        decode_classes(["full", "empty"], [[(b"", "x")], []], 8)


def test_image_size_out_of_range_is_refused():
    with pytest.raises(ValueError, match="between 8 and 512"):
        Caltech101(image_size=4, download=False)


def test_image_folder_split_naming_missing_classes_or_empty_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    folder = _photo_folder(tmp_path / "photos", {"a": 2, "b": 2, "c": 2, "d": 2})
    (folder / "e").mkdir()
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ["a", "zebra"], "val": ["b"], "test": ["c"]}))
    with pytest.raises(ValueError, match="zebra. Fix the names in the split file"):
        ImageFolderDataset(str(folder), split_file=str(split_file), image_size=8).load_split("train")
    split_file.write_text(json.dumps({"train": ["a", "e"], "val": ["b"], "test": ["c"]}))
    with pytest.raises(ValueError, match="without images.*: e. Add images"):
        ImageFolderDataset(str(folder), split_file=str(split_file), image_size=8).load_split("train")


def test_an_incomplete_caltech_copy_says_what_to_replace(tmp_path):
    _photo_folder(tmp_path / "caltech101" / "101_ObjectCategories", {"Faces": 2, "Leopards": 2})
    with pytest.raises(DatasetNotFoundError, match="holds 2 Caltech-101 classes.*incomplete: replace it"):
        Caltech101(root=str(tmp_path), image_size=8, download=False).load_split("test")


def test_a_corrupt_caltech_tarball_says_to_download_it_again(tmp_path):
    (tmp_path / "caltech101").mkdir()
    (tmp_path / "caltech101" / "101_ObjectCategories.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DatasetNotFoundError, match="not a readable tar.gz.*download it again"):
        Caltech101(root=str(tmp_path), image_size=8, download=False).load_split("test")


def test_pretraining_batch_larger_than_the_split_is_refused():
    with pytest.raises(ValueError, match="pretrain_batch_size must be between 1 and the 10 training images"):
        ImageBatchStream(torch.tensor([0, 4, 10]), 11, 0, 0, lambda: range(1))


def test_transfer_arguments_are_checked():
    with pytest.raises(ValueError, match="Unknown base_classifier 'svm'"):
        Transfer(ResNet12(channels=(4, 4, 4, 8)), num_base_classes=5, base_classifier="svm")
    with pytest.raises(ValueError, match="needs teacher_checkpoint"):
        RFSDistill(ResNet12(channels=(4, 4, 4, 8)), num_base_classes=5, teacher_checkpoint="")
    with pytest.raises(ValueError, match="initial_lambda must be positive"):
        R2D2(Conv4(in_channels=3), initial_lambda=0.0)
    with pytest.raises(ValueError, match="newton_steps must be at least 1"):
        LogisticRegression(newton_steps=0)


def test_a_teacher_of_another_architecture_is_refused_with_the_reason(tmp_path):
    teacher = RFSSimple(ResNet12(channels=(4, 4, 4, 8)), num_base_classes=5)
    checkpoint = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": teacher.state_dict()}, checkpoint)
    student = RFSDistill(ResNet12(channels=(4, 4, 4, 16)), num_base_classes=5, teacher_checkpoint=str(checkpoint))
    with pytest.raises(ValueError, match="does not fit this network.*same backbone and number of base classes"):
        student._load_teacher()


@pytest.mark.parametrize("method", ["episodic", "transfer"])
def test_training_batches_must_be_what_the_method_trains_on(tmp_path, monkeypatch, method):
    import lightning as L

    from fsl_lightning.data import EpisodicDataModule
    from fsl_lightning.episode import EpisodeSpec

    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    classes = {name: 4 for name in "abcdefghijkl"}
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": list("abcdef"), "val": list("ghi"), "test": list("jkl")}))
    dataset = ImageFolderDataset(
        str(_photo_folder(tmp_path / "photos", classes)), image_size=8, split_file=str(split_file)
    )
    spec = EpisodeSpec(way=2, shot=1, query=1)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if method == "episodic":  # an episodic method given plain mini-batches
        data = EpisodicDataModule(dataset, train=spec, evaluation=spec, pretrain_batch_size=4)
        model, message = R2D2(Conv4(in_channels=3)), "R2D2 trains on episodes.*Remove data.pretrain_batch_size"
    else:  # a transfer method given episodes
        data = EpisodicDataModule(dataset, train=spec, evaluation=spec)
        model, message = (
            RFSSimple(ResNet12(channels=(4, 4, 4, 8)), num_base_classes=6),
            "set `data.pretrain_batch_size`",
        )
    with pytest.raises(ValueError, match=message):
        trainer.fit(model, datamodule=data)
