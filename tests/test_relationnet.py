"""Relation Networks: class sums, pairing, relation scores and MSE by hand; a short real training run."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from fsl_lightning.backbones.conv4 import Conv4
from fsl_lightning.backbones.relation_conv4 import RelationConv4
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import Episode, EpisodeSpec
from fsl_lightning.methods.functional import class_sums
from fsl_lightning.methods.relationnet import RelationModule, RelationNet, concatenate_pairs


def test_class_sums_add_the_support_maps_of_each_class_whatever_the_order():
    maps = torch.tensor([1.0, 10.0, 100.0, 1000.0]).view(4, 1, 1, 1) * torch.ones(4, 1, 2, 2)
    sums = class_sums(maps, torch.tensor([1, 0, 1, 0]), way=2)
    assert torch.equal(sums, torch.tensor([1010.0, 101.0]).view(2, 1, 1, 1) * torch.ones(2, 1, 2, 2))


def test_pairs_put_the_class_map_first_and_are_query_major():
    classes = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    queries = torch.tensor([7.0, 8.0, 9.0]).view(3, 1, 1, 1)
    pairs = concatenate_pairs(classes, queries).view(6, 2)
    assert torch.equal(pairs, torch.tensor([[1.0, 7], [2, 7], [1, 8], [2, 8], [1, 9], [2, 9]]))


class Identity(nn.Module):
    def forward(self, images: Tensor) -> Tensor:
        return images


class ReadPair(RelationModule):
    """A relation "module" whose score is ``0.1 * class value + 0.01 * query value`` (1-channel 4x4 maps)."""

    def __init__(self) -> None:
        super().__init__(feature_channels=1, feature_size=4)

    def forward(self, pairs: Tensor) -> Tensor:
        return 0.1 * pairs[:, 0, 0, 0] + 0.01 * pairs[:, 1, 0, 0]


def _constant_maps(values: list[float]) -> Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()


def test_relation_scores_compare_each_query_with_each_summed_class_map():
    # 2-way 2-shot: class maps 1 + 2 = 3 and 3 + 4 = 7; queries 5 and 6 -> scores 0.1 * class + 0.01 * query
    episode = Episode(
        _constant_maps([1, 2, 3, 4]),
        torch.tensor([0, 0, 1, 1]),
        _constant_maps([5, 6]),
        torch.tensor([0, 1]),
        torch.tensor([3, 8]),
    )
    method = RelationNet(backbone=Identity(), feature_channels=1, feature_size=4)
    method.relation = ReadPair()
    expected = torch.tensor([[0.35, 0.75], [0.36, 0.76]])
    logits = method.episode_logits(episode)
    assert torch.allclose(logits, expected, atol=1e-6)
    # MSE to one-hot: ((0.35 - 1)^2 + 0.75^2 + 0.36^2 + (0.76 - 1)^2) / 4
    expected_loss = (0.65**2 + 0.75**2 + 0.36**2 + 0.24**2) / 4
    assert method.episode_loss(episode, logits).item() == pytest.approx(expected_loss, abs=1e-6)


def test_paper_embedding_keeps_5x5_maps_on_omniglot_and_scores_are_probabilities():
    backbone = RelationConv4(in_channels=1)
    assert backbone(torch.zeros(2, 1, 28, 28)).shape == (2, 64, 5, 5) and RelationConv4.output_size(28) == 5
    assert RelationConv4.output_size(84) == 19
    scores = RelationModule(feature_channels=64, feature_size=5)(torch.randn(6, 128, 5, 5))
    assert scores.shape == (6,) and bool(((scores > 0) & (scores < 1)).all())


def test_a_flat_backbone_is_refused_with_the_reason():
    episode = Episode(
        torch.rand(2, 1, 28, 28),
        torch.tensor([0, 1]),
        torch.rand(2, 1, 28, 28),
        torch.tensor([0, 1]),
        torch.tensor([0, 1]),
    )
    with pytest.raises(ValueError, match="feature maps"):
        RelationNet(backbone=Conv4(in_channels=1)).episode_logits(episode)


def test_relationnet_learns_omniglot(omniglot, tmp_path):
    L.seed_everything(0)
    datamodule = EpisodicDataModule(
        omniglot,
        train=EpisodeSpec(way=5, shot=1, query=5),
        evaluation=EpisodeSpec(way=5, shot=1, query=5),
        train_episodes_per_epoch=100,
        val_episodes=5,
        test_episodes=50,
    )
    method = RelationNet(
        backbone=RelationConv4(in_channels=1), optimizer=lambda params: torch.optim.Adam(params, lr=1e-3)
    )
    trainer = L.Trainer(
        max_steps=100,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(method, datamodule=datamodule)
    trained = trainer.test(method, datamodule=datamodule, verbose=False)[0]["test/acc"]
    # chance is 0.2 and an untrained relation module is at chance (0.18 here); 100 episodes reach about 0.6
    assert trained > 0.45, trained


def test_predict_writes_the_relation_score_of_the_best_class():
    torch.manual_seed(0)
    method = RelationNet(backbone=RelationConv4(in_channels=1)).eval()
    support, queries = torch.rand(3, 1, 28, 28), torch.rand(4, 1, 28, 28)
    episode = Episode(support, torch.tensor([0, 1, 2]), queries, torch.full((4,), -1), torch.arange(3))
    batch = {"episode": episode, "query_files": [f"q{i}.png" for i in range(4)], "class_names": ["a", "b", "c"]}
    with torch.no_grad():
        rows = method.predict_step(batch, 0)
        features = method.backbone(torch.cat([support, queries]))
        relation_scores = method.relation(concatenate_pairs(features[:3], features[3:])).view(4, 3)  # K = 1
    best_scores, best_classes = relation_scores.max(dim=-1)
    assert RelationNet.score_name == "relation_score"
    assert [row["predicted_class"] for row in rows] == [["a", "b", "c"][c] for c in best_classes.tolist()]
    assert [row["relation_score"] for row in rows] == pytest.approx(best_scores.tolist(), abs=1e-6)


def test_weights_start_as_the_reference_code_initialises_them():
    """floodsung/LearningToCompare_FSL's weights_init: conv N(0, sqrt(2 / (3 * 3 * 64))) with zero bias, linear
    N(0, 0.01) with bias 1; PyTorch's own defaults on request."""
    torch.manual_seed(0)
    method = RelationNet(RelationConv4(in_channels=1))
    convolutions = [m for m in method.modules() if isinstance(m, nn.Conv2d)][1:]  # 64 -> 64: 36,864 weights each
    assert all(float(conv.weight.std()) == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.03) for conv in convolutions)
    assert all(bool((conv.bias == 0).all()) for conv in convolutions)
    first_linear, last_linear = [m for m in method.relation.modules() if isinstance(m, nn.Linear)]
    assert float(first_linear.weight.std()) == pytest.approx(0.01, rel=0.1)
    assert bool((first_linear.bias == 1).all()) and bool((last_linear.bias == 1).all())
    default = RelationNet(RelationConv4(in_channels=1), initialisation="pytorch")
    assert not bool((default.relation.classifier[1].bias == 1).all())
    with pytest.raises(ValueError, match="initialisation='xavier': use reference or pytorch"):
        RelationNet(RelationConv4(in_channels=1), initialisation="xavier")


def test_each_module_gradient_is_clipped_to_half_as_the_reference_does():
    method = RelationNet(RelationConv4(in_channels=1))
    for parameter in method.parameters():
        parameter.grad = torch.full_like(parameter, 3.0)
    method.configure_gradient_clipping(torch.optim.Adam(method.parameters()))
    for module in (method.backbone, method.relation):
        norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in module.parameters()]))
        assert float(norm) == pytest.approx(0.5, rel=1e-4)
    unclipped = RelationNet(RelationConv4(in_channels=1), module_gradient_clip_norm=None)
    for parameter in unclipped.parameters():
        parameter.grad = torch.full_like(parameter, 3.0)
    unclipped.configure_gradient_clipping(torch.optim.Adam(unclipped.parameters()))
    assert all(bool((parameter.grad == 3.0).all()) for parameter in unclipped.parameters())
