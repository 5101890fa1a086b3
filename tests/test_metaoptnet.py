"""MetaOptNet-SVM and its QP solver against independent answers: SciPy's solve of the same QP, the KKT conditions,
strong duality with the Crammer-Singer primal, finite differences, and a hand-solved maximum-margin case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from fsl_lightning.episode import Episode, SupportSet
from fsl_lightning.methods import MetaOptNet
from fsl_lightning.methods.metaoptnet import crammer_singer_dual
from fsl_lightning.methods.qp import solve_qp, solve_qp_interior_point

pytestmark = pytest.mark.usefixtures("one_thread")
DOUBLE = torch.float64


def random_qp(n=5, inequalities=4, equalities=2, seed=0):
    """A strictly convex QP with a feasible point x0 and some constraints active at its optimum (h = G x0 + 0 or
    a positive gap at random), batch of 1, float64."""
    generator = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=generator, dtype=DOUBLE)  # noqa: E731
    M = randn(n, n)
    Q = M @ M.T + 0.5 * torch.eye(n, dtype=DOUBLE)
    p, G, A, x0 = 3 * randn(n), randn(inequalities, n), randn(equalities, n), randn(n)
    h = G @ x0 + torch.rand(inequalities, generator=generator, dtype=DOUBLE)
    return tuple(t.unsqueeze(0) for t in (Q, p, G, h, A, A @ x0))


def scipy_qp(Q, p, G, h, A, b):
    """The same QP by SciPy's SLSQP (batch of 1), from the origin."""
    Q, p, G, h, A, b = (t[0].numpy() for t in (Q, p, G, h, A, b))
    result = minimize(
        lambda x: 0.5 * x @ Q @ x + p @ x,
        np.zeros(len(p)),
        jac=lambda x: Q @ x + p,
        method="SLSQP",
        constraints=[
            {"type": "ineq", "fun": lambda x: h - G @ x, "jac": lambda x: -G},
            {"type": "eq", "fun": lambda x: A @ x - b, "jac": lambda x: A},
        ],
        options={"ftol": 1e-12, "maxiter": 1000},
    )
    assert result.success, result.message
    return torch.from_numpy(result.x)


def test_the_solution_equals_scipys_and_meets_the_kkt_conditions():
    Q, p, G, h, A, b = random_qp()
    point = solve_qp_interior_point(Q, p, G, h, A, b, max_iter=50)
    torch.testing.assert_close(point.x[0], scipy_qp(Q, p, G, h, A, b), rtol=0, atol=1e-6)
    x, s, z, y = point.x[0], point.s[0], point.z[0], point.y[0]
    stationarity = Q[0] @ x + p[0] + G[0].T @ z + A[0].T @ y
    assert stationarity.abs().max() < 1e-9
    assert (G[0] @ x - h[0]).max() < 1e-9 and (A[0] @ x - b[0]).abs().max() < 1e-9  # primal feasibility
    assert z.min() >= 0 and (z * (h[0] - G[0] @ x)).abs().max() < 1e-9  # dual feasibility, complementarity
    assert ((z > 1e-6) & (s < 1e-6)).any()  # the case has active constraints


def test_the_svm_dual_equals_scipys_and_closes_the_crammer_singer_duality_gap():
    """The dual solve (C = 0.1, no diagonal term) against SciPy, and its weights w_m = sum_i alpha_im x_i against
    the Crammer-Singer primal 1/2 sum_m ||w_m||^2 + C sum_i max_m (w_m x_i + [m != y_i] - w_{y_i} x_i), whose
    value equals minus the dual's at the optimum."""
    generator = torch.Generator().manual_seed(4)
    way, shot, c_reg = 3, 2, 0.1
    features = torch.randn(way * shot, 5, generator=generator, dtype=DOUBLE)
    labels = torch.arange(way).repeat_interleave(shot)
    qp = crammer_singer_dual(features, labels, way, c_reg, diagonal=0.0)
    alpha = solve_qp(*qp, max_iter=50)
    # SciPy's active-set path needs a strictly convex objective: the dual is only PSD, so compare objectives
    reference = scipy_qp(*qp)
    Q, p = qp[0][0], qp[1][0]
    dual_value = lambda a: 0.5 * a @ Q @ a + p @ a  # noqa: E731
    assert abs(dual_value(alpha[0]) - dual_value(reference)) < 1e-7
    weights = alpha.view(len(features), way).T @ features  # [way, D]
    scores = features @ weights.T  # [S, way]
    margins = scores + (1 - F.one_hot(labels, way).to(DOUBLE)) - scores.gather(1, labels[:, None])
    primal = 0.5 * weights.pow(2).sum() + c_reg * margins.amax(dim=1).sum()
    assert abs(primal + dual_value(alpha[0])) < 1e-8
    assert (alpha.view(-1, way).sum(dim=1).abs() < 1e-10).all()


