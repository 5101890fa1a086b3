"""The standard natural-image loaders (miniImageNet, tieredImageNet, CIFAR-FS, FC100, CUB-200-2011) on small copies
built here in each dataset's official layout: tiny real JPEG / PNG files, real pickles, every class of every split."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsl_lightning.data import CIFARFS, CUB200, FC100, DatasetNotFoundError, MiniImageNet, TieredImageNet
from fsl_lightning.data.datasets import cifar as cifar_module
from fsl_lightning.data.datasets.cub import chen_split

SIZE = 20  # decoded side used by most tests: small keeps them fast
RED, GREEN = (200, 30, 60), (20, 180, 40)
GREY_LEVEL = 77


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    # Each test decodes into its own cache, so that no result leaks from one test into another.
    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))


# --- helpers -------------------------------------------------------------------------------------------------------


def encode(colour=RED, fmt="JPEG", mode="RGB", size=(10, 12)) -> bytes:
    """A solid image, encoded; ``mode="L"`` gives a grayscale one of level GREY_LEVEL."""
    buffer = io.BytesIO()
    Image.new(mode, size, GREY_LEVEL if mode == "L" else colour).save(buffer, format=fmt)
    return buffer.getvalue()


def class_images(classes, name):
    index = classes.class_names.index(name)
    return classes.images[classes.class_offsets[index] : classes.class_offsets[index + 1]]


def assert_solid(images, colour, tolerance=3):
    """Every pixel of every image is ``colour`` (JPEG may move a solid colour by a level or two)."""
    expected = torch.tensor(colour, dtype=torch.int16).view(1, 3, 1, 1)
    assert (images.to(torch.int16) - expected).abs().max() <= tolerance


def assert_split(classes, num_classes, num_images, size=SIZE):
    assert classes.num_classes == num_classes
    assert classes.images.shape == (num_images, 3, size, size)
    assert classes.images.dtype == torch.uint8


# --- miniImageNet --------------------------------------------------------------------------------------------------

MINI_COUNTS = {"train": 64, "val": 16, "test": 20}


def mini_classes(counts=MINI_COUNTS) -> dict[str, list[str]]:
    """WordNet-like ids, numbered across the splits so that none is in two."""
    first = {"train": 0, "val": 100, "test": 200}
    return {split: [f"n{first[split] + i:08d}" for i in range(count)] for split, count in counts.items()}


def mini_image(split, class_index, image_index) -> bytes:
    if split == "val" and class_index == 0 and image_index == 1:
        return encode(mode="L")
    return encode(RED if class_index == 0 else GREEN)


def write_mini_csv_layout(root: Path, counts=MINI_COUNTS) -> Path:
    folder = root / "miniimagenet"
    (folder / "images").mkdir(parents=True)
    for split, wnids in mini_classes(counts).items():
        rows = ["filename,label"]
        for c, wnid in enumerate(wnids):
            for i in range(2):
                name = f"{wnid}{i + 1:08d}.jpg"
                (folder / "images" / name).write_bytes(mini_image(split, c, i))
                rows.append(f"{name},{wnid}")
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


def write_mini_folder_layout(root: Path) -> Path:
    folder = root / "miniimagenet"
    for split, wnids in mini_classes().items():
        for c, wnid in enumerate(wnids):
            (folder / split / wnid).mkdir(parents=True)
            for i in range(2):
                (folder / split / wnid / f"{wnid}_{i}.jpg").write_bytes(mini_image(split, c, i))
    return folder


@pytest.mark.parametrize("write_layout", [write_mini_csv_layout, write_mini_folder_layout], ids=["csv", "folders"])
def test_miniimagenet_reads_the_ravi_larochelle_split(tmp_path, write_layout):
    write_layout(tmp_path)
    dataset = MiniImageNet(image_size=SIZE, root=str(tmp_path))
    splits = {split: dataset.load_split(split) for split in MINI_COUNTS}
    for split, count in MINI_COUNTS.items():
        assert_split(splits[split], count, 2 * count)
        assert splits[split].class_names == mini_classes()[split]
    assert_solid(class_images(splits["train"], "n00000000"), RED)
    assert_solid(class_images(splits["test"], "n00000201"), GREEN)
    grey = class_images(splits["val"], "n00000100")[1]
    assert_solid(grey.unsqueeze(0), (GREY_LEVEL,) * 3)


def test_miniimagenet_default_size_is_84(tmp_path):
    write_mini_csv_layout(tmp_path)
    assert_split(MiniImageNet(root=str(tmp_path)).load_split("val"), 16, 32, size=84)


def test_miniimagenet_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    write_mini_csv_layout(tmp_path)
    first = MiniImageNet(image_size=SIZE, root=str(tmp_path)).load_split("val")

    def fail(self, split):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(MiniImageNet, "decode_split", fail)
    assert torch.equal(MiniImageNet(image_size=SIZE, root=str(tmp_path)).load_split("val").images, first.images)


def test_miniimagenet_missing_says_how_to_obtain_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        MiniImageNet(root=str(tmp_path)).prepare()
    message = str(error.value)
    assert str(tmp_path / "miniimagenet") in message
    assert "train.csv" in message and "image-net.org" in message and "FSL_DATA_ROOT" in message


def test_miniimagenet_with_another_split_is_rejected(tmp_path):
    write_mini_csv_layout(tmp_path, counts={"train": 63, "val": 16, "test": 20})
    with pytest.raises(DatasetNotFoundError, match="train has 63 classes instead of 64"):
        MiniImageNet(image_size=SIZE, root=str(tmp_path)).load_split("test")


def test_miniimagenet_names_a_missing_image(tmp_path):
    folder = write_mini_csv_layout(tmp_path)
    (folder / "images" / "n0000020000000002.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"test\.csv are not in .*n0000020000000002\.jpg"):
        MiniImageNet(image_size=SIZE, root=str(tmp_path)).load_split("test")


# --- tieredImageNet ------------------------------------------------------------------------------------------------

TIERED_COUNTS = {"train": 351, "val": 97, "test": 160}


def tiered_classes(counts=TIERED_COUNTS) -> dict[str, list[str]]:
    first = {"train": 0, "val": 1000, "test": 2000}
    return {split: [f"n{first[split] + i:08d}" for i in range(count)] for split, count in counts.items()}


def tiered_image(class_index, image_index) -> bytes:
    if class_index == 1:
        return encode(fmt="PNG", mode="L")
    return encode(RED if class_index == 0 else GREEN, fmt="PNG")


def write_tiered_folders(root: Path, counts=TIERED_COUNTS) -> None:
    for split, names in tiered_classes(counts).items():
        for c, name in enumerate(names):
            (root / "tieredimagenet" / split / name).mkdir(parents=True)
            (root / "tieredimagenet" / split / name / "0.png").write_bytes(tiered_image(c, 0))


def write_tiered_pickles(root: Path) -> dict[str, list[str]]:
    """Ren et al.'s format; train repeats a readable name ("crane") as ImageNet does, val uses bytes keys."""
    folder = root / "tieredimagenet"
    folder.mkdir(parents=True)
    names = tiered_classes()
    names["train"][2] = names["train"][3] = "crane"
    for split, split_names in names.items():
        # Two images per class, interleaved by class as the originals are not: grouping must follow the labels.
        labels = np.array([c for _ in range(2) for c in range(len(split_names))], dtype=np.int32)
        images = [np.frombuffer(tiered_image(c, 0), dtype=np.uint8) for c in labels]
        entries = {"label_specific": labels, "label_specific_str": split_names, "label_general": labels * 0}
        if split == "val":
            entries = {key.encode(): value for key, value in entries.items()}
            entries[b"label_specific_str"] = [name.encode() for name in split_names]
        (folder / f"{split}_images_png.pkl").write_bytes(pickle.dumps(images))
        (folder / f"{split}_labels.pkl").write_bytes(pickle.dumps(entries))
    return names


