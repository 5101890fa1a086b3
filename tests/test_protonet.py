"""Prototypical Networks maths on hand-computed cases, and the confidence interval."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fsl_lightning.episode import Episode
from fsl_lightning.methods import ProtoNet
from fsl_lightning.methods.functional import class_prototypes, squared_euclidean_distance
from fsl_lightning.methods.metrics import EpisodeAccuracy, mean_and_ci95


def test_prototypes_are_class_means_whatever_the_order():
    embeddings = torch.tensor([[0.0, 2.0], [4.0, 0.0], [2.0, 4.0], [6.0, 6.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0, 1, 2])
    expected = torch.tensor([[1.0, 3.0], [5.0, 3.0], [1.0, 1.0]])
    assert torch.allclose(class_prototypes(embeddings, labels, way=3), expected)


def test_squared_euclidean_distance_by_hand():
    queries = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    centres = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
    expected = torch.tensor([[0.0, 2.0, 9.0], [25.0, 13.0, 16.0]])
    assert torch.equal(squared_euclidean_distance(queries, centres), expected)


class Flatten(nn.Module):
    def forward(self, images):
        return images.flatten(1)


def test_protonet_logits_are_negative_distances_to_prototypes():
    # 2-way 2-shot, 1x1x2 "images", identity embedding: prototypes (1, 1) and (4, 5).
    support = torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, 4.0], [4.0, 6.0]]).view(4, 1, 1, 2)
    queries = torch.tensor([[1.0, 2.0], [4.0, 4.0]]).view(2, 1, 1, 2)
    episode = Episode(support, torch.tensor([0, 0, 1, 1]), queries, torch.tensor([0, 1]), torch.tensor([7, 9]))
    logits = ProtoNet(backbone=Flatten()).episode_logits(episode)
    expected = -torch.tensor([[1.0, 9 + 9], [9 + 9, 1.0]])
    assert torch.allclose(logits, expected)
    # the named departure (easyfsl's choice): the plain distance, same ranking
    plain = ProtoNet(backbone=Flatten(), distance="euclidean").episode_logits(episode)
    assert torch.allclose(plain, -torch.tensor([[1.0, 18**0.5], [18**0.5, 1.0]]))
    with pytest.raises(ValueError, match="Unknown distance 'cosine'"):
        ProtoNet(backbone=Flatten(), distance="cosine")


def test_confidence_interval_is_1_96_standard_errors():
    values = torch.tensor([0.8, 1.0, 0.9, 0.7], dtype=torch.float64)
    mean, ci95 = mean_and_ci95(values)
    std = math.sqrt(sum((v - 0.85) ** 2 for v in values.tolist()) / 3)
    assert math.isclose(float(mean), 0.85, rel_tol=1e-9)
    assert math.isclose(float(ci95), 1.96 * std / 2, rel_tol=1e-9)


def test_episode_accuracy_metric_accumulates_episodes():
    metric = EpisodeAccuracy()
    for value in (0.5, 1.0, 0.75):
        metric.update(torch.tensor(value))
    summary = metric.compute()
    assert summary.episodes == 3 and math.isclose(float(summary.mean), 0.75) and float(summary.ci95) > 0
    assert torch.equal(summary.per_episode, torch.tensor([0.5, 1.0, 0.75]))


def test_a_batch_of_episodes_is_one_step_on_their_mean_loss():
    """data.train_tasks_per_batch > 1 for metric methods: T episodes per optimiser step."""
    from fsl_lightning.backbones import Conv4

    torch.manual_seed(0)
    method = ProtoNet(Conv4(in_channels=1))
    method.log = lambda *args, **kwargs: None  # no Trainer here
    labels = torch.arange(5)
    batch = Episode(
        support_images=torch.rand(3, 5, 1, 28, 28),
        support_labels=labels.expand(3, -1),
        query_images=torch.rand(3, 10, 1, 28, 28),
        query_labels=labels.repeat_interleave(2).expand(3, -1),
        class_ids=labels.expand(3, -1),
    )
    per_episode = [method.episode_loss(batch.task(t), method.episode_logits(batch.task(t))) for t in range(3)]
    assert torch.allclose(method.training_step(batch, 0), torch.stack(per_episode).mean(), atol=1e-6)


def test_predict_writes_the_softmax_probability_of_the_best_class():
    # prototypes (1, 1) and (4, 5) as above; query (1, 2): squared distances 1 and 18 -> p = 1 / (1 + e^-17)
    support = torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, 4.0], [4.0, 6.0]]).view(4, 1, 1, 2)
    episode = Episode(
        support,
        torch.tensor([0, 0, 1, 1]),
        torch.tensor([[1.0, 2.0]]).view(1, 1, 1, 2),
        torch.tensor([-1]),
        torch.tensor([7, 9]),
    )
    method = ProtoNet(backbone=Flatten())
    rows = method.predict_step({"episode": episode, "query_files": ["q.png"], "class_names": ["a", "b"]}, 0)
    assert ProtoNet.score_name == "probability"
    assert rows == [
        {
            "query_file": "q.png",
            "predicted_class": "a",
            "probability": pytest.approx(1 / (1 + math.exp(-17)), abs=1e-7),
            "outlier": "",
        }
    ]
    probabilities = method.prediction_scores(method.episode_logits(episode))
    assert torch.allclose(probabilities.sum(dim=-1), torch.ones(1))
