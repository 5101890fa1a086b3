"""The command line end to end: fit, then test and predict from the checkpoint; config files; bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from fsl_lightning.cli import main
from omniglot_folders import support_and_query_folders

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml")
SHORT_RUN = [
    "--data.train.way=20",
    "--data.train_episodes_per_epoch=60",
    "--data.val_episodes=20",
    "--data.test_episodes=100",
    "--trainer.max_steps=120",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, data_root):
    """One short `fit` through the CLI; returns its output folder and the accuracy it tested after fitting."""
    out = tmp_path_factory.mktemp("cli")
    cli = main(["fit", "--config", CONFIG, *SHORT_RUN, f"--trainer.logger.init_args.save_dir={out}"])
    return out, cli.trainer.callback_metrics["test/acc"].item(), cli.trainer.checkpoint_callback.best_model_path


def test_fit_writes_checkpoints_and_config_then_tests_the_best(fitted):
    out, accuracy_after_fit, best = fitted
    run = out / "omniglot_protonet_5w1s" / "version_0"
    assert (run / "config.yaml").exists() and (run / "metrics.csv").exists()
    assert (run / "checkpoints" / "last.ckpt").exists() and Path(best).exists()
    assert accuracy_after_fit > 0.8  # chance is 0.2


def test_test_subcommand_from_the_checkpoint_gives_the_same_accuracy(fitted, tmp_path):
    out, accuracy_after_fit, best = fitted
    cli = main(
        [
            "test",
            "--config",
            CONFIG,
            *SHORT_RUN,
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--ckpt_path",
            best,
        ]
    )
    assert cli.trainer.callback_metrics["test/acc"].item() == pytest.approx(accuracy_after_fit, abs=1e-6)


def test_validate_subcommand_reports_validation_accuracy(fitted, tmp_path):
    _, _, best = fitted
    cli = main(
        [
            "validate",
            "--config",
            CONFIG,
            *SHORT_RUN,
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--ckpt_path",
            best,
        ]
    )
    assert cli.trainer.callback_metrics["val/acc"].item() > 0.8


def test_a_second_run_never_overwrites_the_first(fitted):
    out, _, _ = fitted
    assert not (out / "omniglot_protonet_5w1s" / "version_1").exists()
    cli = main(
        [
            "fit",
            "--config",
            CONFIG,
            *SHORT_RUN,
            "--trainer.max_steps=2",
            "--data.train_episodes_per_epoch=2",
            "--test_after_fit=false",
            f"--trainer.logger.init_args.save_dir={out}",
        ]
    )
    assert Path(cli.trainer.log_dir).name == "version_1"
    assert (out / "omniglot_protonet_5w1s" / "version_0" / "checkpoints" / "last.ckpt").exists()


def test_predict_writes_a_csv_of_query_file_class_and_probability(fitted, tmp_path, data_root):
    _, _, best = fitted
    # 20 unseen characters, one support image each, all 19 other drawings as queries: enough queries that the
    # accuracy is not a coin toss over a few hard characters (this checkpoint scores about 0.78; chance is 0.05).
    support, queries, truth = support_and_query_folders(data_root, tmp_path, characters=20, queries_per_class=19)
    csv_path = tmp_path / "predictions.csv"
    main(
        [
            "predict",
            "--config",
            CONFIG,
            *SHORT_RUN,
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--ckpt_path",
            best,
            f"--data.predict_support_dir={support}",
            f"--data.predict_query_dir={queries}",
            f"--prediction_writer.output_path={csv_path}",
        ]
    )
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["query_file"] for row in rows] == sorted(truth)
    assert list(rows[0]) == ["query_file", "predicted_class", "probability", "outlier", "error"]  # ProtoNet, 20 classes
    assert all(row["error"] == "" for row in rows)
    assert all(1 / 20 <= float(row["probability"]) <= 1 for row in rows)  # the highest of 20 is at least 1/20
    correct = sum(row["predicted_class"] == truth[row["query_file"]] for row in rows)
    assert correct / len(rows) >= 0.5


def test_predict_without_folders_says_what_to_pass(fitted, tmp_path):
    _, _, best = fitted
    with pytest.raises(SystemExit, match="^error: predict needs a support folder.*predict_support_dir"):
        main(
            [
                "predict",
                "--config",
                CONFIG,
                *SHORT_RUN,
                f"--trainer.logger.init_args.save_dir={tmp_path}",
                "--ckpt_path",
                best,
            ]
        )


def test_unknown_method_is_named_with_the_available_ones():
    with pytest.raises(SystemExit, match=r"unknown method 'MAMLX'.*ProtoNet"):
        main(["fit", "--config", CONFIG, "--model=MAMLX"])


def test_a_missing_checkpoint_file_is_named_even_without_a_config(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: --ckpt_path .*nothere\.ckpt: no such file"):
        main(["test", "--ckpt_path", str(tmp_path / "nothere.ckpt")])


def test_the_cli_builds_without_running_for_use_from_python(tmp_path):
    from fsl_lightning.cli import FewShotCLI

    cli = FewShotCLI(args=["--config", CONFIG, f"--trainer.logger.init_args.save_dir={tmp_path}"], run=False)
    assert type(cli.model).__name__ == "ProtoNet" and cli.trainer.max_steps == 20000


def test_two_process_ddp_test_equals_the_single_device_result(fitted, tmp_path):
    """Test episodes are shared out between ranks and gathered: same mean and CI as on one device.

    Run as a subprocess: `strategy=ddp` re-launches its command line for rank 1, which inside pytest
    would be the whole pytest session.
    """
    import os
    import subprocess
    import sys

    out, accuracy_after_fit, best = fitted
    command = [
        sys.executable,
        "-m",
        "fsl_lightning",
        "test",
        "--config",
        CONFIG,
        *SHORT_RUN,
        "--data.test_episodes=101",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--ckpt_path",
        best,
    ]
    single = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ)
    ddp = subprocess.run(
        command + ["--trainer.devices=2", "--trainer.strategy=ddp"],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "MEMBER: 2/2" in ddp.stdout + ddp.stderr, "the DDP run did not start a second process"
    line = _accuracy_line(single.stdout)
    assert "101 episodes" in line and _accuracy_line(ddp.stdout) == line


def _accuracy_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("Test accuracy:")]
    assert len(lines) == 1, stdout[-3000:]
    return lines[0]


def test_checkpoint_loads_without_the_cli(fitted):
    import torch

    from fsl_lightning.backbones import Conv4
    from fsl_lightning.methods import ProtoNet

    _, _, best = fitted
    model = ProtoNet.load_from_checkpoint(best, map_location="cpu")
    assert isinstance(model.backbone, Conv4)
    weights = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(model.backbone.encoder[0][0].weight, weights["backbone.encoder.0.0.weight"])


# ----- evaluation from a checkpoint: which weights, which data settings, what is written ------------------------


def test_test_and_validate_take_last_and_best_from_the_newest_run_of_the_experiment(fitted, tmp_path, capsys):
    out, accuracy_after_fit, best = fitted
    shutil.copytree(out / "omniglot_protonet_5w1s" / "version_0", tmp_path / "omniglot_protonet_5w1s" / "version_0")
    common = [*SHORT_RUN, f"--trainer.logger.init_args.save_dir={tmp_path}"]
    cli = main(["test", "--config", CONFIG, *common, "--ckpt_path", "best"])
    assert cli.config.test.ckpt_path == best  # as recorded by the run's ModelCheckpoint
    assert cli.trainer.callback_metrics["test/acc"].item() == pytest.approx(accuracy_after_fit, abs=1e-6)
    last = tmp_path / "omniglot_protonet_5w1s" / "version_0" / "checkpoints" / "last.ckpt"
    cli = main(["validate", "--config", CONFIG, *common, "--ckpt_path", "last"])
    assert cli.config.validate.ckpt_path == str(last)
    assert f"--ckpt_path last: {last}" in capsys.readouterr().out
    assert cli.trainer.callback_metrics["val/acc"].item() > 0.8  # trained weights, not a fresh network (0.2)


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_a_method_that_needs_training_refuses_to_evaluate_without_a_checkpoint(subcommand, tmp_path):
    with pytest.raises(SystemExit, match=r"^error: ProtoNet has no trained weights .* --ckpt_path <file\.ckpt>"):
        main([subcommand, "--config", CONFIG, *SHORT_RUN, f"--trainer.logger.init_args.save_dir={tmp_path}"])


def test_predict_needs_only_the_checkpoint_and_the_folders_and_writes_only_its_csv(
    fitted, tmp_path, data_root, monkeypatch
):
    _, _, best = fitted
    support, queries, truth = support_and_query_folders(data_root, tmp_path, characters=20, queries_per_class=19)
    empty_data_root, cwd = tmp_path / "no_data", tmp_path / "cwd"
    empty_data_root.mkdir(), cwd.mkdir()
    monkeypatch.setenv("FSL_DATA_ROOT", str(empty_data_root))
    monkeypatch.chdir(cwd)
    for _ in range(2):  # a second call finds the first one's files
        main(
            [
                "predict",
                "--ckpt_path",
                best,
                f"--data.predict_support_dir={support}",
                f"--data.predict_query_dir={queries}",
                "--trainer.logger=false",
                "--trainer.enable_progress_bar=false",
            ]
        )
    assert [path.name for path in cwd.iterdir()] == ["predictions.csv"]
    assert _accuracy_of(cwd / "predictions.csv", truth) >= 0.5


def test_predict_with_the_experiment_logger_creates_no_run_folder(fitted, tmp_path, data_root):
    _, _, best = fitted
    support, queries, _ = support_and_query_folders(data_root, tmp_path, characters=5, queries_per_class=1)
    logs = tmp_path / "logs"
    main(
        [
            "predict",
            "--config",
            CONFIG,
            *SHORT_RUN,
            f"--trainer.logger.init_args.save_dir={logs}",
            "--ckpt_path",
            best,
            f"--data.predict_support_dir={support}",
            f"--data.predict_query_dir={queries}",
            f"--prediction_writer.output_path={tmp_path / 'predictions.csv'}",
        ]
    )
    assert not logs.exists()


def test_test_without_a_logger_writes_nothing_into_the_current_directory(fitted, tmp_path, monkeypatch):
    _, _, best = fitted
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        main(
            [
                "test",
                "--config",
                CONFIG,
                *SHORT_RUN,
                "--data.test_episodes=5",
                "--trainer.logger=false",
                "--ckpt_path",
                best,
            ]
        )
    assert list(tmp_path.iterdir()) == []


def test_test_from_the_checkpoint_alone_writes_nothing_into_the_current_directory(fitted, tmp_path, monkeypatch):
    _, accuracy_after_fit, best = fitted
    monkeypatch.chdir(tmp_path)
    cli = main(["test", "--ckpt_path", best, "--trainer.enable_progress_bar=false"])  # no config, no logger set
    assert list(tmp_path.iterdir()) == []
    assert cli.trainer.callback_metrics["test/acc"].item() == pytest.approx(accuracy_after_fit, abs=1e-6)


def test_predict_with_a_config_of_another_protocol_prepares_images_as_in_training(fitted, tmp_path, data_root):
    """Trained at 28x28 (Vinyals); the 20-way config with Lake's protocol would give 105x105 images."""
    _, _, best = fitted
    support, queries, truth = support_and_query_folders(data_root, tmp_path, characters=20, queries_per_class=19)
    csv_path = tmp_path / "predictions.csv"
    with pytest.warns(UserWarning, match=r"data\.dataset\.init_args\.protocol: 'vinyals' -> 'lake'"):
        cli = main(
            [
                "predict",
                "--config",
                str(REPO / "experiments" / "omniglot" / "protonet_20w1s.yaml"),
                "--data.dataset.init_args.protocol=lake",
                "--trainer.logger=false",
                "--ckpt_path",
                best,
                f"--data.predict_support_dir={support}",
                f"--data.predict_query_dir={queries}",
                f"--prediction_writer.output_path={csv_path}",
            ]
        )
    assert cli.datamodule.dataset.image_size == 28
    assert _accuracy_of(csv_path, truth) >= 0.5


