"""SimpleShot and the transductive episode classifiers (BD-CSPN, TIM, LaplacianShot, PT-MAP): their maths on small
cases checked by hand or re-derived here with plain Python, a case each where the queries change a decision the
right way, and each run from FrozenFeatures / Transfer / a config."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from fsl_lightning.backbones import Conv4, ResNet12
from fsl_lightning.backbones.timm_backbone import TimmBackbone
from fsl_lightning.cli import main
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import EpisodeSpec
from fsl_lightning.methods import FrozenFeatures, Transfer
from fsl_lightning.methods.episode_classifiers import NearestCentroid
from fsl_lightning.methods.feature_classifiers import BDCSPN, PTMAP, TIM, LaplacianShot, SimpleShot
from fsl_lightning.methods.feature_classifiers.laplacianshot import bound_updates, knn_affinity
from fsl_lightning.methods.feature_classifiers.pt_map import power_transform, sinkhorn
from fsl_lightning.run.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread", "offline_hubs")


def at_angles(*degrees: float) -> torch.Tensor:
    """Unit vectors in the plane at the given angles (degrees from the x axis)."""
    radians = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    return torch.stack([radians.cos(), radians.sin()], dim=1).float()


def predictions(classifier, support, support_labels, queries, way=2) -> list[int]:
    return classifier(support, support_labels, queries, way, seed=0).argmax(dim=-1).tolist()


# ----- SimpleShot -----------------------------------------------------------------------------------------------------
def test_simpleshot_is_nearest_centroid_by_euclidean_distance_not_cosine():
    # class 0: two unit vectors whose centroid (0.5, 0.5) is shorter than 1; class 1: one unit vector 14 degrees
    # from the query. By cosine class 0 wins (the centroid points exactly at the query); by distance class 1 does:
    # ||q - c0|| = 1 - sqrt(2)/2 = 0.29289, ||q - c1|| = sqrt(2 - 2 cos 14deg) = 0.24374.
    support = torch.cat([at_angles(0, 90), at_angles(31)])
    query = at_angles(45)
    logits = SimpleShot(feature_transform="UN")(support, torch.tensor([0, 0, 1]), query, 2)
    assert logits[0].tolist() == pytest.approx([-0.29289, -0.24374], abs=1e-5)
    assert NearestCentroid()(support, torch.tensor([0, 0, 1]), query, 2).argmax().item() == 0  # the cosine rule


def test_cl2n_centres_on_the_base_class_mean_then_normalises():
    base_features = torch.tensor([[1.0, 1.0], [3.0, 3.0], [2.0, 2.0]])  # mean (2, 2)
    support, labels = torch.tensor([[5.0, 2.0], [2.0, 3.0]]), torch.tensor([0, 1])
    query = torch.tensor([[3.0, 2.5]])
    classifier = SimpleShot()  # CL2N
    assert classifier.needs_base_features
    with pytest.raises(UserError, match="base classes' mean"):
        classifier(support, labels, query, 2)
    classifier.prepare(base_features)
    # centred: support (3, 0) -> (1, 0) and (0, 1) -> (0, 1); the query (1, 0.5) -> (2, 1) / sqrt(5)
    unit_query = torch.tensor([2.0, 1.0]) / math.sqrt(5)
    expected = [-(unit_query - torch.tensor(centroid)).norm().item() for centroid in ([1.0, 0.0], [0.0, 1.0])]
    assert classifier(support, labels, query, 2)[0].tolist() == pytest.approx(expected, abs=1e-6)
    # uncentred, the query (3, 2.5) is nearer the second support feature (2, 3) than the first (5, 2):
    assert predictions(SimpleShot(feature_transform="UN"), support, labels, query) == [1]
    assert predictions(classifier, support, labels, query) == [0]
    assert not SimpleShot(feature_transform="L2N").needs_base_features
    with pytest.raises(UserError, match="feature_transform"):
        SimpleShot(feature_transform="centred")


# ----- BD-CSPN --------------------------------------------------------------------------------------------------------
def bd_cspn_by_hand(support, support_labels, queries, way, eps):
    """BD-CSPN with Python floats and loops: shift, pseudo-label, softmax-weighted rectified prototypes, cosine."""
    support, queries = [list(map(float, row)) for row in support], [list(map(float, row)) for row in queries]

    def normalised(vector):
        length = math.sqrt(sum(value * value for value in vector))
        return [value / length for value in vector]

    def cosine(a, b):
        return sum(x * y for x, y in zip(normalised(a), normalised(b)))

    support, queries = [normalised(row) for row in support], [normalised(row) for row in queries]
    dim = len(support[0])
    support_mean = [sum(row[d] for row in support) / len(support) for d in range(dim)]
    query_mean = [sum(row[d] for row in queries) / len(queries) for d in range(dim)]
    shifted = [[row[d] + support_mean[d] - query_mean[d] for d in range(dim)] for row in queries]
    prototypes = []
    for k in range(way):
        members = [row for row, label in zip(support, support_labels) if label == k]
        prototypes.append([sum(row[d] for row in members) / len(members) for d in range(dim)])
    pseudo = [max(range(way), key=lambda k: cosine(row, prototypes[k])) for row in shifted]
    rectified = []
    for k in range(way):
        members = [row for row, label in zip(support, support_labels) if label == k]
        members += [row for row, label in zip(shifted, pseudo) if label == k]
        weights = [math.exp(eps * cosine(row, prototypes[k])) for row in members]
        total = sum(weights)
        rectified.append([sum(w * row[d] for w, row in zip(weights, members)) / total for d in range(dim)])
    return [[eps * cosine(row, rectified[k]) for k in range(way)] for row in shifted]


def bd_cspn_episode():
    """One shot per class at 0 and 90 degrees; class-0 queries at 36-44 degrees and one at 47 (nearer class 1's
    support), class-1 queries at 76-84 degrees."""
    support, support_labels = at_angles(0, 90), torch.tensor([0, 1])
    queries = at_angles(36, 40, 44, 47, 76, 80, 84)
    return support, support_labels, queries, [0, 0, 0, 0, 1, 1, 1]


def test_bd_cspn_equals_its_equations_recomputed_by_hand():
    support, support_labels, queries, _ = bd_cspn_episode()
    scaled = 3.0 * queries  # L2N makes the length irrelevant
    logits = BDCSPN()(support, support_labels, scaled, 2)
    expected = bd_cspn_by_hand(support.tolist(), support_labels.tolist(), scaled.tolist(), 2, eps=10.0)
    assert logits.tolist() == [pytest.approx(row, abs=1e-4) for row in expected]


def test_bd_cspn_uses_the_queries_to_put_the_borderline_query_in_its_class():
    support, support_labels, queries, truth = bd_cspn_episode()
    assert predictions(NearestCentroid(), support, support_labels, queries)[3] == 1  # inductive: wrong
    assert predictions(BDCSPN(), support, support_labels, queries) == truth


# ----- TIM ------------------------------------------------------------------------------------------------------------
def tim_loss_by_hand(weights, support, support_labels, queries, tau, loss_weights):
    def posteriors(row):
        scores = [-tau / 2 * sum((x - w) ** 2 for x, w in zip(row, weight)) for weight in weights]
        top = max(scores)
        exps = [math.exp(score - top) for score in scores]
        return [value / sum(exps) for value in exps]

    cross_entropy = sum(-math.log(posteriors(row)[label]) for row, label in zip(support, support_labels)) / len(support)
    query_posteriors = [posteriors(row) for row in queries]
    conditional = sum(-sum(p * math.log(p + 1e-12) for p in row) for row in query_posteriors) / len(queries)
    marginal = [sum(row[k] for row in query_posteriors) / len(queries) for k in range(len(weights))]
    marginal_entropy = -sum(p * math.log(p + 1e-12) for p in marginal)
    ce_weight, marginal_weight, conditional_weight = loss_weights
    return ce_weight * cross_entropy - (marginal_weight * marginal_entropy - conditional_weight * conditional)


def test_tim_loss_and_logits_equal_the_paper_formulas():
    support, support_labels = at_angles(0, 20, 90), torch.tensor([0, 0, 1])
    queries = at_angles(10, 50, 70, 85)
    classifier = TIM()
    weights = torch.tensor([[0.9, 0.2], [0.1, 0.8]])
    loss = classifier.loss(weights, support, support_labels, queries)
    expected = tim_loss_by_hand(
        weights.tolist(), support.tolist(), support_labels.tolist(), queries.tolist(), 15.0, (0.1, 1.0, 0.1)
    )
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    # no step: the weights are the support prototypes and the logits -tau/2 ||z - w||^2
    prototypes = torch.stack([support[:2].mean(dim=0), support[2]])
    logits = TIM(steps=0)(2.0 * support, support_labels, queries, 2)  # L2N: lengths do not matter
    assert torch.allclose(logits, -7.5 * torch.cdist(queries, prototypes) ** 2, atol=1e-5)


def test_tim_balances_the_query_predictions_that_the_prototypes_give_to_one_class():
    # Both query clusters lie nearer class 0's support (at 0 degrees) than class 1's (at 90): inductively every
    # query is class 0; maximising the mutual information (a balanced marginal) moves the 40-degree cluster to class 1.
    support, support_labels = at_angles(0, 90), torch.tensor([0, 1])
    queries = at_angles(8, 10, 12, 38, 40, 42)
    assert predictions(NearestCentroid(), support, support_labels, queries) == [0] * 6
    assert predictions(TIM(), support, support_labels, queries) == [0, 0, 0, 1, 1, 1]


# ----- LaplacianShot --------------------------------------------------------------------------------------------------
def test_knn_affinity_links_each_point_to_its_knn_minus_one_nearest_others():
    points = torch.tensor([[0.0], [1.0], [1.5], [4.0]])
    assert knn_affinity(points, knn=2).tolist() == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    assert knn_affinity(points, knn=3).tolist() == [[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 0]]


def test_bound_updates_follow_algorithm_1():
    unary = torch.tensor([[0.2, 1.0], [0.6, 0.5], [1.0, 0.1]])
    affinity = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert torch.allclose(bound_updates(unary, affinity, 0.0, 5), -unary)  # no Laplacian: nearest prototype
    one_update = -unary + 0.7 * affinity @ (-unary).softmax(dim=-1)  # y = softmax(-a + lambda W y0), y0 = softmax(-a)
    assert torch.allclose(bound_updates(unary, affinity, 0.7, 1), one_update)
    # iterated to a fixed point: y = softmax(-a + lambda W y)
    logits = bound_updates(unary, affinity, 0.7, 200)
    assert torch.allclose(logits, -unary + 0.7 * affinity @ logits.softmax(dim=-1), atol=1e-4)


def test_laplacianshot_lets_neighbouring_queries_carry_a_borderline_query():
    # Prototypes at x = 0 and x = 2 (unrectified, features as they are); the query at 1.05 is nearer class 1's
    # prototype, but its two nearest queries (at 0.9 and 0.95) are class 0's.
    support, support_labels = torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])
    queries = torch.tensor([[0.9, 0.0], [0.95, 0.0], [1.05, 0.0], [2.0, 3.0], [2.1, 3.0], [2.2, 3.0]])
    plain = LaplacianShot(feature_transform="UN", laplacian_weight=0.0, rectify_prototypes=False)
    laplacian = LaplacianShot(feature_transform="UN", laplacian_weight=1.0, rectify_prototypes=False)
    assert predictions(plain, support, support_labels, queries)[2] == 1
    assert predictions(laplacian, support, support_labels, queries) == [0, 0, 0, 1, 1, 1]


# ----- PT-MAP ---------------------------------------------------------------------------------------------------------
def test_power_transform_takes_the_root_then_normalises_and_clips_or_refuses_negative_features():
    transformed = power_transform(torch.tensor([[4.0, 0.0, 9.0]]), 0.5)
    root = torch.tensor([2.0, 1e-3, 3.0])
    assert torch.allclose(transformed[0], root / root.norm(), atol=1e-6)
    # a negative value is what a ReLU would have made it, 0 (the authors' pow would give NaN)
    assert torch.equal(power_transform(torch.tensor([[4.0, -0.5, 9.0]]), 0.5), transformed)
    with pytest.raises(UserError, match="non-negative.*negative_features: clip"):
        power_transform(torch.tensor([[1.0, -0.5]]), 0.5, negative_features="refuse")


def test_pt_map_on_this_projects_resnet12_features_is_pt_map_on_their_relu():
    """ResNet12 ends in a leaky ReLU: about a fifth of its features are negative (random weights here)."""
    torch.manual_seed(0)
    with torch.no_grad():
        features = ResNet12(in_channels=3).eval()(torch.rand(20, 3, 32, 32))
    assert bool((features < 0).any())
    support, support_labels, queries = features[:10], torch.arange(5).repeat(2), features[10:]
    clipped = PTMAP()(support, support_labels, queries, 5, seed=0)
    assert torch.isfinite(clipped).all()
    assert torch.equal(clipped, PTMAP()(support.relu(), support_labels, queries.relu(), 5, seed=0))
    with pytest.raises(UserError, match="negative values"):
        PTMAP(negative_features="refuse")(support, support_labels, queries, 5, seed=0)
    with pytest.raises(UserError, match="negative_features='drop': use clip or refuse"):
        PTMAP(negative_features="drop")


def test_sinkhorn_plan_has_unit_rows_and_balanced_columns():
    cost = torch.tensor([[0.0, 1.0], [0.1, 0.9], [0.2, 0.3], [1.0, 0.0]])
    plan = sinkhorn(cost, regularisation=10.0, tolerance=1e-9, max_iterations=1000)
    # three queries are cheapest in class 0; balanced columns move the one with the smallest margin (0.1) to class 1
    assert cost.argmin(dim=1).tolist() == [0, 0, 0, 1] and plan.argmax(dim=1).tolist() == [0, 0, 1, 1]
    assert torch.allclose(plan.sum(dim=1), torch.ones(4), atol=1e-6)
    assert torch.allclose(plan.sum(dim=0), torch.full((2,), 2.0), atol=1e-4)
    # the plan is diag(u) exp(-lambda C) diag(v): its log, minus -lambda C, is a sum of a row and a column term
    residual = plan.log() + 10.0 * cost
    assert torch.allclose(residual - residual[:, :1] - residual[:1, :] + residual[0, 0], torch.zeros(4, 2), atol=1e-4)


def test_pt_map_balances_the_queries_over_the_classes():
    # Class 0's support at 10 degrees, class 1's at 80; of the four queries three lie nearer class 0 (at 5, 15 and
    # 40 degrees) and one at 85. PT-MAP uses the queries twice (the query set centred on its own mean, then a
    # transport that gives each class two of them) and gives the 40-degree one to class 1.
    support, support_labels = at_angles(10, 80), torch.tensor([0, 1])
    queries = at_angles(5, 15, 40, 85)
    assert predictions(NearestCentroid(), support, support_labels, queries) == [0, 0, 0, 1]
    assert predictions(PTMAP(), support, support_labels, queries) == [0, 0, 1, 1]


# ----- from the methods and from a config -----------------------------------------------------------------------------
def caltech_datamodule(dataset, episodes=3):
    return EpisodicDataModule(dataset, evaluation=EpisodeSpec(5, 1, 15), val_episodes=2, test_episodes=episodes)


def test_frozen_features_hand_the_training_split_features_to_simpleshot(caltech_subset32):
    torch.manual_seed(0)
    model = FrozenFeatures(Conv4(in_channels=3, hidden_channels=16), episode_classifier=SimpleShot())
    dm = caltech_datamodule(caltech_subset32)
    result = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(model, dm, verbose=False)[0]
    assert 0.0 <= result["test/acc"] <= 1.0
    train_images = caltech_subset32.load_split("train").images
    with torch.no_grad():
        expected = model.backbone.eval()(train_images.float() / 255).mean(dim=0)
    assert torch.allclose(model.episode_classifier.base_mean, expected, atol=1e-5)


@pytest.mark.parametrize(
    "classifier, arguments",
    [
        (SimpleShot, {}),
        (BDCSPN, {}),
        (TIM, {"steps": 20}),
        (LaplacianShot, {}),
        (PTMAP, {}),
    ],
)  # TIM's 1000 steps are tested above; 20 keep this run short
def test_each_classifier_evaluates_frozen_conv4_features(caltech_subset32, classifier, arguments):
    torch.manual_seed(0)
    model = FrozenFeatures(Conv4(in_channels=3, hidden_channels=16), episode_classifier=classifier(**arguments))
    dm = caltech_datamodule(caltech_subset32)
    result = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(model, dm, verbose=False)[0]
    assert 0.0 <= result["test/acc"] <= 1.0


def test_transfer_centres_on_its_backbone_features_of_the_training_split(caltech_subset32):
    torch.manual_seed(0)
    backbone = TimmBackbone("resnet18", pretrained=None, frozen=True, image_size=32)
    model = Transfer(backbone, num_base_classes=64, episode_classifier=SimpleShot())
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(
        model, caltech_datamodule(caltech_subset32), verbose=False
    )
    with torch.no_grad():
        expected = backbone.eval()(caltech_subset32.load_split("train").images.float() / 255).mean(dim=0)
    assert torch.allclose(model.episode_classifier.base_mean, expected, atol=1e-4)


SIMPLESHOT_CONFIG = """
seed_everything: 0
model:
  class_path: fsl_lightning.methods.FrozenFeatures
  init_args:
    backbone:
      class_path: fsl_lightning.backbones.Conv4
      init_args: {in_channels: 3, hidden_channels: 16}
    episode_classifier:
      class_path: fsl_lightning.methods.feature_classifiers.SimpleShot
      init_args: {feature_transform: CL2N}
data:
  dataset:
    class_path: fsl_lightning.data.Caltech101
    init_args: {image_size: 32}
  evaluation: {way: 5, shot: 1, query: 15}
  test_episodes: 3
trainer:
  accelerator: cpu
  enable_progress_bar: false
  logger: false
"""


@pytest.mark.usefixtures("data_root")
def test_simpleshot_runs_from_a_config_through_the_cli(tmp_path):
    config = tmp_path / "simpleshot.yaml"
    config.write_text(SIMPLESHOT_CONFIG)
    cli = main(["test", "--config", str(config), f"--trainer.default_root_dir={tmp_path}"])
    assert "test/acc" in cli.trainer.callback_metrics
    assert cli.model.episode_classifier.base_mean is not None  # CL2N got the training split's mean


def test_the_transductive_classifiers_say_so():
    """`predict` and the README rely on the flag: their scores depend on the queries scored together."""
    from fsl_lightning.methods.feature_classifiers import BDCSPN, PTMAP, TIM, LaplacianShot, SimpleShot

    assert all(cls.transductive for cls in (BDCSPN, TIM, LaplacianShot, PTMAP)) and not SimpleShot.transductive
