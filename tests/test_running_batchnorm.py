"""MAML-family batch norm with running statistics (`batch_norm: running`): exact averages, same in both engines."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fsl_lightning.backbones import MAMLConv4, PlainBatchNorm2d
from fsl_lightning.backbones.plain_batchnorm import recording_running_statistics
from fsl_lightning.episode import Episode
from fsl_lightning.methods import MAML


def test_running_averages_match_torch_batchnorm():
    ours, reference = PlainBatchNorm2d(3, running_statistics=True), nn.BatchNorm2d(3, momentum=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        batch = 2.0 + 3.0 * torch.randn(8, 3, 5, 5, generator=generator)
        with recording_running_statistics(ours):
            ours(batch)
        reference(batch)
    assert torch.allclose(ours.running_mean, reference.running_mean, atol=1e-6)
    assert torch.allclose(ours.running_var, reference.running_var, atol=1e-5)
    ours.eval(), reference.eval()
    test = torch.randn(2, 3, 5, 5, generator=generator)
    assert torch.allclose(ours(test), reference(test), atol=1e-5)


def test_averages_change_only_while_recording():
    norm = PlainBatchNorm2d(2, running_statistics=True)
    norm(torch.randn(4, 2, 3, 3))
    assert torch.equal(norm.running_mean, torch.zeros(2)) and torch.equal(norm.running_var, torch.ones(2))


def test_the_paper_setting_keeps_no_buffers_and_ignores_eval_mode():
    norm = PlainBatchNorm2d(2)
    assert not list(norm.buffers())
    batch = torch.randn(4, 2, 3, 3)
    assert torch.equal(norm(batch), norm.eval()(batch))


def _episode(tasks=2, way=5, shot=1, query=3):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(tasks, way * (shot + query), 1, 28, 28, generator=generator)
    labels = torch.arange(way)
    return Episode(
        support_images=images[:, : way * shot],
        support_labels=labels.repeat_interleave(shot).expand(tasks, -1),
        query_images=images[:, way * shot :],
        query_labels=labels.repeat_interleave(query).expand(tasks, -1),
        class_ids=labels.expand(tasks, -1),
    )


@pytest.mark.parametrize("engine", ["vmap", "loop", "learn2learn"])
def test_maml_records_averages_after_each_step_and_evaluates_with_them(engine):
    torch.manual_seed(0)
    method = MAML(MAMLConv4(way=5, batch_norm="running"), engine=engine, test_inner_steps=2)
    episode = _episode()
    norm = method.backbone.features[0][1]
    method.on_train_batch_end(None, episode, 0)
    assert not torch.equal(norm.running_mean, torch.zeros(64))
    method.eval()
    logits = method.episode_logits(episode.task(0))
    assert logits.shape == (15, 5) and torch.isfinite(logits).all()


def test_the_engines_agree_in_evaluation_with_running_averages():
    torch.manual_seed(0)
    backbone = MAMLConv4(way=5, batch_norm="running")
    vmap_method = MAML(backbone, engine="vmap", test_inner_steps=2)
    vmap_method.on_train_batch_end(None, _episode(), 0)
    l2l_method = MAML(backbone, engine="learn2learn", test_inner_steps=2)
    loop_method = MAML(backbone, engine="loop", test_inner_steps=2)  # torch's fused kernel, on the running averages
    episode = _episode().task(1)
    vmap_method.eval(), l2l_method.eval(), loop_method.eval()
    assert torch.allclose(vmap_method.episode_logits(episode), l2l_method.episode_logits(episode), atol=1e-5)
    assert torch.allclose(loop_method.episode_logits(episode), l2l_method.episode_logits(episode), atol=1e-5)
    # queries are normalised alone: a query's logits do not depend on the other queries
    single = Episode(
        episode.support_images,
        episode.support_labels,
        episode.query_images[:1],
        episode.query_labels[:1],
        episode.class_ids,
    )
    assert torch.allclose(vmap_method.episode_logits(single), vmap_method.episode_logits(episode)[:1], atol=1e-5)


def test_unknown_batch_norm_mode_is_refused():
    with pytest.raises(ValueError, match="batch_norm must be"):
        MAMLConv4(batch_norm="group")