def test_tieredimagenet_reads_the_folder_layout(tmp_path):
    write_tiered_folders(tmp_path)
    dataset = TieredImageNet(image_size=SIZE, root=str(tmp_path))
    for split, count in TIERED_COUNTS.items():
        classes = dataset.load_split(split)
        assert_split(classes, count, count)
        assert classes.class_names == tiered_classes()[split]
    test = dataset.load_split("test")
    assert_solid(class_images(test, "n00002000"), RED, tolerance=0)
    assert_solid(class_images(test, "n00002001"), (GREY_LEVEL,) * 3, tolerance=0)


def test_tieredimagenet_reads_ren_et_al_pickles(tmp_path):
    names = write_tiered_pickles(tmp_path)
    dataset = TieredImageNet(image_size=SIZE, root=str(tmp_path))
    train, val = dataset.load_split("train"), dataset.load_split("val")
    assert_split(train, 351, 702)
    assert_split(val, 97, 194)
    assert train.class_names[:4] == ["n00000000", "n00000001", "crane", "crane #2"]
    assert val.class_names == names["val"]
    assert torch.equal(train.images_per_class, torch.full((351,), 2))
    assert_solid(class_images(val, "n00001000"), RED, tolerance=0)
    assert_solid(class_images(train, "n00000001"), (GREY_LEVEL,) * 3, tolerance=0)
    assert_solid(class_images(train, "crane #2"), GREEN, tolerance=0)
    assert dataset.load_split("test").num_classes == 160


