"""Episode classifiers and closed-form heads against hand-checked or independently computed answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from fsl_lightning.episode import Episode
from fsl_lightning.methods import R2D2, Baseline, BaselinePlusPlus
from fsl_lightning.methods.episode_classifiers import (
    CosineProbe,
    LinearProbe,
    LogisticRegression,
    NearestCentroid,
    chen_cosine_scale,
    weight_normalised_cosine,
)
from fsl_lightning.methods.r2d2 import ridge_regression_weights
from fsl_lightning.methods.transfer import CosineClassifier


def separable_episode(way=4, shot=3, queries_per_class=5, dim=16, seed=0):
    """Classes around well-separated centres (along different axes), with small noise."""
    generator = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.eye(dim)[:way]
    labels = torch.arange(way).repeat_interleave(shot)
    query_labels = torch.arange(way).repeat_interleave(queries_per_class)
    support = centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=generator)
    queries = centres[query_labels] + 0.3 * torch.randn(len(query_labels), dim, generator=generator)
    return support, labels, queries, query_labels


def test_ridge_weights_equal_the_primal_normal_equations():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(10, 30, generator=generator, dtype=torch.float64)
    targets = F.one_hot(torch.arange(5).repeat(2), 5).double()
    lam = 0.7
    primal = torch.linalg.solve(features.T @ features + lam * torch.eye(30, dtype=torch.float64), features.T @ targets)
    assert torch.allclose(ridge_regression_weights(features, targets, lam), primal, atol=1e-10)


def test_r2d2_logits_are_scaled_ridge_predictions_with_an_intercept():
    """``plain`` scaling: the ridge term is lambda itself, as the paper's Eq. 6 reads."""
    model = R2D2(torch.nn.Flatten(), initial_lambda=2.0, initial_scale=3.0, regulariser_scaling="plain").double()
    with torch.no_grad():
        model.bias.fill_(0.5)
    support, labels, queries, query_labels = separable_episode()
    episode = Episode(support.double(), labels, queries.double(), query_labels, torch.arange(4))
    x = torch.cat([support, torch.ones(len(support), 1)], dim=1).double()
    xq = torch.cat([queries, torch.ones(len(queries), 1)], dim=1).double()
    w = torch.linalg.solve(
        x.T @ x + 2.0 * torch.eye(x.shape[1], dtype=torch.float64), x.T @ F.one_hot(labels, 4).double()
    )
    assert torch.allclose(model.episode_logits(episode).double(), 3.0 * xq @ w + 0.5, atol=1e-5)


def reference_r2d2_logits(support, labels, queries, way, lam, scale, bias):
    """bertinetto/r2d2's RRNet.loss, step by step (``fewshots/models/r2d2.py``, Woodbury branch): ones appended
    to the support features, features and one-hot targets divided by sqrt(S), W = X^T (X X^T + lambda I)^-1 Y,
    query scores z_q w + b (the queries unscaled, no ones column), then the AdjustLayer: scale * out + bias."""
    count = len(support)
    x = torch.cat([support, torch.ones(count, 1, dtype=support.dtype)], 1) / count**0.5
    y = F.one_hot(labels, way).to(support.dtype) / count**0.5
    wb = x.T @ torch.inverse(x @ x.T + lam * torch.eye(count, dtype=support.dtype)) @ y
    w, b = wb[:-1], wb[-1:]
    return (queries @ w + b) * scale + bias


@pytest.mark.parametrize("shot", [1, 3])
def test_r2d2_matches_the_reference_solver_on_the_same_features(shot):
    """The default head against the authors' computation: a plain lambda (this project before) would not match."""
    model = R2D2(torch.nn.Flatten(), initial_scale=10.0).double()
    with torch.no_grad():
        model.bias.fill_(0.25)
    support, labels, queries, query_labels = separable_episode(way=5, shot=shot)
    support, queries = support.double(), queries.double()
    ours = model.episode_logits(Episode(support, labels, queries, query_labels, torch.arange(5)))
    reference = reference_r2d2_logits(support, labels, queries, 5, 50.0, 10.0, 0.25)
    assert torch.allclose(ours.double(), reference, atol=1e-5)  # features are embedded in float32
    plain = R2D2(torch.nn.Flatten(), initial_scale=10.0, regulariser_scaling="plain").double()
    with torch.no_grad():
        plain.bias.fill_(0.25)
    assert not torch.allclose(
        plain.episode_logits(Episode(support, labels, queries, query_labels, torch.arange(5))).double(),
        reference,
        atol=1e-3,
    )