def test_an_image_size_the_model_was_not_trained_at_is_an_error_naming_both(fitted, tmp_path):
    _, _, best = fitted
    with pytest.raises(ValueError, match=r"trained on images with channels=1, image_size=28.* image_size=105"):
        main(
            [
                "test",
                "--config",
                CONFIG,
                *SHORT_RUN,
                "--trainer.logger=false",
                "--ckpt_path",
                best,
                "--data.dataset.init_args.image_size=105",
            ]
        )


def _accuracy_of(csv_path: Path, truth: dict[str, str]) -> float:
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["query_file"] for row in rows) == sorted(truth)
    return sum(row["predicted_class"] == truth[row["query_file"]] for row in rows) / len(rows)


def test_only_methods_with_something_to_train_need_a_checkpoint():
    import torch

    from fsl_lightning.backbones import Conv4, TorchvisionBackbone
    from fsl_lightning.methods import CLIPZeroShot, FrozenFeatures, NearestNeighbour, ProtoNet, Transfer

    frozen_backbone = TorchvisionBackbone(name="resnet18", weights=None, frozen=True)
    assert not Transfer(frozen_backbone, num_base_classes=5).needs_trained_weights
    assert not NearestNeighbour(torch.nn.Flatten()).needs_trained_weights
    assert not CLIPZeroShot.needs_trained_weights and not FrozenFeatures.needs_trained_weights
    assert ProtoNet(Conv4(in_channels=1)).needs_trained_weights


def test_a_model_setting_on_the_command_line_wins_over_the_checkpoints_in_evaluation(fitted):
    """The checkpoint's settings are the defaults of `test`; the user's command line goes over them (LightningCLI's
    own reading of the checkpoint would lay its model settings over the user's)."""
    _, _, best = fitted
    trained = main(["test", "--ckpt_path", best, "--data.test_episodes=5"])
    changed = main(["test", "--ckpt_path", best, "--data.test_episodes=5", "--model.init_args.distance=euclidean"])
    assert trained.model.distance == "squared_euclidean" and changed.model.distance == "euclidean"
