"""Siamese networks: balanced pair sampling, distortions, the Koch twin, scores by hand, a short real training run."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn

from fsl_lightning.backbones.conv4 import Conv4
from fsl_lightning.backbones.koch import KochNet
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.data.pairs import _inverse_map, balanced_pairs, random_affine
from fsl_lightning.episode import Episode, EpisodeSpec
from fsl_lightning.methods.functional import class_log_mean_exp
from fsl_lightning.methods.siamese import Siamese

LABELS = torch.tensor([2, 0, 1, 0, 2, 1, 0, 2, 2])  # unsorted, classes of 3, 2 and 4 images


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pairs_are_balanced_and_labelled_right():
    first, second, same = balanced_pairs(LABELS, _generator(0))
    count = len(LABELS)
    assert torch.equal(first, torch.arange(count).repeat(2))  # every image anchors one pair of each kind
    assert torch.equal(same, torch.cat([torch.ones(count), torch.zeros(count)]))
    assert torch.equal(LABELS[first[:count]], LABELS[second[:count]]) and bool((first[:count] != second[:count]).all())
    assert bool((LABELS[first[count:]] != LABELS[second[count:]]).all())


def test_pairs_are_reproducible_from_the_generator_and_draw_every_partner():
    first_draw, second_draw = balanced_pairs(LABELS, _generator(3)), balanced_pairs(LABELS, _generator(3))
    assert all(torch.equal(a, b) for a, b in zip(first_draw, second_draw))
    generator = _generator(1)
    partners = torch.stack([balanced_pairs(LABELS, generator)[1] for _ in range(300)])  # [draws, 2N]
    # image 1 (class 0): same-class partners 3 and 6, different-class partners the 6 images of classes 1 and 2
    same_counts = torch.bincount(partners[:, 1], minlength=9)
    different_counts = torch.bincount(partners[:, 9 + 1], minlength=9)
    assert set(same_counts.nonzero().flatten().tolist()) == {3, 6}
    assert set(different_counts.nonzero().flatten().tolist()) == {0, 2, 4, 5, 7, 8}
    assert same_counts[3] > 100 and same_counts[6] > 100  # about 150 each: uniform


def test_distortion_with_no_component_is_the_identity_and_is_seeded():
    images = torch.rand(4, 1, 28, 28)
    assert torch.allclose(random_affine(images, _generator(0), component_probability=0.0), images, atol=1e-5)
    first, again = random_affine(images, _generator(5)), random_affine(images, _generator(5))
    assert torch.equal(first, again) and not torch.allclose(first, images, atol=1e-2)


def test_translation_only_distortion_moves_a_dot_by_at_most_two_pixels():
    dot = torch.zeros(64, 1, 28, 28)
    dot[:, :, 14, 14] = 1.0
    moved = random_affine(
        dot, _generator(0), max_rotation_degrees=0.0, max_shear=0.0, scale_range=(1.0, 1.0), component_probability=1.0
    )
    coordinates = torch.arange(28.0)
    mass = moved.sum(dim=(1, 2, 3))
    shift_x = (moved.sum(dim=2).squeeze(1) * coordinates).sum(-1) / mass - 14
    shift_y = (moved.sum(dim=3).squeeze(1) * coordinates).sum(-1) / mass - 14
    assert torch.allclose(mass, torch.ones(64), atol=1e-4)  # bilinear shifts keep the ink
    assert shift_x.abs().max() <= 2 + 1e-4 and shift_y.abs().max() <= 2 + 1e-4
    assert shift_x.abs().max() > 1 and shift_y.abs().max() > 1  # and they use most of the range


def test_sampling_matrix_inverts_the_forward_transform():
    # x -> diag(2, 1) x + (0.5, 0): the inverse is diag(0.5, 1) x - (0.25, 0)
    matrix = _inverse_map(torch.tensor([[[2.0, 0.0], [0.0, 1.0]]]), torch.tensor([[0.5, 0.0]]))
    assert torch.allclose(matrix, torch.tensor([[[0.5, 0.0, -0.25], [0.0, 1.0, 0.0]]]))


def test_koch_twin_on_105x105_images():
    # 105 -conv10-> 96 -pool-> 48 -conv7-> 42 -pool-> 21 -conv4-> 18 -pool-> 9 -conv4-> 6: 256 x 6 x 6 into FC 4096
    assert KochNet.feature_size(105) == 6
    backbone = KochNet(in_channels=1, image_size=105)
    assert backbone.embedding[1].in_features == 256 * 6 * 6
    embeddings = backbone(torch.rand(2, 1, 105, 105))
    assert embeddings.shape == (2, 4096) and bool(((embeddings >= 0) & (embeddings <= 1)).all())
    with pytest.raises(ValueError, match="at least 65x65"):
        KochNet(image_size=28)


def test_the_prediction_layer_is_initialised_as_section_3_2_initialises_fully_connected_layers():
    """Weights N(0, 0.2), biases N(0.5, 0.01); PyTorch's default (uniform in +-1/64 for 4096 inputs) on request."""
    torch.manual_seed(0)
    head = Siamese(backbone=nn.Flatten(), embedding_dim=4096).head
    assert float(head.weight.std()) == pytest.approx(0.2, rel=0.05) and abs(float(head.weight.mean())) < 0.02
    assert float(head.bias) == pytest.approx(0.5, abs=0.05)
    default = Siamese(backbone=nn.Flatten(), embedding_dim=4096, head_initialisation="pytorch").head
    assert float(default.weight.abs().max()) <= 1 / 64
    with pytest.raises(ValueError, match="head_initialisation='xavier': use koch or pytorch"):
        Siamese(backbone=nn.Flatten(), head_initialisation="xavier")