def test_the_gradient_through_the_solver_matches_finite_differences():
    Q, p, G, h, A, b = random_qp(seed=1)
    M = torch.linalg.cholesky(Q[0]).unsqueeze(0)  # Q = M M^T, perturbed through M so that it stays symmetric
    inputs = [t.clone().requires_grad_() for t in (M, p, G, h, A, b)]
    qp = lambda M, p, G, h, A, b: solve_qp(M @ M.transpose(-1, -2), p, G, h, A, b, max_iter=50)  # noqa: E731
    assert torch.autograd.gradcheck(qp, inputs, eps=1e-5, atol=1e-5, rtol=1e-3)


def test_the_gradient_through_the_svm_head_matches_finite_differences():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(6, 4, generator=generator, dtype=DOUBLE, requires_grad=True)
    queries = torch.randn(3, 4, generator=generator, dtype=DOUBLE)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])

    def logits(features):
        alpha = solve_qp(*crammer_singer_dual(features, labels, 3, 0.1, 1.0), max_iter=50).view(6, 3)
        return queries @ (alpha.T @ features).T

    assert torch.autograd.gradcheck(logits, (features,), eps=1e-5, atol=1e-5, rtol=1e-3)


def test_a_separable_2d_case_is_classified_by_the_maximum_margin_rule():
    """Class 1 at (1, 0) and (3, 4), class 0 at their negatives. The Crammer-Singer SVM has no bias, so its hard
    margin (large C, no diagonal term) is the line through the origin farthest from the points: x = 0, with
    w_1 = -w_0 = (1/2, 0) (the smallest w with (w_1 - w_0) . x >= 1 on class 1). The nearest-centroid rule
    (boundary x + y = 0) classifies both queries the other way."""
    model = MetaOptNet(torch.nn.Identity(), c_reg=100.0, qp_diagonal=0.0, double_precision=True, test_max_iter=30)
    model.eval()
    support = torch.tensor([[1.0, 0.0], [3.0, 4.0], [-1.0, 0.0], [-3.0, -4.0]])
    state = model.fit_support(SupportSet(support, torch.tensor([1, 1, 0, 0]), 2))
    torch.testing.assert_close(state.weights, torch.tensor([[-0.5, 0.0], [0.5, 0.0]]), rtol=0, atol=1e-6)
    queries = torch.tensor([[0.5, -2.0], [-0.5, 2.0]])
    assert model.score(state, queries).argmax(dim=1).tolist() == [1, 0]
    centroids = torch.stack([support[2:].mean(0), support[:2].mean(0)])
    assert torch.cdist(queries, centroids).argmin(dim=1).tolist() == [0, 1]


def test_the_reference_iteration_counts_and_its_qp_diagonal_are_the_defaults():
    model = MetaOptNet(torch.nn.Identity())
    assert (model.max_iter, model.test_max_iter, model.c_reg, model.qp_diagonal) == (15, 3, 0.1, 1.0)
    assert not model.double_precision and float(model.scale.detach()) == 1.0
    features, labels = torch.eye(2, dtype=DOUBLE), torch.tensor([0, 1])
    Q = crammer_singer_dual(features, labels, 2, 0.1, 1.0)[0][0]
    expected = torch.kron(features @ features.T, torch.eye(2, dtype=DOUBLE)) + torch.eye(4, dtype=DOUBLE)
    torch.testing.assert_close(Q, expected)


def test_training_smooths_the_labels_as_the_reference():
    """1 - eps on the true class, eps / (way - 1) on the others (train.py), plain cross-entropy in evaluation."""
    model = MetaOptNet(torch.nn.Identity())
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    episode = Episode(torch.zeros(3, 1), torch.arange(3), torch.zeros(1, 1), torch.tensor([0]), torch.arange(3))
    log_p = F.log_softmax(logits, dim=1)[0]
    model.train()
    assert torch.isclose(model.episode_loss(episode, logits), -(0.9 * log_p[0] + 0.05 * log_p[1] + 0.05 * log_p[2]))
    model.eval()
    assert torch.isclose(model.episode_loss(episode, logits), -log_p[0])


def test_the_backbone_and_the_scale_are_meta_learned_through_the_solver():
    torch.manual_seed(0)
    model = MetaOptNet(torch.nn.Linear(6, 5))
    model.train()
    support, queries = torch.randn(6, 6), torch.randn(6, 6)
    episode = Episode(support, torch.arange(3).repeat(2), queries, torch.arange(3).repeat(2), torch.arange(3))
    model.episode_loss(episode, model.episode_logits(episode)).backward()
    assert model.scale.grad is not None and model.backbone.weight.grad.abs().sum() > 0
    assert torch.isfinite(model.backbone.weight.grad).all()
