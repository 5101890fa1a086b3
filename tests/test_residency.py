"""Where the images live (data.resident): the same episodes, and the same test numbers, whether each split sits whole
on the compute device or episodes are gathered on the host by a background loader."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage

from fsl_lightning.backbones import Conv4
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.data.residency import choose_residency
from fsl_lightning.methods import ProtoNet
from fsl_lightning.run.errors import UserError
from test_episodes import SPEC, attach_trainer, episodes_of


def datamodule(omniglot, resident: str, **kwargs) -> EpisodicDataModule:
    module = EpisodicDataModule(
        omniglot,
        train=SPEC,
        evaluation=SPEC,
        val_episodes=12,
        test_episodes=12,
        train_episodes_per_epoch=5,
        resident=resident,
        **kwargs,
    )
    module.setup("fit")
    return module


def episodes(module: EpisodicDataModule, stage: RunningStage, loader) -> list:
    attach_trainer(module, stage)
    return episodes_of(loader(), module)


def assert_same_episodes(first: list, second: list) -> None:
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        for field in ("support_images", "query_images", "support_indices", "query_indices", "class_ids"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
        assert a.seed == b.seed


@pytest.mark.parametrize(
    "stage, loader", [(RunningStage.VALIDATING, "val_dataloader"), (RunningStage.TRAINING, "train_dataloader")]
)
def test_host_and_device_residency_give_the_same_episodes(omniglot, stage, loader):
    on_device, on_host = datamodule(omniglot, "device"), datamodule(omniglot, "host")
    assert_same_episodes(
        episodes(on_device, stage, getattr(on_device, loader)), episodes(on_host, stage, getattr(on_host, loader))
    )
    assert on_host._resident == {}, "host residency copied a split for the device"


def test_the_same_weights_test_the_same_with_either_residency(omniglot, tmp_path):
    L.seed_everything(0)
    model = ProtoNet(Conv4(in_channels=1))
    results = []
    for resident in ("device", "host"):
        trainer = L.Trainer(
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        module = EpisodicDataModule(omniglot, train=SPEC, evaluation=SPEC, test_episodes=30, resident=resident)
        results.append(trainer.test(model, datamodule=module, verbose=False)[0])
    assert results[0] == results[1]


def test_auto_keeps_the_split_where_it_is_on_the_cpu_and_says_so(omniglot, caplog):
    module = datamodule(omniglot, "auto")
    attach_trainer(module, RunningStage.VALIDATING)
    with caplog.at_level("INFO"):
        module.val_dataloader()
    assert module._residency_choice() == "device"
    assert "Images resident on the device (the compute device is the host" in caplog.text


def test_auto_chooses_the_host_when_the_splits_would_crowd_the_gpu(monkeypatch):
    free = 8 * 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))
    cuda = torch.device("cuda", 0)
    assert choose_residency("auto", 3 * 2**30, cuda)[0] == "device"
    choice, reason = choose_residency("auto", 5 * 2**30, cuda)
    assert choice == "host" and "5.00 GiB of images against 8.0 GiB free" in reason


def test_an_unknown_residency_is_refused_with_the_choices(omniglot):
    with pytest.raises(UserError, match="data.resident must be device, host or auto, got 'gpu'"):
        EpisodicDataModule(omniglot, resident="gpu")
