"""FEAT: the set-to-set function against torch's own attention, permutation equivariance, the contrastive
regulariser on a case worked by hand, the training loss, the optimiser's faster head and the pre-trained backbone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsl_lightning.backbones import Conv4, ResNet12
from fsl_lightning.backbones.dropblock import DropBlock
from fsl_lightning.episode import Episode, SupportSet
from fsl_lightning.methods import FEAT, ProtoNet, Transfer
from fsl_lightning.methods.base import Prototypes
from fsl_lightning.methods.feat import SetToSetAttention, contrastive_regulariser
from fsl_lightning.methods.functional import class_prototypes
from fsl_lightning.run.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_set_function_is_one_head_attention_with_residual_and_layer_norm():
    """The same weights in ``nn.MultiheadAttention`` (one head, no input bias, fc as its output projection)."""
    torch.manual_seed(0)
    attention = SetToSetAttention(8).eval()
    with torch.no_grad():  # a layer norm that is not the identity, so that its parameters are checked too
        attention.layer_norm.weight.uniform_(0.5, 1.5)
        attention.layer_norm.bias.uniform_(-0.5, 0.5)
    reference = nn.MultiheadAttention(8, num_heads=1, bias=True, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(
            torch.cat([attention.query.weight, attention.key.weight, attention.value.weight])
        )
        reference.in_proj_bias.zero_()
        reference.out_proj.weight.copy_(attention.fc.weight)
        reference.out_proj.bias.copy_(attention.fc.bias)
    sets = torch.randn(3, 5, 8)
    with torch.no_grad():
        attended, _ = reference(sets, sets, sets)
        expected = F.layer_norm(sets + attended, (8,), attention.layer_norm.weight, attention.layer_norm.bias)
        torch.testing.assert_close(attention(sets), expected)


def test_the_set_functions_initialisation_is_the_references():
    torch.manual_seed(0)
    attention = SetToSetAttention(256)
    for projection in (attention.query, attention.key, attention.value):
        assert projection.bias is None
        assert projection.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    assert attention.fc.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)  # Xavier normal


def feat(**kwargs) -> FEAT:
    torch.manual_seed(0)
    return FEAT(Conv4(1, 8), feature_dim=8, **kwargs)


def test_adapted_prototypes_are_permutation_equivariant():
    """Relabelling the classes permutes the adapted prototypes: the Transformer has no notion of order."""
    method = feat().eval()
    images = torch.randn(6, 1, 28, 28)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    relabel = torch.tensor([2, 0, 1])  # class c becomes relabel[c]
    with torch.no_grad():
        original = method.fit_support(SupportSet(images, labels, 3)).prototypes
        relabelled = method.fit_support(SupportSet(images, relabel[labels], 3)).prototypes
        means = class_prototypes(method.embed(images), labels, 3)
    torch.testing.assert_close(relabelled[relabel], original)
    assert not torch.allclose(original, means, atol=1e-3)  # they were adapted


class PlusSetMean(nn.Module):
    """A set function simple enough to work by hand: each element plus the mean of its set."""

    def forward(self, sets):
        return sets + sets.mean(dim=1, keepdim=True)


def test_the_regulariser_matches_a_hand_computation():
    # 1-d instances 0, 2 (class 0) and 4 (class 1). Adapted as sets of their class: class 0 {1, 3}, centre 2;
    # class 1 {8}, centre 8 (had the whole episode been one set, the centres would differ). Each instance as
    # embedded against the centres, -d^2 / temperature2 with temperature2 = 2:
    # 0 -> (-2, -32), label 0;  2 -> (0, -18), label 0;  4 -> (-2, -8), label 1.
    features = torch.tensor([[0.0], [2.0], [4.0]])
    labels = torch.tensor([0, 0, 1])
    expected = (
        (2 + math.log(math.exp(-2) + math.exp(-32)))
        + math.log(1 + math.exp(-18))
        + (8 + math.log(math.exp(-2) + math.exp(-8)))
    ) / 3
    regulariser = contrastive_regulariser(PlusSetMean(), features, labels, way=2, temperature2=2.0)
    assert regulariser.item() == pytest.approx(expected, rel=1e-6)


def test_queries_score_the_squared_distance_to_the_adapted_prototypes_over_the_temperature():
    method = feat(temperature=4.0).eval()
    with torch.no_grad():
        prototypes, queries = torch.randn(3, 8), torch.randn(5, 8)
        logits = method.score_features(Prototypes(prototypes), queries)
        torch.testing.assert_close(logits, -torch.cdist(queries, prototypes).pow(2) / 4.0, rtol=1e-5, atol=1e-5)


def tiny_episode() -> Episode:
    torch.manual_seed(1)
    return Episode(
        support_images=torch.randn(6, 1, 28, 28),
        support_labels=torch.tensor([0, 1, 2, 0, 1, 2]),
        query_images=torch.randn(6, 1, 28, 28),
        query_labels=torch.tensor([2, 1, 0, 0, 1, 2]),
        class_ids=torch.arange(3),
    )


def test_the_training_loss_adds_the_balanced_regulariser_to_the_query_cross_entropy():
    episode = tiny_episode()
    method = feat(balance=0.5, temperature2=3.0, dropout=0.0, attention_dropout=0.0).train()
    torch.manual_seed(2)
    loss = method.training_step(episode, 0)
    torch.manual_seed(2)
    features = method.embed(torch.cat([episode.support_images, episode.query_images]))
    # batch norm in training mode: the same batch gives the same features
    cross_entropy = F.cross_entropy(method.episode_logits(episode), episode.query_labels)
    labels = torch.cat([episode.support_labels, episode.query_labels])
    regulariser = contrastive_regulariser(method.set_function, features, labels, 3, 3.0)
    torch.testing.assert_close(loss, cross_entropy + 0.5 * regulariser)


def test_the_transformer_learns_ten_times_faster_than_the_backbone():
    method = feat(optimizer=lambda params: torch.optim.Adam(params, lr=1e-4))
    optimizer = method.configure_optimizers()
    backbone, head = optimizer.param_groups
    assert backbone["lr"] == 1e-4 and head["lr"] == pytest.approx(1e-3)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in method.backbone.parameters()}
    assert {id(p) for p in head["params"]} == {id(p) for p in method.set_function.parameters()}


def test_fit_starts_the_backbone_from_another_runs_checkpoint(tmp_path):
    torch.manual_seed(5)
    pretrained = ProtoNet(Conv4(1, 8))
    checkpoint = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": pretrained.state_dict()}, checkpoint)
    method = feat(backbone_checkpoint=str(checkpoint))
    transformer = {k: v.clone() for k, v in method.set_function.state_dict().items()}
    method.setup("fit")
    for key, value in pretrained.backbone.state_dict().items():
        torch.testing.assert_close(method.backbone.state_dict()[key], value)
    for key, value in method.set_function.state_dict().items():
        torch.testing.assert_close(value, transformer[key])


def test_restored_weights_win_over_the_backbone_checkpoint(tmp_path):
    torch.manual_seed(5)
    checkpoint = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": ProtoNet(Conv4(1, 8)).state_dict()}, checkpoint)
    method = feat(backbone_checkpoint=str(checkpoint))
    before = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    method.on_load_checkpoint({"state_dict": {}})  # what --weights_from calls before it loads a FEAT checkpoint
    method.setup("fit")
    for key, value in method.backbone.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_a_backbone_checkpoint_of_another_backbone_is_named(tmp_path):
    checkpoint = tmp_path / "wide.ckpt"
    torch.save({"state_dict": ProtoNet(Conv4(1, 16)).state_dict()}, checkpoint)
    with pytest.raises(UserError, match="do not fit this backbone"):
        feat(backbone_checkpoint=str(checkpoint)).setup("fit")
    with pytest.raises(UserError, match="no checkpoint file"):
        feat(backbone_checkpoint=str(tmp_path / "missing.ckpt")).setup("fit")


def test_meta_training_ramps_dropblock_up_from_the_start_after_loading_the_pre_trained_backbone(tmp_path):
    """Sha-Lab/FEAT's ResNet-12 counts its forward passes in a plain attribute, not saved with the pre-trained
    weights, so meta-training starts its DropBlock ramp at 0; this project's counter is a buffer, loaded with them."""
    torch.manual_seed(0)
    pretrained = Transfer(
        ResNet12(in_channels=3, drop_rate=0.1, dropblock_schedule_steps=100), num_base_classes=4, feature_dim=640
    )
    pretrained.train()
    for _ in range(30):
        pretrained.backbone(torch.rand(2, 3, 32, 32))
    ramps = [m for m in pretrained.backbone.modules() if isinstance(m, DropBlock)]
    assert ramps and all(int(ramp.training_steps) == 30 for ramp in ramps)
    checkpoint = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": pretrained.state_dict()}, checkpoint)
    method = FEAT(
        ResNet12(in_channels=3, drop_rate=0.1, dropblock_schedule_steps=100),
        feature_dim=640,
        backbone_checkpoint=str(checkpoint),
    )
    method.setup("fit")
    loaded = [m for m in method.backbone.modules() if isinstance(m, DropBlock)]
    assert all(int(ramp.training_steps) == 0 and float(ramp.current_drop_rate()) == 0.0 for ramp in loaded)
    torch.testing.assert_close(
        method.backbone.state_dict()["blocks.0.body.0.weight"],
        pretrained.backbone.state_dict()["blocks.0.body.0.weight"],
    )