def test_r2d2_defaults_are_the_reference_configuration():
    """bertinetto/r2d2's fewshots.yaml: lambda fixed at 50, the logit scale from 1e-4 and the bias from 0."""
    model = R2D2(torch.nn.Flatten())
    assert not model.log_lambda.requires_grad and model.log_lambda.exp().item() == pytest.approx(50.0)
    assert model.scale.item() == pytest.approx(1e-4) and model.bias.item() == 0.0
    assert model.regulariser_scaling == "per_support_image"


def test_r2d2_meta_learns_its_regulariser_and_scale_when_asked():
    model = R2D2(torch.nn.Linear(16, 8), learn_lambda=True)
    support, labels, queries, query_labels = separable_episode()
    logits = model.episode_logits(Episode(support, labels, queries, query_labels, torch.arange(4)))
    F.cross_entropy(logits, query_labels).backward()
    assert model.log_lambda.grad is not None and model.scale.grad is not None and model.bias.grad is not None


@pytest.mark.parametrize("shot, dim", [(4, 6), (2, 40)])  # more support images than dimensions, and fewer
def test_logistic_regression_reaches_the_optimum_of_its_objective(shot, dim):
    """The fit against SciPy's optimiser on the same (sklearn) objective over all of W and b, in float64."""
    support, labels, queries, _ = separable_episode(way=3, shot=shot, dim=dim, seed=2)
    support = support + 0.8 * torch.randn(support.shape, generator=torch.Generator().manual_seed(3))  # overlap
    classifier = LogisticRegression(C=0.5)
    ours = classifier(support, labels, queries, 3)

    x = F.normalize(support, dim=-1).double().numpy()
    y = labels.numpy()
    size = 3 * dim

    def objective(params):
        w, b = params[:size].reshape(3, dim), params[size:]
        logits = x @ w.T + b
        log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        return (log_z - logits[np.arange(len(y)), y]).sum() + (w**2).sum() / (2 * 0.5)

    solution = minimize(objective, np.zeros(size + 3), method="BFGS", options={"gtol": 1e-10}).x
    expected = F.normalize(queries, dim=-1).double().numpy() @ solution[:size].reshape(3, dim).T + solution[size:]
    # logits are defined up to a constant per query (softmax), so compare centred logits
    centred = lambda z: z - z.mean(1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(centred(ours.double().numpy()), centred(expected), atol=1e-5)


@pytest.mark.parametrize("classifier", [LinearProbe(), CosineProbe(), LogisticRegression(), NearestCentroid()])
def test_every_classifier_solves_a_separable_episode(classifier):
    support, labels, queries, query_labels = separable_episode()
    logits = classifier(support, labels, queries, 4)
    assert logits.shape == (len(queries), 4)
    assert (logits.argmax(dim=-1) == query_labels).all()


def test_classifiers_fit_inference_mode_features_as_lightning_evaluation_gives_them():
    support, labels, queries, query_labels = separable_episode()
    with torch.inference_mode():
        support, labels, queries = support.clone(), labels.clone(), queries.clone()
        for classifier in (LinearProbe(epochs=5), LogisticRegression(newton_steps=3)):
            assert classifier(support, labels, queries, 4).shape == (len(queries), 4)


def test_weight_normalised_cosine_is_scale_times_class_norm_times_cosine():
    # hand-checked: x = (3, 4) has norm 5; class 0 direction (1, 0) with norm 2, class 1 direction (0, 5) with norm 1
    features = torch.tensor([[3.0, 4.0]])
    direction, gain = torch.tensor([[1.0, 0.0], [0.0, 5.0]]), torch.tensor([2.0, 1.0])
    scores = weight_normalised_cosine(features, direction, gain, scale=2.0)
    expected = torch.tensor([[2.0 * 2.0 * 3 / (5 + 1e-5), 2.0 * 1.0 * 4 / (5 + 1e-5)]])
    assert torch.allclose(scores, expected, atol=1e-6)


def test_chen_scale_is_two_up_to_200_classes_and_ten_above():
    assert (chen_cosine_scale(5), chen_cosine_scale(200), chen_cosine_scale(201)) == (2.0, 2.0, 10.0)
    head = CosineClassifier(8, 64)  # Baseline++ pre-training over 64 base classes
    assert head.scale == 2.0
    assert torch.allclose(head.gain, head.direction.norm(dim=1))  # weight norm starts at the initial norm


def reference_chen_probe(support, labels, queries, way, generator, cosine):
    """Chen et al.'s ``set_forward_adaptation`` written independently with torch modules: ``nn.Linear`` (or a
    bias-free one under ``torch.nn.utils.parametrizations.weight_norm`` with scale 2 for Baseline++), SGD with
    dampening, 100 epochs of shuffled mini-batches of 4. Initial weights and permutations are drawn from
    ``generator`` in the order the probe documents (weights, [bias], then one permutation per epoch)."""
    dim, bound = support.shape[1], 1 / support.shape[1] ** 0.5
    layer = torch.nn.Linear(dim, way, bias=not cosine)
    with torch.no_grad():
        layer.weight.copy_((2 * torch.rand(way, dim, generator=generator) - 1) * bound)
        if not cosine:
            layer.bias.copy_((2 * torch.rand(way, generator=generator) - 1) * bound)
    if cosine:
        layer = torch.nn.utils.parametrizations.weight_norm(layer, dim=0)

    def scores(features):
        if not cosine:
            return layer(features)
        return 2.0 * layer(features / (features.norm(dim=1, keepdim=True) + 1e-5))

    optimiser = torch.optim.SGD(layer.parameters(), lr=0.01, momentum=0.9, dampening=0.9, weight_decay=1e-3)
    for _ in range(100):
        order = torch.randperm(len(support), generator=generator)
        for start in range(0, len(support), 4):
            batch = order[start : start + 4]
            optimiser.zero_grad()
            F.cross_entropy(scores(support[batch]), labels[batch]).backward()
            optimiser.step()
    with torch.no_grad():
        return scores(queries)


@pytest.mark.parametrize("probe, cosine", [(LinearProbe(), False), (CosineProbe(), True)])
def test_probes_match_chen_et_al_mini_batch_sgd_on_the_same_draws(one_thread, probe, cosine):
    support, labels, queries, _ = separable_episode(way=5, shot=3, dim=12)
    expected = reference_chen_probe(support, labels, queries, 5, torch.Generator().manual_seed(11), cosine)
    assert torch.allclose(probe(support, labels, queries, 5, seed=11), expected, atol=1e-5)


@pytest.mark.parametrize("probe", [LinearProbe(epochs=3), CosineProbe(epochs=3)])
def test_probe_randomness_comes_from_the_episode_seed_and_never_the_global_rng(probe):
    support, labels, queries, _ = separable_episode()
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    first = probe(support, labels, queries, 4, seed=5)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG was not drawn from
    torch.manual_seed(123)
    assert torch.equal(probe(support, labels, queries, 4, seed=5), first)
    assert not torch.allclose(probe(support, labels, queries, 4, seed=6), first)
    torch.manual_seed(7)
    unseeded = probe(support, labels, queries, 4)
    torch.manual_seed(8)
    assert torch.equal(probe(support, labels, queries, 4), unseeded)  # predict (no seed) is deterministic too


@pytest.mark.parametrize("method", [Baseline, BaselinePlusPlus])
def test_transfer_episodes_fit_their_probe_from_the_episode_seed(method):
    torch.manual_seed(0)
    model = method(torch.nn.Flatten(), num_base_classes=4, feature_dim=16).eval()
    support, labels, queries, query_labels = separable_episode()

    def episode(seed):
        return Episode(
            support.view(-1, 1, 4, 4), labels, queries.view(-1, 1, 4, 4), query_labels, torch.arange(4), seed=seed
        )

    torch.manual_seed(1)
    first = model.episode_logits(episode(3))
    torch.manual_seed(2)
    assert torch.equal(model.episode_logits(episode(3)), first)
    assert not torch.allclose(model.episode_logits(episode(4)), first)


def test_nearest_centroid_scores_cosines_to_normalised_class_means():
    support = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    queries = torch.tensor([[1.0, 1.0]])
    logits = NearestCentroid(scale=1.0)(support, labels, queries, 2)
    assert torch.allclose(logits, torch.tensor([[2**-0.5, 2**-0.5]]), atol=1e-6)


def test_logistic_regression_rejects_a_non_positive_c():
    with pytest.raises(ValueError, match="C must be positive"):
        LogisticRegression(C=0.0)
