"""A user's image folder (real Omniglot characters copied into tmp_path): the decoded cache never serves stale
images, and the seeded class split never moves a class and never contradicts its split file."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import pytest
import torch

from fsl_lightning.data import ImageFolderDataset
from fsl_lightning.data.datasets.natural import read_split_file

DRAWERS = 4  # images per class: enough to see a change, few to decode


@pytest.fixture(scope="module")
def character_pngs(data_root) -> dict[str, list[bytes]]:
    """The first drawers of 40 real Omniglot characters, by class name ``Alphabet-characterNN``."""
    characters: dict[str, list[bytes]] = {}
    with zipfile.ZipFile(data_root / "omniglot" / "images_background.zip") as archive:
        for member in sorted(n for n in archive.namelist() if n.endswith(".png")):
            _, alphabet, character, _ = member.split("/")
            images = characters.setdefault(f"{alphabet}-{character}", [])
            if len(images) < DRAWERS:
                images.append(archive.read(member))
            if len(characters) > 40:
                break
    return dict(list(characters.items())[:40])


def add_classes(folder: Path, character_pngs: dict[str, list[bytes]], names: list[str]) -> None:
    for name in names:
        (folder / name).mkdir(parents=True)
        for index, png in enumerate(character_pngs[name]):
            (folder / name / f"{index:02d}.png").write_bytes(png)


@pytest.fixture
def user_folder(tmp_path, monkeypatch, character_pngs) -> Path:
    """24 of the characters as a user's folder, with a cache of its own."""
    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "my_images"
    add_classes(folder, character_pngs, list(character_pngs)[:24])
    return folder


def places(split: dict[str, list[str]]) -> dict[str, str]:
    return {name: part for part, names in split.items() for name in names}


def class_images(classes, name: str) -> torch.Tensor:
    c = classes.class_names.index(name)
    return classes.images[classes.class_offsets[c] : classes.class_offsets[c + 1]]


def test_an_image_overwritten_in_place_is_decoded_anew(user_folder):
    before = ImageFolderDataset(str(user_folder), image_size=16).load_split("train")
    name, other = before.class_names[0], before.class_names[1]
    target = user_folder / name / "00.png"
    target.write_bytes((user_folder / other / "00.png").read_bytes())  # same file, new pixels; folders untouched
    dataset = ImageFolderDataset(str(user_folder), image_size=16)
    after = dataset.load_split("train")
    assert torch.equal(class_images(after, name)[0], dataset.decode_image(target, str(target)))
    assert not torch.equal(class_images(after, name)[0], class_images(before, name)[0])


def test_a_removed_image_is_noticed(user_folder):
    before = ImageFolderDataset(str(user_folder), image_size=16).load_split("test")
    name = before.class_names[0]
    (user_folder / name / "03.png").unlink()
    after = ImageFolderDataset(str(user_folder), image_size=16).load_split("test")
    assert len(class_images(after, name)) == DRAWERS - 1
    assert len(after.images) == len(before.images) - 1


def test_added_classes_move_no_class_and_the_split_file_is_updated(user_folder, character_pngs, caplog):
    first = ImageFolderDataset(str(user_folder), image_size=16).class_split()
    added = list(character_pngs)[24:40]
    add_classes(user_folder, character_pngs, added)
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolderDataset(str(user_folder), image_size=16)
        second = dataset.class_split()
    assert {name: places(second)[name] for name in places(first)} == places(first)
    assert sorted(places(second)) == sorted(list(character_pngs)[:40])
    assert read_split_file(user_folder / "fsl_split_seed0.json") == second
    assert f"added {added[0]} to {places(second)[added[0]]}" in caplog.text and "no other class moved" in caplog.text
    assert dataset.load_split("test").class_names == second["test"]


