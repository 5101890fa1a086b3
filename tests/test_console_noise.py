"""A tiny fit and predict print none of the libraries' messages that are not the user's business."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml")
TINY = [
    "--data.train.way=5",
    "--data.train_episodes_per_epoch=2",
    "--data.val_episodes=2",
    "--data.test_episodes=2",
    "--trainer.max_steps=2",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
]
NOISE = (
    "litlogger",
    "litmodels",
    "LeafSpec",
    "Couldn't infer the batch indices",
    "The dirpath has changed",
    "callbacks used to create the checkpoint need to be provided",
    "decompression bomb",
)


def run_cli(*args: str) -> str:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "fsl_lightning", *args], capture_output=True, text=True, env=environment
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_fit_and_predict_print_no_library_noise(tmp_path, data_root):
    fit_output = run_cli("fit", "--config", CONFIG, *TINY, f"--trainer.logger.init_args.save_dir={tmp_path}")
    (checkpoint,) = tmp_path.rglob("last.ckpt")
    support, queries = _two_user_classes(data_root, tmp_path)
    predict_output = run_cli(
        "predict",
        "--config",
        CONFIG,
        *TINY,
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--ckpt_path={checkpoint}",
        f"--data.predict_support_dir={support}",
        f"--data.predict_query_dir={queries}",
        f"--prediction_writer.output_path={tmp_path / 'predictions.csv'}",
    )
    assert "Test accuracy" in fit_output and (tmp_path / "predictions.csv").is_file()
    printed = {
        (command, noise)
        for command, output in (("fit", fit_output), ("predict", predict_output))
        for noise in NOISE
        if noise in output
    }
    assert not printed, f"{sorted(printed)}\n{fit_output}\n{predict_output}"


def _two_user_classes(data_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Two real Omniglot characters laid out as a user's folders: one support image each, two queries each."""
    support, queries = tmp_path / "support", tmp_path / "queries"
    with zipfile.ZipFile(data_root / "omniglot" / "images_evaluation.zip") as archive:
        names = sorted(name for name in archive.namelist() if name.endswith(".png"))
        for character in sorted({name.rsplit("/", 1)[0] for name in names})[:2]:
            files = [name for name in names if name.startswith(character + "/")][:3]
            label = character.replace("/", "_")
            (support / label).mkdir(parents=True)
            (support / label / "example.png").write_bytes(archive.read(files[0]))
            queries.mkdir(exist_ok=True)
            for number, name in enumerate(files[1:]):
                (queries / f"{label}_{number}.png").write_bytes(archive.read(name))
    return support, queries
