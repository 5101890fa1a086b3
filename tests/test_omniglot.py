"""The Omniglot loader on the real archives: both protocols, rotations, caching, and its error messages."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch
from PIL import Image

from fsl_lightning.data import DatasetNotFoundError, Omniglot
from fsl_lightning.data.datasets import omniglot as omniglot_module
from fsl_lightning.data.images import CorruptImageError


@pytest.mark.parametrize("split, characters", [("train", 1028), ("val", 172), ("test", 423)])
def test_vinyals_split_has_four_rotations_of_each_character(omniglot, split, characters):
    classes = omniglot.load_split(split)
    assert classes.num_classes == 4 * characters
    assert classes.images.shape == (4 * characters * 20, 1, 28, 28)
    assert torch.equal(classes.images_per_class, torch.full((4 * characters,), 20))
    assert classes.images.dtype == torch.uint8


def test_vinyals_splits_are_disjoint(omniglot):
    names = [set(omniglot.load_split(s).class_names) for s in ("train", "val", "test")]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])


def test_rotated_class_is_the_rotated_character(vinyals_test_split):
    classes = vinyals_test_split
    index = {name: i for i, name in enumerate(classes.class_names)}
    character = classes.class_names[0].rpartition("/")[0]
    upright = _class_images(classes, index[f"{character}/rot000"])
    quarter = _class_images(classes, index[f"{character}/rot090"])
    assert torch.equal(quarter, torch.rot90(upright, 1, dims=(-2, -1)))
    assert not torch.equal(quarter, upright)


def test_ink_is_bright_on_dark_background(vinyals_test_split):
    # Strokes are a minority of pixels; after inversion they are the bright ones.
    mean = vinyals_test_split.images.float().mean() / 255
    assert 0.03 < mean < 0.3


def _alphabets(classes) -> set[str]:
    return {name.split("/")[0] for name in classes.class_names}


def test_lake_protocol_validates_on_background_alphabets_and_tests_on_the_evaluation_ones(data_root):
    """No checkpoint selection on test classes: val is held-out background alphabets, disjoint from train and test."""
    dataset = Omniglot(protocol="lake", image_size=32, download=False)
    train, val, test = (dataset.load_split(split) for split in ("train", "val", "test"))
    background = set(dataset._characters("images_background")[0])
    evaluation = set(dataset._characters("images_evaluation")[0])
    assert set(test.class_names) == evaluation and test.num_classes == 659 and len(_alphabets(test)) == 20
    assert set(val.class_names) <= background and set(train.class_names) <= background
    assert set(train.class_names) | set(val.class_names) == background
    assert _alphabets(val) == set(omniglot_module.LAKE_VALIDATION_ALPHABETS) and len(_alphabets(val)) == 8
    assert (train.num_classes, val.num_classes) == (723, 241) and len(_alphabets(train)) == 22
    assert _alphabets(train).isdisjoint(_alphabets(val)) and _alphabets(val).isdisjoint(_alphabets(test))
    assert train.images.shape[1:] == (1, 32, 32)
    # each class keeps its own 20 images
    names, images = dataset._characters("images_background")
    index = val.class_names.index("Latin/character01")
    assert torch.equal(
        val.images[val.class_offsets[index] : val.class_offsets[index + 1]], images[names.index("Latin/character01")]
    )


def test_lake_validation_has_alphabets_for_20_way_trials_within_one_alphabet(data_root):
    from fsl_lightning.data import EpisodicDataModule
    from fsl_lightning.episode import EpisodeSpec

    datamodule = EpisodicDataModule(
        Omniglot(protocol="lake", image_size=32, download=False),
        evaluation=EpisodeSpec(20, 1, 1),
        evaluation_within_group=True,
    )
    datamodule.setup("fit")  # raises if no validation alphabet had 20 characters
    assert datamodule.splits["val"].num_classes == 241


def test_decoded_images_are_cached(omniglot, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(omniglot_module, "_decode_characters", fail)
    assert omniglot.load_split("val").num_classes == 688


def test_missing_dataset_says_which_files_to_put_where(tmp_path):
    dataset = Omniglot(root=str(tmp_path), download=False)
    with pytest.raises(DatasetNotFoundError) as error:
        dataset.prepare()
    message = str(error.value)
    assert str(tmp_path / "omniglot" / "images_background.zip") in message
    assert "FSL_DATA_ROOT" in message


def test_failed_download_is_reported_with_the_expected_location(tmp_path, monkeypatch):
    def offline(url, target, md5, timeout_s=60.0):
        raise OSError("network is unreachable")

    monkeypatch.setattr("fsl_lightning.data.datasets.archives.download_file", offline)
    with pytest.raises(DatasetNotFoundError, match="network is unreachable") as error:
        Omniglot(root=str(tmp_path), download=True).prepare()
    assert "images_background.zip" in str(error.value)


def test_archive_with_wrong_structure_is_rejected(tmp_path):
    folder = tmp_path / "omniglot"
    folder.mkdir()
    _write_zip(folder / "images_background.zip", characters=3, images_per_character=20)
    with pytest.raises(
        DatasetNotFoundError, match="holds 3 character folders, but Omniglot's images_background has 964"
    ):
        Omniglot(root=str(tmp_path), download=False, image_size=28).load_split("train")


def test_corrupt_image_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(omniglot_module.PARTS, "images_background", 2)
    folder = tmp_path / "omniglot"
    folder.mkdir()
    _write_zip(folder / "images_background.zip", characters=2, images_per_character=20, corrupt="0002_07.png")
    with pytest.raises(
        CorruptImageError, match=r"images_background\.zip:images_background/Alpha/character02/0002_07\.png"
    ):
        Omniglot(root=str(tmp_path), protocol="lake", download=False).load_split("train")


def _class_images(classes, index):
    return classes.images[classes.class_offsets[index] : classes.class_offsets[index + 1]]


def _write_zip(path, characters, images_per_character, corrupt=None):
    with zipfile.ZipFile(path, "w") as archive:
        for character in range(1, characters + 1):
            for drawer in range(1, images_per_character + 1):
                name = f"{character:04d}_{drawer:02d}.png"
                buffer = io.BytesIO()
                Image.new("1", (105, 105), 1).save(buffer, format="PNG")
                data = b"not a png" if name == corrupt else buffer.getvalue()
                archive.writestr(f"images_background/Alpha/character{character:02d}/{name}", data)