def test_a_removed_class_folder_is_dropped_from_the_split_file_and_nothing_else_moves(user_folder, caplog):
    first = ImageFolderDataset(str(user_folder), image_size=16).class_split()
    gone = first["train"][0]
    for image in (user_folder / gone).iterdir():
        image.unlink()
    (user_folder / gone).rmdir()
    with caplog.at_level(logging.WARNING):
        second = ImageFolderDataset(str(user_folder), image_size=16).class_split()
    assert places(second) == {name: part for name, part in places(first).items() if name != gone}
    assert read_split_file(user_folder / "fsl_split_seed0.json") == second
    assert f"dropped {gone}" in caplog.text


def test_an_existing_split_file_is_the_source_of_truth(user_folder, character_pngs):
    # a split written by hand (or by the older shuffle-and-cut rule): its classes stay where the file puts them
    names = sorted(list(character_pngs)[:24])
    by_hand = {"train": names[:16], "val": names[16:20], "test": names[20:]}
    (user_folder / "fsl_split_seed0.json").write_text(json.dumps(by_hand))
    add_classes(user_folder, character_pngs, list(character_pngs)[24:26])
    split = ImageFolderDataset(str(user_folder), image_size=16).class_split()
    assert {name: places(split)[name] for name in names} == places(by_hand)
    assert read_split_file(user_folder / "fsl_split_seed0.json") == split and len(places(split)) == 26


def test_a_hand_edited_split_file_with_a_class_in_two_splits_is_refused(user_folder):
    split = ImageFolderDataset(str(user_folder), image_size=16).class_split()
    leaked = split["test"][0]
    path = user_folder / "fsl_split_seed0.json"
    path.write_text(json.dumps({**split, "train": split["train"] + [leaked]}))
    with pytest.raises(ValueError, match=f"lists class {leaked} in both train and test"):
        ImageFolderDataset(str(user_folder), image_size=16).class_split()
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not a JSON class split.*delete it"):
        ImageFolderDataset(str(user_folder), image_size=16).class_split()


def test_changed_split_fractions_do_not_silently_override_the_split_file(user_folder):
    ImageFolderDataset(str(user_folder), image_size=16).class_split()
    with pytest.raises(ValueError, match=r"made with split_fractions \[0.64, 0.16, 0.2\].*delete the file"):
        ImageFolderDataset(str(user_folder), image_size=16, split_fractions=(0.5, 0.25, 0.25)).class_split()
    # the same proportions written otherwise are the same split
    ImageFolderDataset(str(user_folder), image_size=16, split_fractions=(64, 16, 20)).class_split()


def test_a_folder_too_small_for_the_split_names_split_fractions(tmp_path, monkeypatch, character_pngs):
    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    add_classes(tmp_path / "two", character_pngs, list(character_pngs)[:2])
    with pytest.raises(ValueError, match=r"2 class folders, too few for split_fractions \[0.64, 0.16, 0.2\]"):
        ImageFolderDataset(str(tmp_path / "two"), image_size=16).load_split("train")
    assert not (tmp_path / "two" / "fsl_split_seed0.json").exists()


def test_the_first_split_of_every_omniglot_character_has_the_sizes_asked_and_added_classes_follow_it(data_root):
    from fsl_lightning.data.datasets.folder_split import class_place, first_class_split

    names = []
    for part in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(data_root / "omniglot" / f"{part}.zip") as archive:
            names += sorted({"/".join(n.split("/")[1:3]) for n in archive.namelist() if n.endswith(".png")})
    assert len(names) == 1623
    fractions = (0.64, 0.16, 0.2)
    full = first_class_split(names, 0, fractions)
    assert [len(full[part]) for part in ("train", "val", "test")] == [1038, 260, 325]  # 1623 x (0.16, 0.2), rounded
    small = first_class_split(names[:32], 0, fractions)
    assert [len(small[part]) for part in ("train", "val", "test")] == [21, 5, 6]
    # the thresholds that place added classes agree with the first cut for all but the classes next to a cut
    agree = sum(class_place(name, 0, fractions) == part for part, members in full.items() for name in members)
    assert agree >= 0.95 * len(names)
    assert places(first_class_split(names, 1, fractions)) != places(full)
