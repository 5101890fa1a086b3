"""DropBlock and ResNet-12's RFS regularisation: mask statistics, block shape, warm-up, identity in eval."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fsl_lightning.backbones import ResNet12
from fsl_lightning.backbones.dropblock import DropBlock


def test_dropped_units_form_whole_blocks_inside_the_map():
    torch.manual_seed(0)
    dropblock = DropBlock(block_size=3, drop_rate=0.02, schedule_steps=0).train()
    mask = dropblock.block_mask(torch.ones(200, 1, 10, 10))
    # with so low a rate most maps hold one isolated block: find maps with exactly 9 dropped units
    dropped = (mask == 0).sum(dim=(1, 2, 3))
    single = mask[dropped == 9, 0]
    assert len(single) > 10
    for one in single:
        rows, cols = torch.nonzero(one == 0, as_tuple=True)
        assert rows.max() - rows.min() == 2 and cols.max() - cols.min() == 2  # one 3x3 square


@pytest.mark.parametrize("size, block", [(10, 5), (5, 5), (21, 5)])
def test_the_fraction_dropped_is_the_drop_rate(size, block):
    torch.manual_seed(1)
    dropblock = DropBlock(block_size=block, drop_rate=0.1, schedule_steps=0).train()
    mask = dropblock.block_mask(torch.ones(64, 64, size, size))
    fraction = 1 - mask.mean().item()
    # RFS's gamma counts overlapping blocks twice, so slightly less than the rate is dropped (exactly it for 5x5)
    assert 0.085 < fraction < 0.105


def test_kept_units_are_rescaled_to_keep_the_mean_and_eval_is_identity():
    torch.manual_seed(2)
    dropblock = DropBlock(block_size=5, drop_rate=0.1, schedule_steps=0)
    features = torch.ones(8, 16, 10, 10)
    out = dropblock.train()(features)
    assert torch.allclose(out.mean(), torch.tensor(1.0), atol=1e-5)
    assert (out == 0).any()
    assert torch.equal(dropblock.eval()(features), features)


def test_drop_rate_ramps_up_linearly_over_training_steps():
    dropblock = DropBlock(block_size=1, drop_rate=0.1, schedule_steps=4).train()
    rates = []
    for _ in range(6):
        dropblock(torch.ones(1, 1, 2, 2))
        rates.append(round(dropblock.current_drop_rate().item(), 6))
    assert rates == [0.025, 0.05, 0.075, 0.1, 0.1, 0.1]
    dropblock.eval()(torch.ones(1, 1, 2, 2))
    assert dropblock.training_steps.item() == 6  # evaluation does not advance the schedule


def test_resnet12_regularises_as_rfs_dropout_then_dropblock_in_the_last_two_stages():
    backbone = ResNet12(drop_rate=0.1)
    regularisers = [block.regulariser for block in backbone.blocks]
    assert [type(module) for module in regularisers] == [nn.Dropout, nn.Dropout, DropBlock, DropBlock]
    assert regularisers[2].block_size == 5 and regularisers[2].drop_rate == 0.1
    assert all(isinstance(block.regulariser, nn.Identity) for block in ResNet12().blocks)  # off by default
    backbone.eval()
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(backbone(images), backbone(images))
