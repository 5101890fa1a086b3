"""Runs that teams rely on: W&B offline logging, resuming after a kill, stopping at a NaN loss."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import wandb
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from fsl_lightning.backbones import Conv4
from fsl_lightning.callbacks import NonFiniteLossError, NonFiniteLossGuard
from fsl_lightning.callbacks.non_finite_guard import newest_saved_checkpoint
from fsl_lightning.cli import FewShotCLI, main
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import EpisodeSpec
from fsl_lightning.methods import ProtoNet

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml")
WANDB = str(REPO / "experiments" / "loggers" / "wandb.yaml")
TINY = [
    "--data.train.way=5",
    "--data.train_episodes_per_epoch=10",
    "--data.val_episodes=5",
    "--data.test_episodes=20",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.log_every_n_steps=5",
]


@pytest.mark.usefixtures("data_root")
def test_wandb_run_is_written_offline_with_config_metrics_media_and_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            CONFIG,
            "--config",
            WANDB,
            *TINY,
            "--trainer.max_steps=10",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'out'}",
        ]
    )
    # As at the exit of `python -m fsl_lightning`: finish the run, then stop the W&B service process, which
    # writes the run file; finish() alone returns before that process has flushed it under load.
    wandb.finish()
    wandb.teardown()
    (run,) = (tmp_path / "out" / "wandb").glob("offline-run-*")
    record = next(run.glob("run-*.wandb")).read_bytes()
    for key in (
        b"test/acc",
        b"test/acc_ci95",
        b"test/per_episode_acc",
        b"train/loss",
        b"val/acc",
        b"fsl_lightning.methods.ProtoNet",
        b'"max_steps":10',
        b"model-",
    ):
        assert key in record, key
    assert list(run.glob("files/media/images/test/episode_*.png")), "no image grid of a test episode"
    assert list(run.glob("files/media/table/test/embeddings_table_*.table.json")), "no embedding projection"
    assert list((tmp_path / "out").glob("*/*/config.yaml")), "resolved config not saved beside the checkpoints"


@pytest.mark.usefixtures("data_root")
def test_fit_resumes_from_last_checkpoint_with_the_same_episode_stream(tmp_path):
    straight = tmp_path / "straight"
    main(
        [
            "fit",
            "--config",
            CONFIG,
            *TINY,
            "--trainer.max_steps=20",
            "--test_after_fit=false",
            f"--trainer.logger.init_args.save_dir={straight}",
        ]
    )
    killed = tmp_path / "killed"
    main(
        [
            "fit",
            "--config",
            CONFIG,
            *TINY,
            "--trainer.max_steps=10",
            "--test_after_fit=false",
            f"--trainer.logger.init_args.save_dir={killed}",
        ]
    )
    first_run = killed / "omniglot_protonet_5w1s" / "version_0"
    before = {path: _digest(path) for path in first_run.rglob("*") if path.is_file()}
    main(
        [
            "fit",
            "--config",
            CONFIG,
            *TINY,
            "--trainer.max_steps=20",
            "--test_after_fit=false",
            f"--trainer.logger.init_args.save_dir={killed}",
            "--ckpt_path",
            "last",
        ]
    )
    assert {path: _digest(path) for path in first_run.rglob("*") if path.is_file()} == before
    resumed = _last_checkpoint(killed / "omniglot_protonet_5w1s" / "version_1")
    reference = _last_checkpoint(straight / "omniglot_protonet_5w1s" / "version_0")
    assert resumed["global_step"] == reference["global_step"] == 20
    for name, weight in reference["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][name].float(), weight.float(), atol=1e-5), name


@pytest.mark.usefixtures("data_root")
def test_fit_resumes_from_the_best_checkpoint_that_the_newest_run_recorded(tmp_path, capsys):
    first = main(
        [
            "fit",
            "--config",
            CONFIG,
            *TINY,
            "--trainer.max_steps=20",
            "--test_after_fit=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    best = first.trainer.checkpoint_callback.best_model_path
    main(
        [
            "fit",
            "--config",
            CONFIG,
            *TINY,
            "--trainer.max_steps=30",
            "--test_after_fit=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--ckpt_path",
            "best",
        ]
    )
    assert f"Resuming from {best}" in capsys.readouterr().out


@pytest.mark.usefixtures("data_root")
def test_bf16_mixed_precision_trains_and_tests(tmp_path):
    cli = main(
        [
            "fit",
            "--config",
            CONFIG,
            *TINY,
            "--trainer.max_steps=30",
            "--trainer.precision=bf16-mixed",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert cli.trainer.precision == "bf16-mixed"
    assert cli.trainer.callback_metrics["test/acc"].item() > 0.5  # chance is 0.2


def test_resume_without_any_checkpoint_says_what_to_pass(tmp_path):
    with pytest.raises(SystemExit, match="^error: --ckpt_path last/best: no last.ckpt under"):
        main(
            ["fit", "--config", CONFIG, *TINY, f"--trainer.logger.init_args.save_dir={tmp_path}", "--ckpt_path", "last"]
        )


class LossTurnsNaN(ProtoNet):
    """ProtoNet whose loss becomes NaN from a given step on, as after a numerical blow-up."""

    def __init__(self, nan_from_step: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_from_step = nan_from_step

    def episode_loss(self, episode, logits):
        loss = super().episode_loss(episode, logits)
        return loss * float("nan") if self.training and self.global_step >= self.nan_from_step else loss


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(omniglot, tmp_path):
    spec = EpisodeSpec(way=5, shot=1, query=5)
    datamodule = EpisodicDataModule(omniglot, train=spec, evaluation=spec, train_episodes_per_epoch=100, val_episodes=5)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_last=True)
    trainer = L.Trainer(
        max_steps=40,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[NonFiniteLossGuard(check_every_n_steps=50), checkpoints],
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with pytest.raises(NonFiniteLossError, match=r"at step 7\b.*newest checkpoint on disk.* is .*last\.ckpt"):
        trainer.fit(LossTurnsNaN(7, backbone=Conv4(in_channels=1)), datamodule=datamodule)
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 5
    assert all(torch.isfinite(weight).all() for weight in saved["state_dict"].values())


def test_the_newest_checkpoint_is_found_beside_a_checkpoint_callback_that_records_no_paths(tmp_path):
    """Any ``Checkpoint`` callback may sit in ``trainer.checkpoint_callbacks``; only ModelCheckpoints record paths
    (a plain one used to raise AttributeError there, in place of the NaN loss's own message)."""
    saved = tmp_path / "last.ckpt"
    saved.write_bytes(b"checkpoint")
    checkpoints = ModelCheckpoint(dirpath=tmp_path)
    checkpoints.last_model_path = str(saved)
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[Checkpoint(), checkpoints])
    assert newest_saved_checkpoint(trainer) == saved


def test_test_after_fit_takes_the_best_checkpoint_only_from_a_model_checkpoint():
    """The first checkpoint callback may be another ``Checkpoint``, which has no best model: test the last weights."""
    tested = []
    trainer = SimpleNamespace(
        interrupted=False,
        checkpoint_callback=Checkpoint(),
        test=lambda model, datamodule, ckpt_path: tested.append(ckpt_path),
    )
    cli = SimpleNamespace(
        config={"fit": SimpleNamespace(test_after_fit=True)},
        subcommand="fit",
        trainer=trainer,
        model=None,
        datamodule=None,
    )
    FewShotCLI.after_fit(cli)
    assert tested == [None]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _last_checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