def test_class_log_mean_exp_by_hand():
    log_scores = torch.log(torch.tensor([[0.2, 0.6, 0.5]]))
    expected = torch.log(torch.tensor([[0.4, 0.5]]))
    assert torch.allclose(class_log_mean_exp(log_scores, torch.tensor([0, 0, 1]), way=2), expected)


def _flat_siamese() -> Siamese:
    """Flatten twin on 2-d points with p(same) = sigmoid(2 - |d1| - |d2|)."""
    method = Siamese(backbone=nn.Flatten(), embedding_dim=2)
    with torch.no_grad():
        method.head.weight.fill_(-1.0)
        method.head.bias.fill_(2.0)
    return method


def _points(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, 1, 2)


def test_query_scores_are_the_mean_same_probability_per_class():
    # query (0, 1): L1 distances 1 to (0, 0) [class 0], 4 to (3, 0) and 1 to (1, 1) [class 1]
    episode = Episode(
        _points([[0, 0], [3, 0], [1, 1]]),
        torch.tensor([0, 1, 1]),
        _points([[0, 1]]),
        torch.tensor([0]),
        torch.tensor([4, 9]),
    )
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = torch.tensor([[math.log(sigmoid(1)), math.log((sigmoid(-2) + sigmoid(1)) / 2)]])
    assert torch.allclose(_flat_siamese().episode_logits(episode), expected, atol=1e-6)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # no Trainer: logging is a no-op
