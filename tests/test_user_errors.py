"""A user's mistake ends the command with one line that says what to change, and leaves no run folder behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsl_lightning.cli import main
from fsl_lightning.data.images import CorruptImageError, open_image
from fsl_lightning.run.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml")
QUICK = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.max_steps=2"]


def error_line(args: list[str], save_dir: Path) -> str:
    """The message that `main` ends with (as SystemExit, which Python prints without a traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *QUICK, f"--trainer.logger.init_args.save_dir={save_dir}"])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


@pytest.mark.usefixtures("data_root")
def test_too_many_training_classes_names_the_training_option_and_leaves_no_run_folder(tmp_path):
    message = error_line(["fit", "--config", CONFIG, "--data.train.way=5000"], tmp_path)
    assert "Training episodes are 5000-way" in message and "--data.train.way to at most 4112" in message
    assert not list(tmp_path.rglob("version_*")), "a failed command left a run folder"


@pytest.mark.usefixtures("data_root")
def test_too_many_images_per_evaluation_class_names_the_evaluation_options(tmp_path):
    message = error_line(
        ["fit", "--config", CONFIG, "--data.evaluation.shot=15", "--data.evaluation.query=10"], tmp_path
    )
    assert "Evaluation episodes (validation) take shot=15 + query=10 = 25 images per class" in message
    assert "only 20" in message and "--data.evaluation.shot and --data.evaluation.query" in message
    assert not list(tmp_path.rglob("version_*"))


@pytest.mark.parametrize("option, episodes", [("train", "Training episodes"), ("evaluation", "Evaluation episodes")])
def test_zero_way_says_which_episodes(option, episodes, tmp_path):
    message = error_line(["fit", "--config", CONFIG, f"--data.{option}.way=0"], tmp_path)
    assert f"{episodes} need way >= 2, got way=0: set --data.{option}.way to at least 2" in message


def test_unknown_method_gets_the_same_line_with_c_as_with_config(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  class_path: ProtoNett\n")
    messages = {
        error_line([subcommand_flag[0], subcommand_flag[1], str(config)], tmp_path)
        for subcommand_flag in (("fit", "--config"), ("fit", "-c"))
    }
    messages.add(error_line(["fit", f"--config={config}"], tmp_path))
    (message,) = messages
    assert "unknown method 'ProtoNett'" in message and "ProtoNet (fsl_lightning.methods.ProtoNet)" in message


@pytest.mark.slow  # a Python process of its own
def test_the_program_prints_one_line_without_a_traceback(tmp_path):
    command = [
        sys.executable,
        "-m",
        "fsl_lightning",
        "validate",
        "--config",
        CONFIG,
        "--data.evaluation.way=0",
        *QUICK,
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    environment.pop("FSL_TRACEBACK", None)
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: Evaluation episodes need way >= 2")


def test_the_traceback_is_shown_on_request(tmp_path, monkeypatch):
    args = ["validate", "--config", CONFIG, "--data.evaluation.way=0", *QUICK]
    with pytest.raises(UserError, match="Evaluation episodes need way >= 2"):
        main([*args, "--print_traceback"])
    monkeypatch.setenv("FSL_TRACEBACK", "1")
    with pytest.raises(UserError, match="Evaluation episodes need way >= 2"):
        main(args)


def test_corrupt_image_hint_never_advises_deleting_a_folder(tmp_path):
    image = tmp_path / "my_photos" / "cat" / "1.jpg"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"not an image")
    with pytest.raises(CorruptImageError) as error:
        open_image(image, image, "RGB")
    assert str(image) in str(error.value) and "replace it" in str(error.value)
    assert "delete" not in str(error.value).lower()
