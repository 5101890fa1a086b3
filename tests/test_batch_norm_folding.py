"""Batch norm folded into its convolution for evaluation: the same function, and the trained module untouched."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from fsl_lightning.backbones import Conv4, ResNet12
from fsl_lightning.backbones.batch_norm_folding import batch_norm_folded
from fsl_lightning.methods import ProtoNet


def _with_trained_statistics(network: nn.Module) -> nn.Module:
    """Batch norms with running statistics and affine weights far from their initial values, so that a folding that
    forgot any of them would change the output."""
    generator = torch.Generator().manual_seed(0)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(size, generator=generator) * 2 - 1)
    return network.eval()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    "network, images",
    [
        (lambda: Conv4(1), torch.rand(6, 1, 28, 28)),
        (lambda: ResNet12(in_channels=3), torch.rand(2, 3, 84, 84)),
    ],
)
def test_folded_backbone_computes_the_same_features_without_batch_norm(network, images, channels_last):
    trained = _with_trained_statistics(network())
    if channels_last:
        trained.to(memory_format=torch.channels_last)
    before = {name: value.clone() for name, value in trained.state_dict().items()}
    folded = batch_norm_folded(trained)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    convolutions = [module for module in folded.modules() if isinstance(module, nn.Conv2d)]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert all(convolution.weight.is_contiguous(memory_format=layout) for convolution in convolutions)
    with torch.no_grad():
        expected = trained(images)
        assert torch.allclose(folded(images), expected, atol=1e-5 * expected.abs().max())
    assert all(torch.equal(value, before[name]) for name, value in trained.state_dict().items())


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
        test_episodes=2,
    )


def test_test_runs_the_folded_copy_and_gives_the_trained_backbone_back(small_datamodule, tmp_path):
    method = ProtoNet(Conv4(1))
    trained_backbone = method.backbone

    class SeesTheBackbone(L.Callback):
        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            self.batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in pl_module.backbone.modules())

    seen = SeesTheBackbone()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[seen],
        default_root_dir=tmp_path,
    )
    trainer.test(method, small_datamodule)
    assert seen.batch_norms == 0
    assert method.backbone is trained_backbone and "backbone.encoder.0.1.running_mean" in method.state_dict()


def test_every_stage_starts_from_the_trained_backbone_even_after_an_interrupted_test():
    method = ProtoNet(Conv4(1))
    trained_backbone = method.backbone
    method.use_evaluation_backbone()  # as on_test_start; a crash would skip on_test_end
    assert method.backbone is not trained_backbone
    method.setup("fit")
    assert method.backbone is trained_backbone
