"""The W&B sweep entry point: agent arguments become CLI overrides, and the sweep configs name real things."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fsl_lightning.cli import main
from fsl_lightning.sweep import ALIASES, translate

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))


def test_aliases_become_cli_overrides():
    assert translate(
        ["--lr=0.002", "--shot=5", "--backbone=resnet12", "--trainer.max_steps=7", "--config", "a.yaml"]
    ) == [
        "--model.init_args.optimizer.init_args.lr=0.002",
        "--data.train.shot=5",
        "--data.evaluation.shot=5",
        "--model.init_args.backbone=fsl_lightning.backbones.ResNet12",
        "--trainer.max_steps=7",
        "--config",
        "a.yaml",
    ]


def test_unknown_backbone_in_a_sweep_is_named():
    with pytest.raises(SystemExit, match="unknown backbone 'vgg'"):
        translate(["--backbone=vgg"])


def test_translated_arguments_reach_the_resolved_config(capsys):
    config = str(REPO / "experiments" / "omniglot" / "protonet_20w1s.yaml")
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                config,
                *translate(["--lr=0.0042", "--shot=5", "--backbone=resnet12"]),
                "--print_config",
            ]
        )
    resolved = yaml.safe_load(capsys.readouterr().out)
    model = resolved["model"]["init_args"]
    assert model["optimizer"]["init_args"]["lr"] == 0.0042
    assert model["backbone"]["class_path"] == "fsl_lightning.backbones.ResNet12"
    assert model["backbone"]["init_args"]["in_channels"] == 1
    assert resolved["data"]["train"]["shot"] == resolved["data"]["evaluation"]["shot"] == 5


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.name)
def test_sweep_configs_use_known_parameters_and_existing_configs(sweep):
    spec = yaml.safe_load(sweep.read_text())
    assert spec["method"] in ("grid", "random", "bayes")
    for name in spec["parameters"]:
        assert name in ALIASES or "." in name, f"{name} is neither an alias nor a CLI key"
    for arg in spec["command"]:
        if arg.endswith(".yaml"):
            assert (REPO / arg).exists(), arg
    assert (REPO / spec["program"]).exists()
