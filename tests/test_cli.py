"""The command line end to end: fit, then test and predict from the checkpoint; config files; bad input."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import pytest

from fsl_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml")
SHORT_RUN = [
    "--data.train.way=20", "--data.train_episodes_per_epoch=60", "--data.val_episodes=20",
    "--data.test_episodes=100", "--trainer.max_steps=120", "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
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
    cli = main([
        "test", "--config", CONFIG, *SHORT_RUN, f"--trainer.logger.init_args.save_dir={tmp_path}", "--ckpt_path", best,
    ])
    assert cli.trainer.callback_metrics["test/acc"].item() == pytest.approx(accuracy_after_fit, abs=1e-6)


def test_validate_subcommand_reports_validation_accuracy(fitted, tmp_path):
    _, _, best = fitted
    cli = main(["validate", "--config", CONFIG, *SHORT_RUN, f"--trainer.logger.init_args.save_dir={tmp_path}",
                "--ckpt_path", best])
    assert cli.trainer.callback_metrics["val/acc"].item() > 0.8


def test_a_second_run_never_overwrites_the_first(fitted):
    out, _, _ = fitted
    assert not (out / "omniglot_protonet_5w1s" / "version_1").exists()
    cli = main(["fit", "--config", CONFIG, *SHORT_RUN, "--trainer.max_steps=2", "--data.train_episodes_per_epoch=2",
                "--test_after_fit=false", f"--trainer.logger.init_args.save_dir={out}"])
    assert Path(cli.trainer.log_dir).name == "version_1"
    assert (out / "omniglot_protonet_5w1s" / "version_0" / "checkpoints" / "last.ckpt").exists()


def test_predict_writes_a_csv_of_query_file_class_and_probability(fitted, tmp_path, data_root):
    _, _, best = fitted
    # 20 unseen characters, one support image each, all 19 other drawings as queries: enough queries that the
    # accuracy is not a coin toss over a few hard characters (this checkpoint scores about 0.78; chance is 0.05).
    support, queries, truth = _support_and_query_folders(data_root, tmp_path, characters=20, queries_per_class=19)
    csv_path = tmp_path / "predictions.csv"
    main([
        "predict", "--config", CONFIG, *SHORT_RUN, f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--ckpt_path", best, f"--data.predict_support_dir={support}", f"--data.predict_query_dir={queries}",
        f"--prediction_writer.output_path={csv_path}",
    ])
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["query_file"] for row in rows] == sorted(truth)
    assert list(rows[0]) == ["query_file", "predicted_class", "probability"]  # ProtoNet's softmax over 20 classes
    assert all(1 / 20 <= float(row["probability"]) <= 1 for row in rows)  # the highest of 20 is at least 1/20
    correct = sum(row["predicted_class"] == truth[row["query_file"]] for row in rows)
    assert correct / len(rows) >= 0.5


def test_predict_without_folders_says_what_to_pass(fitted, tmp_path):
    _, _, best = fitted
    with pytest.raises(SystemExit, match="^error: predict needs a support folder.*predict_support_dir"):
        main(["predict", "--config", CONFIG, *SHORT_RUN, f"--trainer.logger.init_args.save_dir={tmp_path}",
              "--ckpt_path", best])


def test_unknown_method_is_named_with_the_available_ones():
    with pytest.raises(SystemExit, match=r"unknown method 'MAMLX'.*ProtoNet"):
        main(["fit", "--config", CONFIG, "--model=MAMLX"])


# Experiment configs; experiments/loggers/ holds overlays (tested with W&B) and experiments/sweeps/ W&B sweep specs.
EXPERIMENT_CONFIGS = sorted(p for p in (REPO / "experiments").rglob("*.yaml") if p.parent.name not in ("loggers", "sweeps"))


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS, ids=lambda p: p.name)
def test_every_experiment_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


def _support_and_query_folders(data_root, tmp_path, characters, queries_per_class):
    """Real Omniglot evaluation characters as a user would lay them out: drawer 01 is the support image."""
    support, queries = tmp_path / "support", tmp_path / "queries"
    truth = {}
    with zipfile.ZipFile(data_root / "omniglot" / "images_evaluation.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        for class_index, character in enumerate(sorted({n.rsplit("/", 1)[0] for n in names})[:: 131][:characters]):
            label = f"class_{class_index}"
            files = [n for n in names if n.startswith(character + "/")][: 1 + queries_per_class]
            (support / label).mkdir(parents=True)
            (support / label / "example.png").write_bytes(archive.read(files[0]))
            for number, name in enumerate(files[1:]):
                target = queries / f"{label}_{number}.png"
                target.parent.mkdir(exist_ok=True)
                target.write_bytes(archive.read(name))
                truth[str(target)] = label
    return support, queries, truth


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
        sys.executable, "-m", "fsl_lightning", "test", "--config", CONFIG, *SHORT_RUN, "--data.test_episodes=101",
        f"--trainer.logger.init_args.save_dir={tmp_path}", "--ckpt_path", best,
    ]
    single = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ)
    ddp = subprocess.run(
        command + ["--trainer.devices=2", "--trainer.strategy=ddp"],
        capture_output=True, text=True, timeout=600, env=os.environ,
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