def test_tieredimagenet_with_another_split_is_rejected(tmp_path):
    write_tiered_folders(tmp_path, counts={"train": 351, "val": 96, "test": 160})
    with pytest.raises(DatasetNotFoundError, match="val has 96 classes instead of 97"):
        TieredImageNet(image_size=SIZE, root=str(tmp_path)).load_split("train")


def test_tieredimagenet_missing_names_both_layouts(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        TieredImageNet(root=str(tmp_path)).load_split("train")
    message = str(error.value)
    assert str(tmp_path / "tieredimagenet" / "train") in message
    assert "train_images_png.pkl" in message and "image-net.org" in message


# --- CIFAR-FS and FC100 --------------------------------------------------------------------------------------------

CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
FINE_NAMES = sorted(name for names in CIFAR100_SUPERCLASSES.values() for name in names)
COARSE_NAMES = sorted(CIFAR100_SUPERCLASSES)
SUPERCLASS_OF = {name: superclass for superclass, names in CIFAR100_SUPERCLASSES.items() for name in names}
CIFAR_TRAIN_PER_CLASS, CIFAR_TEST_PER_CLASS = 2, 1


def cifar_part(image_numbers: range, skip_class: str | None = None) -> dict:
    """A CIFAR-100 pickle whose image j of class c has red level c, green level j, blue level 255 - c.

    Images are ordered by number, then class (classes interleaved, as in the real files).
    """
    images, fine, coarse = [], [], []
    for j in image_numbers:
        for c, name in enumerate(FINE_NAMES):
            if name == skip_class:
                continue
            pixel = np.array([c, j, 255 - c], dtype=np.uint8).reshape(3, 1, 1)
            images.append(np.broadcast_to(pixel, (3, 32, 32)).reshape(-1))
            fine.append(c)
            coarse.append(COARSE_NAMES.index(SUPERCLASS_OF[name]))
    return {"batch_label": "tiny", "data": np.stack(images), "fine_labels": fine, "coarse_labels": coarse}


def write_cifar(root: Path, archive: bool = True, skip_class: str | None = None) -> Path:
    parts = {
        "train": cifar_part(range(CIFAR_TRAIN_PER_CLASS), skip_class),
        "test": cifar_part(range(CIFAR_TRAIN_PER_CLASS, CIFAR_TRAIN_PER_CLASS + CIFAR_TEST_PER_CLASS), skip_class),
        "meta": {"fine_label_names": FINE_NAMES, "coarse_label_names": COARSE_NAMES},
    }
    folder = root / "cifar100"
    (folder / "cifar-100-python").mkdir(parents=True)
    for name, content in parts.items():
        (folder / "cifar-100-python" / name).write_bytes(pickle.dumps(content, protocol=2))
    if not archive:
        return folder / "cifar-100-python"
    with tarfile.open(folder / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(folder / "cifar-100-python", arcname="cifar-100-python")
    for name in parts:
        (folder / "cifar-100-python" / name).unlink()
    (folder / "cifar-100-python").rmdir()
    return folder / "cifar-100-python.tar.gz"


def repository_split(name):
    with resources.as_file(resources.files("fsl_lightning.data.splits") / name) as path:
        return json.loads(path.read_text())


def test_repository_splits_are_the_published_ones():
    cifar_fs = repository_split("cifar_fs.json")
    assert [len(cifar_fs[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert sorted(cifar_fs["train"] + cifar_fs["val"] + cifar_fs["test"]) == FINE_NAMES
    assert {"whale", "poppy", "rose", "baby", "man", "woman", "worm", "rocket"} <= set(cifar_fs["test"])
    assert {"beaver", "otter", "crab", "tractor", "maple_tree"} <= set(cifar_fs["val"])
    fc100 = repository_split("fc100.json")
    assert [len(fc100[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    assert sorted(fc100["train"] + fc100["val"] + fc100["test"]) == COARSE_NAMES
    assert set(fc100["test"]) == {"aquatic_mammals", "insects", "medium_mammals", "people"}
    assert set(fc100["val"]) == {
        "large_carnivores",
        "large_omnivores_and_herbivores",
        "non-insect_invertebrates",
        "small_mammals",
    }


def test_cifar_fs_from_the_official_archive(tmp_path):
    write_cifar(tmp_path, archive=True)
    dataset = CIFARFS(root=str(tmp_path), download=False)
    per_class = CIFAR_TRAIN_PER_CLASS + CIFAR_TEST_PER_CLASS
    expected = repository_split("cifar_fs.json")
    for split, count in {"train": 64, "val": 16, "test": 20}.items():
        classes = dataset.load_split(split)
        assert_split(classes, count, count * per_class, size=32)
        assert classes.class_names == expected[split]
    whale = class_images(dataset.load_split("test"), "whale")
    c = FINE_NAMES.index("whale")
    # Train images first, then test images, each decoded to its own solid colour.
    for j in range(per_class):
        assert_solid(whale[j : j + 1], (c, j, 255 - c), tolerance=0)


def test_fc100_from_the_extracted_folder_splits_by_superclass(tmp_path):
    write_cifar(tmp_path, archive=False)
    dataset = FC100(image_size=40, root=str(tmp_path), download=False)
    superclasses = repository_split("fc100.json")
    for split, count in {"train": 60, "val": 20, "test": 20}.items():
        classes = dataset.load_split(split)
        assert_split(classes, count, count * 3, size=40)
        assert classes.class_names == sorted(n for s in superclasses[split] for n in CIFAR100_SUPERCLASSES[s])
    baby = class_images(dataset.load_split("test"), "baby")
    assert_solid(baby[2:3], (FINE_NAMES.index("baby"), 2, 255 - FINE_NAMES.index("baby")), tolerance=0)


def test_cifar_is_downloaded_from_the_official_address_when_absent(tmp_path, monkeypatch):
    built = write_cifar(tmp_path / "built")
    calls = []

    def fake_download(url, target, md5, timeout_s=60.0):
        calls.append((url, target, md5))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(built.read_bytes())

    monkeypatch.setattr(cifar_module, "download_file", fake_download)
    dataset = CIFARFS(root=str(tmp_path / "root"))
    assert dataset.load_split("val").num_classes == 16
    assert calls == [
        (
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            tmp_path / "root" / "cifar100" / "cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",  # the published md5: the download is checked against it
        )
    ]


def test_cifar_missing_and_offline_say_what_to_put_where(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="Downloading is off") as error:
        FC100(root=str(tmp_path), download=False).prepare()
    assert str(tmp_path / "cifar100" / "cifar-100-python.tar.gz") in str(error.value)

    def offline(url, target, md5, timeout_s=60.0):
        raise OSError("network is unreachable")

    monkeypatch.setattr(cifar_module, "download_file", offline)
    with pytest.raises(DatasetNotFoundError, match="network is unreachable") as error:
        CIFARFS(root=str(tmp_path)).prepare()
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in str(error.value)


def test_cifar_copy_with_a_class_missing_is_rejected(tmp_path):
    write_cifar(tmp_path, skip_class="apple")
    with pytest.raises(DatasetNotFoundError, match="classes without images: train/apple"):
        CIFARFS(root=str(tmp_path), download=False).load_split("val")


# --- CUB-200-2011 --------------------------------------------------------------------------------------------------

CUB_FIRST = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross", "004.Groove_billed_Ani"]


def cub_class_folders(count=200) -> list[str]:
    return (CUB_FIRST + [f"{i:03d}.Bird_{i}" for i in range(5, 201)])[:count]


def write_cub(root: Path, count=200, tarball=False) -> None:
    images = root / "cub200" / "CUB_200_2011" / "images"
    for c, name in enumerate(cub_class_folders(count)):
        (images / name).mkdir(parents=True)
        (images / name / f"{name[4:]}_0001.jpg").write_bytes(encode(RED if c == 0 else GREEN))
        if c == 1:
            (images / name / f"{name[4:]}_0002.jpg").write_bytes(encode(mode="L"))
    if tarball:
        with tarfile.open(root / "cub200" / "CUB_200_2011.tgz", "w:gz") as tar:
            tar.add(root / "cub200" / "CUB_200_2011", arcname="CUB_200_2011")
        shutil.rmtree(root / "cub200" / "CUB_200_2011")


def test_chen_split_rule():
    split = chen_split(list(reversed(cub_class_folders())))
    assert [len(split[s]) for s in ("train", "val", "test")] == [100, 50, 50]
    assert split["train"][:2] == ["001.Black_footed_Albatross", "003.Sooty_Albatross"]
    assert split["val"][:2] == ["002.Laysan_Albatross", "006.Bird_6"]
    assert split["test"][:2] == ["004.Groove_billed_Ani", "008.Bird_8"]


@pytest.mark.parametrize("tarball", [False, True], ids=["folder", "tarball"])
def test_cub_reads_chen_et_al_split(tmp_path, tarball):
    write_cub(tmp_path, tarball=tarball)
    dataset = CUB200(image_size=SIZE, root=str(tmp_path), download=False)
    train, val, test = (dataset.load_split(s) for s in ("train", "val", "test"))
    assert_split(train, 100, 100)
    assert_split(val, 50, 51)
    assert_split(test, 50, 50)
    assert train.class_names[:2] == ["001.Black_footed_Albatross", "003.Sooty_Albatross"]
    assert val.class_names[0] == "002.Laysan_Albatross" and test.class_names[0] == "004.Groove_billed_Ani"
    assert_solid(class_images(train, "001.Black_footed_Albatross"), RED)
    laysan = class_images(val, "002.Laysan_Albatross")
    assert_solid(laysan[:1], GREEN)
    assert_solid(laysan[1:], (GREY_LEVEL,) * 3)


def test_cub_missing_names_the_path_and_the_download(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="Downloading is off") as error:
        CUB200(root=str(tmp_path), download=False).prepare()
    message = str(error.value)
    assert str(tmp_path / "cub200" / "CUB_200_2011.tgz") in message
    assert "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz" in message


def test_cub_with_missing_classes_is_rejected(tmp_path):
    write_cub(tmp_path, count=199)
    with pytest.raises(DatasetNotFoundError, match="holds 199 class folders, but CUB-200-2011 has 200"):
        CUB200(image_size=SIZE, root=str(tmp_path), download=False).load_split("test")
