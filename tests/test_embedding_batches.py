"""Which images share a backbone pass in training, where batch norm normalises a pass by its own statistics: the
reference codes of MetaOptNet (kjunelee/MetaOptNet train.py: the supports of the whole meta-batch, then its queries)
and Relation Networks (floodsung/LearningToCompare_FSL: the support images, then the queries) embed the two sides
apart; ProtoNet's embeds each episode in one pass."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from fsl_lightning.backbones import Conv4, RelationConv4
from fsl_lightning.episode import Episode, SupportSet
from fsl_lightning.methods import DN4, MetaOptNet, ProtoNet, RelationNet


class RecordsBatches(nn.Module):
    """A real backbone that records the size of every batch it embeds."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone, self.batches = backbone, []

    def forward(self, images: Tensor) -> Tensor:
        self.batches.append(len(images))
        return self.backbone(images)


def episode(way: int = 5, shot: int = 1, query: int = 3, side: int = 28) -> Episode:
    return Episode(
        torch.rand(way * shot, 1, side, side),
        torch.arange(way).repeat_interleave(shot),
        torch.rand(way * query, 1, side, side),
        torch.arange(way).repeat_interleave(query),
        torch.arange(way),
    )


def test_metaoptnet_embeds_the_supports_of_the_meta_batch_then_its_queries():
    torch.manual_seed(0)
    tasks = [episode(), episode()]
    method = MetaOptNet(RecordsBatches(Conv4(in_channels=1))).train()
    logits = method.training_logits(tasks[0], tasks)
    assert method.backbone.batches == [10, 30] and [tuple(t.shape) for t in logits] == [(15, 5), (15, 5)]
    previous = MetaOptNet(RecordsBatches(Conv4(in_channels=1)), embedding_batches="episode").train()
    previous.training_logits(tasks[0], tasks)
    assert previous.backbone.batches == [20, 20]


def test_relationnet_embeds_the_support_images_then_the_queries():
    torch.manual_seed(0)
    task = episode()
    method = RelationNet(RecordsBatches(RelationConv4(in_channels=1))).train()
    (logits,) = method.training_logits(task, [task])
    assert method.backbone.batches == [5, 15] and tuple(logits.shape) == (15, 5)
    # in training mode the two passes normalise apart: the queries' features are those of a pass of their own
    features = method.backbone.backbone(task.query_images)
    maps = method.backbone.backbone(task.support_images)
    expected = method.score_features(method.fit_features(maps, SupportSet.of(task)), features)
    torch.testing.assert_close(logits, expected)
    with pytest.raises(ValueError, match="embedding_batches='joint': use reference or episode"):
        RelationNet(RelationConv4(in_channels=1), embedding_batches="joint")


def test_protonet_keeps_one_pass_per_episode():
    task = episode()
    method = ProtoNet(RecordsBatches(Conv4(in_channels=1))).train()
    method.training_logits(task, [task])
    assert method.backbone.batches == [20]


def test_dn4_embeds_the_queries_then_each_class_apart_and_keeps_the_support_order():
    torch.manual_seed(0)
    task = episode(way=3, shot=2, query=2)
    shuffled = torch.tensor([1, 0, 2, 1, 2, 0])  # support labels out of class order
    task = Episode(task.support_images, shuffled, task.query_images, task.query_labels, task.class_ids)
    backbone = Conv4(in_channels=1, flatten=False, pooled_blocks=2, negative_slope=0.2)
    method = DN4(RecordsBatches(backbone)).train()
    (logits,) = method.training_logits(task, [task])
    assert method.backbone.batches == [6, 2, 2, 2]
    # each class's descriptors are those of a pass of that class's images alone, in the support set's order
    queries = method.embed(task.query_images)
    classes = {label: method.embed(task.support_images[shuffled == label]) for label in range(3)}
    support = torch.stack([classes[int(label)][int((shuffled[:i] == label).sum())] for i, label in enumerate(shuffled)])
    torch.testing.assert_close(
        logits, method.score_features(method.fit_features(support, SupportSet.of(task)), queries)
    )