def test_training_loss_is_binary_cross_entropy_over_balanced_pairs():
    # two classes of identical points, 0 and 5 apart: same pairs have logit 2, different pairs 2 - 5 = -3
    episode = Episode(
        _points([[0, 0], [5, 0]]),
        torch.tensor([0, 1]),
        _points([[0, 0], [5, 0]]),
        torch.tensor([0, 1]),
        torch.tensor([1, 2]),
    )
    method = _flat_siamese()
    loss = method.training_step(episode, 0)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-3))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert method.train_accuracy.compute().item() == 1.0


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_a_meta_batch_pairs_images_within_each_episode_only():
    # task 0 as above (different pairs: logit 2 - 5 = -3); task 1 has its classes 4 apart (logit 2 - 4 = -2) and
    # other points, so that a pair across the two episodes (label 0 in both) would change the loss
    support = torch.stack([_points([[0, 0], [5, 0]]), _points([[0, 3], [0, 7]])])
    labels = torch.tensor([0, 1]).expand(2, -1)
    meta_batch = Episode(support, labels, support.clone(), labels, torch.tensor([[1, 2], [3, 4]]))
    method = _flat_siamese()
    loss = method.training_step(meta_batch, 0)
    same, different_0, different_1 = (math.log(1 + math.exp(-logit)) for logit in (2, 3, 2))
    assert loss.item() == pytest.approx((same + different_0 + same + different_1) / 4, abs=1e-6)
    assert method.train_accuracy.compute().item() == 1.0


def test_predict_writes_p_same_of_the_best_class():
    # the same query and support as above: p(same) is sigmoid(1) for class 0 and (sigmoid(-2) + sigmoid(1)) / 2
    episode = Episode(
        _points([[0, 0], [3, 0], [1, 1]]),
        torch.tensor([0, 1, 1]),
        _points([[0, 1]]),
        torch.tensor([-1]),
        torch.tensor([0, 1]),
    )
    rows = _flat_siamese().predict_step({"episode": episode, "query_files": ["q.png"], "class_names": ["a", "b"]}, 0)
    assert Siamese.score_name == "same_class_probability"
    assert rows == [
        {
            "query_file": "q.png",
            "predicted_class": "a",
            "same_class_probability": pytest.approx(1 / (1 + math.exp(-1)), abs=1e-6),
            "outlier": "",
        }
    ]


def test_a_wrong_embedding_size_is_named():
    episode = Episode(
        _points([[0, 0], [5, 0]]), torch.tensor([0, 1]), _points([[0, 0]]), torch.tensor([0]), torch.tensor([1, 2])
    )
    with pytest.raises(ValueError, match="embedding_dim=4096.*\\(2,\\)"):
        Siamese(backbone=nn.Flatten()).episode_logits(episode)


def test_distorted_training_pairs_get_independent_views_and_gradients():
    torch.manual_seed(0)
    method = Siamese(backbone=Conv4(in_channels=1), embedding_dim=64, distort=True)
    images, labels = torch.rand(6, 1, 28, 28), torch.tensor([0, 0, 1, 1, 2, 2])
    logits, same = method.training_pairs(images, labels)
    assert logits.shape == (12,) and torch.equal(same, torch.tensor([1.0] * 6 + [0.0] * 6))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, same).backward()
    assert method.backbone.encoder[0][0].weight.grad.abs().sum() > 0 and method.head.weight.grad.abs().sum() > 0


def test_siamese_learns_omniglot_from_pairs(omniglot, tmp_path):
    L.seed_everything(0)
    datamodule = EpisodicDataModule(
        omniglot,
        train=EpisodeSpec(way=10, shot=1, query=1),
        evaluation=EpisodeSpec(way=5, shot=1, query=5),
        train_episodes_per_epoch=100,
        val_episodes=5,
        test_episodes=50,
    )
    # Without distortions (checked above), which halve the cost of a step on 2 CPU cores.
    method = Siamese(
        backbone=Conv4(in_channels=1), embedding_dim=64, optimizer=lambda params: torch.optim.Adam(params, lr=1e-3)
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
    untrained = trainer.test(method, datamodule=datamodule, verbose=False)[0]["test/acc"]
    trainer.fit(method, datamodule=datamodule)
    trained = trainer.test(method, datamodule=datamodule, verbose=False)[0]["test/acc"]
    # chance is 0.2, the untrained twin gets about 0.27; 100 episodes of 20 pairs reach about 0.47
    assert trained > 0.4, (untrained, trained)
    assert trained > untrained + 0.1, (untrained, trained)
