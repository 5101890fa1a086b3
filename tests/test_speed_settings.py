"""The `speed:` config section: TF32 by method, channels-last weights, torch.compile of the backbone."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from fsl_lightning.backbones import Conv4, MAMLConv4
from fsl_lightning.callbacks import SpeedSettings
from fsl_lightning.cli import main
from fsl_lightning.methods import MAML, ProtoNet
from fsl_lightning.run.cpu_features import bf16_training_is_fast, this_cpu

REPO = Path(__file__).resolve().parents[1]
SHORT = [
    "--trainer.max_steps=3",
    "--data.train_episodes_per_epoch=3",
    "--data.val_episodes=2",
    "--data.test_episodes=4",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--test_after_fit=false",
]


class RecordsMatmulPrecision(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.precision_in_training = torch.get_float32_matmul_precision()


def _fit_with(method, speed, tmp_path, datamodule):
    recorder = RecordsMatmulPrecision()
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[speed, recorder],
        default_root_dir=tmp_path,
    )
    trainer.fit(method, datamodule)
    return recorder.precision_in_training


@pytest.fixture
def small_datamodule(omniglot):
    from fsl_lightning.data import EpisodicDataModule
    from fsl_lightning.episode import EpisodeSpec

    return EpisodicDataModule(
        omniglot,
        train=EpisodeSpec(5, 1, 2),
        evaluation=EpisodeSpec(5, 1, 2),
        train_episodes_per_epoch=1,
        val_episodes=1,
        test_episodes=1,
    )


def test_tf32_is_on_for_metric_methods_off_for_maml_and_restored_after(small_datamodule, tmp_path):
    before = torch.get_float32_matmul_precision()
    from fsl_lightning.backbones import Conv4

    assert _fit_with(ProtoNet(Conv4(1)), SpeedSettings(), tmp_path, small_datamodule) == "high"
    assert _fit_with(MAML(MAMLConv4(way=5)), SpeedSettings(), tmp_path, small_datamodule) == "highest"
    assert torch.get_float32_matmul_precision() == before


def test_tf32_forced_on_maml_warns(small_datamodule, tmp_path):
    with pytest.warns(UserWarning, match="perturbs second-order meta-gradients"):
        assert _fit_with(MAML(MAMLConv4(way=5)), SpeedSettings(tf32=True), tmp_path, small_datamodule) == "high"


def test_compile_is_refused_for_maml_with_the_reason(small_datamodule, tmp_path):
    method = MAML(MAMLConv4(way=5))
    with pytest.warns(UserWarning, match="speed.compile is ignored for MAML"):
        _fit_with(method, SpeedSettings(compile=True, compile_backend="eager"), tmp_path, small_datamodule)
    assert not getattr(method.backbone, "_compiled_by_speed_settings", False)


@pytest.mark.usefixtures("data_root")
def test_speed_section_from_the_cli_compiles_and_uses_channels_last(tmp_path):
    cli = main(
        [
            "fit",
            "--config",
            str(REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml"),
            *SHORT,
            "--speed.channels_last=true",
            "--speed.compile=true",
            "--speed.compile_backend=aot_eager",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    backbone = cli.model.backbone
    convolution = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)][-1]  # (the first has 1 channel)
    assert convolution.weight.is_contiguous(memory_format=torch.channels_last)
    assert backbone._compiled_by_speed_settings and backbone._compiled_call_impl is not None
    # checkpoint keys are unchanged by compiling in place
    checkpoint = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert all("_orig_mod" not in key for key in checkpoint["state_dict"])
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


class RecordsAutocast(nn.Module):
    """A Conv4 that notes, for each mode it runs in (training / evaluation), whether CPU autocast was on."""

    def __init__(self):
        super().__init__()
        from fsl_lightning.backbones import Conv4

        self.inner = Conv4(1)
        self.autocast_by_mode: dict[str, bool] = {}
        self.channels_last_by_mode: dict[str, bool] = {}

    def forward(self, images):
        mode = "train" if self.training else "eval"
        self.autocast_by_mode[mode] = torch.is_autocast_enabled("cpu")
        # the last convolution: with one input channel (the first) both layouts have the same strides
        convolution = [m for m in self.modules() if isinstance(m, nn.Conv2d)][-1]
        self.channels_last_by_mode[mode] = convolution.weight.is_contiguous(memory_format=torch.channels_last)
        return self.inner(images)


def _fit_and_validate(method, speed, tmp_path, datamodule, **trainer_args):
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[speed],
        default_root_dir=tmp_path,
        **trainer_args,
    )
    trainer.fit(method, datamodule)
    trainer.test(method, datamodule)
    return method


bf16_cpu_only = pytest.mark.skipif(
    not bf16_training_is_fast(this_cpu()), reason="bf16 training is the default only on CPUs with bf16 units"
)


@bf16_cpu_only
def test_cpu_default_trains_in_bf16_evaluates_in_fp32_with_channels_last(small_datamodule, tmp_path):
    method = _fit_and_validate(ProtoNet(RecordsAutocast()), SpeedSettings(), tmp_path, small_datamodule)
    assert method.backbone.autocast_by_mode == {"train": True, "eval": False}
    # channels-last in fit (its validation included) and in the test after fit, as in a test alone
    assert method.backbone.channels_last_by_mode == {"train": True, "eval": True}


@pytest.mark.parametrize(
    "stage, world_size, expected",
    [
        ("fit", 1, True),
        ("fit", 2, False),
        ("test", 1, True),
        ("test", 2, True),
        ("validate", 2, True),
        ("predict", 2, True),
    ],
)
def test_channels_last_by_default_evaluates_alike_in_every_process_layout(stage, world_size, expected):
    """Evaluation runs channels-last on the CPU whatever the number of processes (one number per checkpoint); a DDP
    fit trains in the plain layout (its gradients differed under channels-last, tests/test_ddp_training.py)."""
    assert SpeedSettings()._wants_channels_last(ProtoNet(Conv4(1)), stage, True, world_size) is expected
    assert SpeedSettings()._wants_channels_last(ProtoNet(Conv4(1)), stage, False, world_size) is False  # a GPU
    assert SpeedSettings()._wants_channels_last(MAML(MAMLConv4(way=5)), stage, True, world_size) is False
    assert SpeedSettings(channels_last=False)._wants_channels_last(ProtoNet(Conv4(1)), stage, True, world_size) is False


def test_the_python_api_evaluates_in_the_layout_of_the_cli():
    from fsl_lightning.callbacks.speed import evaluation_layout

    method = evaluation_layout(ProtoNet(Conv4(1)), torch.device("cpu"))
    convolution = [m for m in method.backbone.modules() if isinstance(m, nn.Conv2d)][-1]
    assert convolution.weight.is_contiguous(memory_format=torch.channels_last)


@bf16_cpu_only
def test_maml_family_keeps_fp32_and_the_plain_layout_on_the_cpu(small_datamodule, tmp_path):
    method = MAML(MAMLConv4(way=5))
    layouts = RecordsLayoutInTraining()
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[SpeedSettings(), layouts],
        default_root_dir=tmp_path,
    )
    trainer.fit(method, small_datamodule)
    assert trainer.precision == "32-true"
    assert layouts.channels_last_in_training is False


class RecordsLayoutInTraining(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        convolution = [m for m in pl_module.backbone.modules() if isinstance(m, nn.Conv2d)][-1]
        self.channels_last_in_training = convolution.weight.is_contiguous(memory_format=torch.channels_last)


@bf16_cpu_only
def test_bf16_is_a_default_only_where_measured_channels_last_everywhere_but_maml(small_datamodule, tmp_path):
    from fsl_lightning.methods import MatchingNet

    method = MatchingNet(RecordsAutocast())  # bf16 lost accuracy in its short-budget runs (BENCHMARKS.md)
    _fit_and_validate(method, SpeedSettings(), tmp_path, small_datamodule)
    assert method.backbone.autocast_by_mode == {"train": False, "eval": False}
    assert method.backbone.channels_last_by_mode["train"]


def test_cpu_bf16_off_or_an_explicit_precision_wins(small_datamodule, tmp_path):
    method = _fit_and_validate(ProtoNet(RecordsAutocast()), SpeedSettings(cpu_bf16=False), tmp_path, small_datamodule)
    assert method.backbone.autocast_by_mode == {"train": False, "eval": False}
    method = _fit_and_validate(
        ProtoNet(RecordsAutocast()), SpeedSettings(), tmp_path, small_datamodule, precision="bf16-mixed"
    )
    assert method.backbone.autocast_by_mode == {"train": True, "eval": True}  # Lightning's bf16-mixed everywhere


def test_no_bf16_default_without_bf16_units(small_datamodule, tmp_path, monkeypatch):
    monkeypatch.setattr("fsl_lightning.callbacks.speed.bf16_training_is_fast", lambda cpu: False)
    method = _fit_and_validate(ProtoNet(RecordsAutocast()), SpeedSettings(), tmp_path, small_datamodule)
    assert method.backbone.autocast_by_mode == {"train": False, "eval": False}
