"""Episode classifiers and closed-form heads against hand-checked or independently computed answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from fsl_lightning.episode import Episode
from fsl_lightning.methods import R2D2
from fsl_lightning.methods.episode_classifiers import CosineProbe, LinearProbe, LogisticRegression, NearestCentroid
from fsl_lightning.methods.r2d2 import ridge_regression_weights


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
    model = R2D2(torch.nn.Flatten(), initial_lambda=2.0, initial_scale=3.0).double()
    with torch.no_grad():
        model.bias.fill_(0.5)
    support, labels, queries, query_labels = separable_episode()
    episode = Episode(support.double(), labels, queries.double(), query_labels, torch.arange(4))
    x = torch.cat([support, torch.ones(len(support), 1)], dim=1).double()
    xq = torch.cat([queries, torch.ones(len(queries), 1)], dim=1).double()
    w = torch.linalg.solve(x.T @ x + 2.0 * torch.eye(x.shape[1], dtype=torch.float64), x.T @ F.one_hot(labels, 4).double())
    assert torch.allclose(model.episode_logits(episode).double(), 3.0 * xq @ w + 0.5, atol=1e-5)


def test_r2d2_meta_learns_its_regulariser_and_scale():
    model = R2D2(torch.nn.Linear(16, 8))
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
        for classifier in (LinearProbe(steps=5), LogisticRegression(newton_steps=3)):
            assert classifier(support, labels, queries, 4).shape == (len(queries), 4)


def test_cosine_probe_scores_are_bounded_by_its_scale():
    support, labels, queries, _ = separable_episode()
    logits = CosineProbe(scale=7.0)(support, labels, queries, 4)
    assert logits.abs().max() <= 7.0 + 1e-5


def test_nearest_centroid_scores_cosines_to_normalised_class_means():
    support = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    queries = torch.tensor([[1.0, 1.0]])
    logits = NearestCentroid(scale=1.0)(support, labels, queries, 2)
    assert torch.allclose(logits, torch.tensor([[2**-0.5, 2**-0.5]]), atol=1e-6)


def test_logistic_regression_rejects_a_non_positive_c():
    with pytest.raises(ValueError, match="C must be positive"):
        LogisticRegression(C=0.0)
