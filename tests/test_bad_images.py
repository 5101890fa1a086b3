"""Images from anywhere: each awkward kind of file decodes to what the models were trained on, or ends in one line
naming the file and what to do; ``predict`` and the API score the other queries unless told to stop."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_images import (
    animated_gif,
    broken_symlink,
    cmyk_jpeg,
    decompression_bomb,
    exif_rotated_jpeg,
    fifo,
    not_an_image,
    palette_with_transparency,
    sixteen_bit_grey,
    sixteen_bit_rgb,
    symlink_loop,
    truncated,
    write_png,
)
from fsl_lightning.classifier import FewShotClassifier
from fsl_lightning.cli import main
from fsl_lightning.data import ImageFolderDataset
from fsl_lightning.data.datasets.natural import decode_rgb
from fsl_lightning.data.datasets.omniglot import decode_character_image
from fsl_lightning.data.images import CorruptImageError, open_image
from omniglot_folders import support_and_query_folders

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml")


def pixels(path: Path, mode: str = "RGB") -> np.ndarray:
    return np.asarray(open_image(path, path, mode), dtype=np.int64)


def one_line_refusal(path: Path, mode: str = "RGB") -> str:
    with pytest.raises(CorruptImageError) as refused:
        open_image(path, path, mode)
    message = str(refused.value)
    assert str(path) in message and "\n" not in message, message
    return message


def halves(width: int = 40, height: int = 20) -> Image.Image:
    """Black on the left, white on the right: any turn or flip shows."""
    picture = Image.new("RGB", (width, height), (0, 0, 0))
    picture.paste((255, 255, 255), (width // 2, 0, width, height))
    return picture


# ----- files that decode ----------------------------------------------------------------------------------------
def test_cmyk_jpeg_decodes_to_its_rgb_colours(tmp_path):
    picture = halves()
    picture.paste((200, 30, 30), (0, 0, 10, 20))
    decoded = pixels(cmyk_jpeg(tmp_path / "cmyk.jpg", picture))
    assert np.abs(decoded - np.asarray(picture, dtype=np.int64)).mean() < 8  # JPEG is lossy; an inversion is 255 off


def test_sixteen_bit_images_are_scaled_to_eight_bits_not_clipped(tmp_path):
    grey = np.random.default_rng(0).integers(0, 65536, (30, 40), dtype=np.uint16)
    expected = (grey.astype(np.int64) * 255 + 32767) // 65535
    assert np.array_equal(pixels(sixteen_bit_grey(tmp_path / "grey16.png", grey), "L"), expected)
    assert np.array_equal(pixels(tmp_path / "grey16.png", "RGB")[:, :, 1], expected)
    colour = np.random.default_rng(1).integers(0, 65536, (30, 40, 3), dtype=np.uint16)
    decoded = pixels(sixteen_bit_rgb(tmp_path / "rgb16.png", colour))
    assert np.abs(decoded - colour.astype(np.int64) / 257).max() <= 1


def test_transparency_is_laid_over_white(tmp_path):
    picture = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    picture.paste((10, 200, 10, 255), (10, 10, 30, 20))
    for path in (palette_with_transparency(tmp_path / "palette.png", picture), tmp_path / "rgba.png"):
        picture.save(tmp_path / "rgba.png")
        decoded = pixels(path)
        assert (decoded[0, 0] == 255).all() and np.abs(decoded[15, 20] - [10, 200, 10]).max() <= 8, path
    # an Omniglot-style character with a transparent background: ink bright on a dark background, as in training
    character = Image.new("LA", (105, 105), (0, 0))
    character.paste((0, 255), (40, 10, 60, 95))
    character.save(tmp_path / "character.png")
    decoded = decode_character_image(tmp_path / "character.png", "character.png", 105)[0]
    assert decoded[0, 0] == 0 and decoded[50, 50] == 255


def test_an_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    decoded = pixels(animated_gif(tmp_path / "animated.gif", frames))
    assert (np.abs(decoded - [255, 0, 0]).max(axis=-1) <= 8).all()


def test_the_exif_orientation_is_applied(tmp_path):
    upright = halves(40, 20)
    decoded = pixels(exif_rotated_jpeg(tmp_path / "rotated.jpg", upright))
    assert decoded.shape == (20, 40, 3)
    assert decoded[:, :15].mean() < 30 and decoded[:, 25:].mean() > 225  # black left, white right, as shown


def test_a_jpeg_over_the_pixel_limit_is_decoded_reduced_and_a_png_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_MAX_IMAGE_PIXELS", "100000")
    halves(800, 400).save(tmp_path / "large.jpg", quality=95)  # 320,000 pixels: a quarter fits
    decoded = open_image(tmp_path / "large.jpg", "large.jpg", "RGB")
    assert decoded.size == (400, 200)
    assert decode_rgb(tmp_path / "large.jpg", "large.jpg", 32).shape == (3, 32, 32)
    halves(800, 400).save(tmp_path / "large.png")
    message = one_line_refusal(tmp_path / "large.png")
    assert "800 x 400 pixels" in message and "FSL_MAX_IMAGE_PIXELS" in message
    monkeypatch.setenv("FSL_MAX_IMAGE_PIXELS", "many")
    with pytest.raises(ValueError, match="FSL_MAX_IMAGE_PIXELS='many' is not a whole number"):
        open_image(tmp_path / "large.png", "large.png", "RGB")


# ----- files that are refused in one line ------------------------------------------------------------------------
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    """400 megapixels in about 50 KB: refused before a pixel is decoded (decoding it would take 400 MB)."""
    assert "400 megapixels" in one_line_refusal(decompression_bomb(tmp_path / "bomb.png"))
    side = 9000  # 81 megapixels: over this project's limit, under PIL's own
    write_png(tmp_path / "large.png", side, side, 1, 0, (bytes(side // 8 + 1) for _ in range(side)))
    assert "9000 x 9000 pixels (81 megapixels)" in one_line_refusal(tmp_path / "large.png")


def test_damaged_files_links_and_special_files_are_named_with_what_to_do(tmp_path):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 50), dtype=np.uint8))
    expected = {
        truncated(tmp_path / "truncated.png", noise): "truncated or damaged",
        not_an_image(tmp_path / "notes.png"): "is not an image that can be read",
        symlink_loop(tmp_path / "loop.png"): "symbolic link that leads back to itself",
        broken_symlink(tmp_path / "broken.png"): "which does not exist: remove it or point it at an image",
        fifo(tmp_path / "pipe.png"): "is not a regular file",
        tmp_path / "missing.png": "No image file",
    }
    for path, reason in expected.items():
        assert reason in one_line_refusal(path), path


@pytest.mark.slow  # a Python process of its own
def test_an_unreadable_file_is_named_with_the_permission_to_give(tmp_path):
    """As another user when run as root, since root reads any file (the process drops to `nobody` after its
    imports)."""
    folder = Path(tempfile.mkdtemp(prefix="unreadable_"))
    try:
        folder.chmod(0o755)
        image = folder / "secret.png"
        Image.new("L", (8, 8)).save(image)
        image.chmod(0o000)
        check = (
            f"import os; from pathlib import Path; from fsl_lightning.data.images import open_image\n"
            f"if os.geteuid() == 0: os.setuid(65534)\n"
            f"open_image(Path({str(image)!r}), {str(image)!r}, 'L')"
        )
        ended = subprocess.run(
            [sys.executable, "-c", check],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd=folder,
            timeout=120,
        )
        assert ended.returncode != 0
        assert f"Cannot read image {image}: permission denied. Give this user read access" in ended.stderr
    finally:
        shutil.rmtree(folder)


def test_a_bad_image_in_an_image_folder_dataset_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    for name in "abcdefghij":
        (tmp_path / "photos" / name).mkdir(parents=True)
        for index in range(3):
            Image.new("RGB", (12, 10), (index * 40, 0, 0)).save(tmp_path / "photos" / name / f"{index}.png")
    symlink_loop(tmp_path / "photos" / "a" / "3.png")
    dataset = ImageFolderDataset(str(tmp_path / "photos"), image_size=8, split_fractions=[0.7, 0.1, 0.2])
    with pytest.raises(CorruptImageError, match=r"photos/a/3\.png is a symbolic link that leads back to itself"):
        for split in ("train", "val", "test"):
            dataset.load_split(split)


# ----- predict and the API: the other queries are scored ---------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("fit")
    cli = main(
        [
            "fit",
            "--config",
            CONFIG,
            "--data.train.way=5",
            "--data.train_episodes_per_epoch=10",
            "--data.val_episodes=2",
            "--trainer.max_steps=10",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--test_after_fit=false",
            f"--trainer.logger.init_args.save_dir={out}",
        ]
    )
    return Path(cli.trainer.checkpoint_callback.last_model_path)


@pytest.fixture
def folders_with_bad_queries(data_root, tmp_path):
    """4 real characters (1 support image, 2 queries each) and, among the queries, a bomb, a text file, a loop."""
    support, queries, truth = support_and_query_folders(data_root, tmp_path, 4, 2)
    bad = [
        decompression_bomb(queries / "bomb.png"),
        not_an_image(queries / "class_1_notes.png"),
        symlink_loop(queries / "loop.png"),
    ]
    return support, queries, truth, bad


def test_predict_scores_the_other_queries_and_lists_the_bad_ones(trained, folders_with_bad_queries, tmp_path, capsys):
    support, queries, truth, bad = folders_with_bad_queries
    output = tmp_path / "predictions.csv"
    main(
        [
            "predict",
            "--ckpt_path",
            str(trained),
            f"--data.predict_support_dir={support}",
            f"--data.predict_query_dir={queries}",
            f"--prediction_writer.output_path={output}",
        ]
    )
    printed = capsys.readouterr().out
    assert "Wrote 8 predictions" in printed
    (summary,) = [line for line in printed.splitlines() if line.startswith("Skipped 3 query images")]
    assert all(str(path) in summary for path in bad)
    with output.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["query_file"] for row in rows] == sorted(str(path) for path in [*map(Path, truth), *bad])
    for row in rows:
        scored = row["query_file"] in truth
        assert bool(row["predicted_class"]) == bool(row["probability"]) == scored == (row["error"] == ""), row
    assert "400 megapixels" in next(row["error"] for row in rows if row["query_file"].endswith("bomb.png"))

    with pytest.raises(SystemExit) as stopped:
        main(
            [
                "predict",
                "--ckpt_path",
                str(trained),
                f"--data.predict_support_dir={support}",
                f"--data.predict_query_dir={queries}",
                f"--prediction_writer.output_path={tmp_path / 'stop.csv'}",
                "--data.predict_bad_images=stop",
            ]
        )
    assert str(stopped.value.code).startswith(f"error: Image {bad[0]} claims 400 megapixels")
    assert not (tmp_path / "stop.csv").exists()


def test_the_api_gives_bad_queries_their_error_and_refuses_a_bad_support_image(
    trained, folders_with_bad_queries, no_training_data
):
    support, queries, truth, bad = folders_with_bad_queries
    classifier = FewShotClassifier.from_checkpoint(trained).fit_support(support)
    predictions = classifier.predict(queries)
    assert [p.file for p in predictions] == sorted(str(path) for path in [*map(Path, truth), *bad])
    for prediction in predictions:
        assert (prediction.error is None) == (prediction.file in truth) == (prediction.class_name is not None)
    listed = classifier.predict([bad[1], next(iter(truth))])
    assert listed[0].error.startswith(f"{bad[1]} is not an image") and listed[1].class_name is not None
    with pytest.raises(CorruptImageError, match=r"bomb\.png claims 400 megapixels"):  # the first bad file
        classifier.predict(queries, bad_images="stop")

    not_an_image(support / "class_0" / "second.png")
    symlink_loop(support / "class_2" / "loop.png")
    with pytest.raises(
        CorruptImageError,
        match=r"^2 support images of .* cannot be used, and the support set "
        r"defines the classes: .*second\.png is not an image.*loop\.png",
    ):
        classifier.fit_support(support)


@pytest.fixture
def no_training_data(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_DATA_ROOT", str(tmp_path / "no_data"))
