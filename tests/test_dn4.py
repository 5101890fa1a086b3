"""DN4: the image-to-class measure on a case worked by hand, its backbone (Conv64F as a Conv4 option), and that it
learns on a real Omniglot episode."""

from __future__ import annotations

import math

import pytest
import torch

from fsl_lightning.backbones import Conv4
from fsl_lightning.data.images import as_model_input
from fsl_lightning.episode import EpisodeSpec, SupportSet, split_support_query
from fsl_lightning.methods import DN4
from fsl_lightning.methods.dn4 import image_to_class_similarity, local_descriptors

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT2 = math.sqrt(2)

# Two 2-d descriptors per image. Class 0: images A and B; class 1: images C and D (2-shot: with k = 3 a class's
# neighbours must come from both of its images). Not normalised: the measure normalises each descriptor.
SUPPORT = torch.tensor(
    [
        [[1.0, 0.0], [0.0, -1.0]],  # A: (1, 0), (0, -1)
        [[1.0, 1.0], [0.0, -5.0]],  # B: (1, 1)/sqrt(2), (0, -1)
        [[-1.0, 0.0], [0.0, 3.0]],  # C: (-1, 0), (0, 1)
        [[3.0, 4.0], [-2.0, 0.0]],  # D: (0.6, 0.8), (-1, 0)
    ]
)
LABELS = torch.tensor([0, 0, 1, 1])
QUERIES = torch.tensor(
    [
        [[1.0, 0.0], [0.0, 2.0]],  # q1 = (1, 0), (0, 1)
        [[-1.0, 0.0], [-3.0, 0.0]],  # q2 = (-1, 0) twice
    ]
)


def test_the_measure_with_one_neighbour_sums_each_descriptors_best_cosine():
    # q1: (1,0) -> class 0 best 1, class 1 best 0.6; (0,1) -> class 0 best 1/sqrt 2, class 1 best 1.
    # q2: (-1,0) -> class 0 best 0 (the (0,-1) descriptors), class 1 best 1; twice.
    expected = torch.tensor([[1 + 1 / ROOT2, 0.6 + 1], [0.0, 2.0]])
    scores = image_to_class_similarity(QUERIES, SUPPORT, LABELS, way=2, neighbours=1)
    torch.testing.assert_close(scores, expected)


def test_the_measure_with_three_neighbours_pools_the_descriptors_of_all_the_class_images():
    # q1, (1,0): class 0 cosines 1, 0, 1/sqrt2, 0 -> top 3 sum 1 + 1/sqrt2; class 1: -1, 0, 0.6, -1 -> -0.4.
    # q1, (0,1): class 0 cosines 0, -1, 1/sqrt2, -1 -> 1/sqrt2 - 1; class 1: 0, 1, 0.8, 0 -> 1.8.
    # q2, (-1,0) twice: class 0 cosines -1, 0, -1/sqrt2, 0 -> -1/sqrt2; class 1: 1, 0, -0.6, 1 -> 2.
    expected = torch.tensor([[1 + 1 / ROOT2 + 1 / ROOT2 - 1, -0.4 + 1.8], [-2 / ROOT2, 4.0]])
    scores = image_to_class_similarity(QUERIES, SUPPORT, LABELS, way=2, neighbours=3)
    torch.testing.assert_close(scores, expected)


def test_a_class_with_fewer_descriptors_than_neighbours_is_refused():
    with pytest.raises(ValueError, match="class 1 has 2 support descriptors"):
        image_to_class_similarity(QUERIES, SUPPORT[:3], LABELS[:3], way=2, neighbours=3)


def test_dn4_scores_the_local_descriptors_of_the_backbones_feature_maps():
    torch.manual_seed(0)
    method = DN4(Conv4(1, 8, flatten=False, pooled_blocks=2, negative_slope=0.2), neighbours=3).eval()
    support, queries = torch.randn(4, 1, 28, 28), torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        support_maps, query_maps = method.backbone(support), method.backbone(queries)
        assert support_maps.shape == (4, 8, 7, 7)  # Conv64F on 28x28: two poolings, 49 descriptors
        expected = image_to_class_similarity(
            local_descriptors(query_maps), local_descriptors(support_maps), LABELS, way=2, neighbours=3
        )
        scores = method.score(method.fit_support(SupportSet(support, LABELS, 2)), queries)
    torch.testing.assert_close(scores, expected)
    # the descriptors are the positions: descriptor i of an image is its map's channel vector at position i
    torch.testing.assert_close(local_descriptors(support_maps)[1, 9], support_maps[1, :, 1, 2])


def test_conv64f_is_conv4_with_two_poolings_and_leaky_relu():
    """The reference's map sizes: 84 -> 42 -> 21 -> 21 -> 21; plain Conv4 is unchanged (four poolings, ReLU)."""
    conv64f = Conv4(3, 8, flatten=False, pooled_blocks=2, negative_slope=0.2).eval()
    assert conv64f(torch.zeros(1, 3, 84, 84)).shape == (1, 8, 21, 21)
    activations = [m for m in conv64f.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert len(activations) == 4 and all(m.negative_slope == 0.2 for m in activations)
    plain = Conv4(1, 8).eval()
    assert plain(torch.zeros(1, 1, 28, 28)).shape == (1, 8)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in plain.modules()) == 4
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in plain.modules())


def test_dn4_refuses_a_backbone_that_pools_its_features_away():
    with pytest.raises(ValueError, match="feature maps"):
        DN4(Conv4(1, 8)).embed(torch.zeros(2, 1, 28, 28))


def test_dn4_learns_a_real_omniglot_episode(vinyals_test_split):
    """A few Adam steps (the reference's lr 0.005, betas 0.5, 0.9) on one 5-way 1-shot episode lower its loss."""
    spec = EpisodeSpec(way=5, shot=1, query=5)
    offsets = vinyals_test_split.class_offsets
    classes = [0, 100, 200, 300, 400]
    indices = torch.stack([offsets[c] + torch.arange(6) for c in classes])
    images = as_model_input(vinyals_test_split.images[indices])
    episode = split_support_query(images, torch.tensor(classes), spec, indices, seed=0)
    torch.manual_seed(0)
    method = DN4(Conv4(1, 16, flatten=False, pooled_blocks=2, negative_slope=0.2))
    optimizer = torch.optim.Adam(method.parameters(), lr=0.005, betas=(0.5, 0.9))
    losses = []
    for _ in range(8):
        loss = method.episode_loss(episode, method.episode_logits(episode))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
