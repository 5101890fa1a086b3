"""A batched, differentiable solver of small dense quadratic programs (for MetaOptNet's SVM head).

    minimise 1/2 x^T Q x + p^T x   subject to   G x <= h,   A x = b          (one problem per batch element)

Forward: the primal-dual interior-point method with Mehrotra's predictor-corrector steps, as OptNet's solver
(Amos & Kolter, ICML 2017; the ``qpth`` package that MetaOptNet's reference code calls) and CVXOPT run it: the same
starting point, step rule, centring and stopping rule, so that a truncated solve (MetaOptNet stops after 15
iterations in training, 3 at test) returns what qpth's would up to rounding. Backward: implicit differentiation
of the KKT conditions at the returned point (Amos & Kolter, eq. 6-8), one linear solve per backward pass.

Written here rather than depending on ``qpth``: its last release (0.0.18, 2024) factorises with the deprecated
``Tensor.lu`` / ``Tensor.lu_solve`` API, keeps a module-level cache between calls and prints its warnings; this
module is the same algorithm on ``torch.linalg``. Dense and meant for small problems (a few hundred variables).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: qpth's defaults: stop when every problem's residual is below EPS, or after NOT_IMPROVED_LIMIT iterations
#: without any problem's residual improving
EPS = 1e-12
NOT_IMPROVED_LIMIT = 3


@dataclass
class _Point:
    """A primal-dual point: x [B, n], slacks s = h - G x [B, m], inequality duals z [B, m], equality duals y [B, p]."""

    x: Tensor
    s: Tensor
    z: Tensor
    y: Tensor

    def moved(self, step: _Point, alpha: Tensor) -> _Point:
        a = alpha.unsqueeze(1)
        return _Point(self.x + a * step.x, self.s + a * step.s, self.z + a * step.z, self.y + a * step.y)


def _mv(matrix: Tensor, vector: Tensor) -> Tensor:
    """Batched matrix-vector product: [B, r, c] x [B, c] -> [B, r]."""
    return (matrix @ vector.unsqueeze(-1)).squeeze(-1)


def _reduced_kkt(Q: Tensor, G: Tensor, A: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """LU factors of [[Q + G^T diag(d) G, A^T], [A, 0]], the KKT matrix once the slacks and inequality duals are
    eliminated (d = z / s). The same matrix serves the forward Newton steps and the backward pass."""
    p = A.shape[-2]
    top = torch.cat([Q + G.transpose(-1, -2) @ (d.unsqueeze(-1) * G), A.transpose(-1, -2)], dim=-1)
    bottom = torch.cat([A, A.new_zeros(A.shape[0], p, p)], dim=-1)
    return torch.linalg.lu_factor(torch.cat([top, bottom], dim=-2))


def _newton_step(factors, G: Tensor, s: Tensor, z: Tensor, rx: Tensor, rc: Tensor, rz: Tensor, ry: Tensor) -> _Point:
    """Solves the linearised KKT system for a step (dx, ds, dz, dy):

        Q dx + G^T dz + A^T dy = -rx,   z * ds + s * dz = rc,   G dx + ds = -rz,   A dx = -ry

    by eliminating ds = -rz - G dx and dz = (rc + z * rz) / s + (z / s) * G dx (``factors`` from
    :func:`_reduced_kkt` with d = z / s).
    """
    n = rx.shape[-1]
    t = (rc + z * rz) / s
    rhs = torch.cat([-rx - _mv(G.transpose(-1, -2), t), -ry], dim=-1)
    solution = torch.linalg.lu_solve(*factors, rhs.unsqueeze(-1)).squeeze(-1)
    dx, dy = solution[:, :n], solution[:, n:]
    gdx = _mv(G, dx)
    return _Point(dx, -rz - gdx, t + (z / s) * gdx, dy)


def _step_to_boundary(v: Tensor, dv: Tensor) -> Tensor:
    """Largest alpha keeping v + alpha dv >= 0 (v > 0), per problem (``inf`` when no entry decreases)."""
    ratio = torch.where(dv < 0, -v / dv, torch.full_like(v, float("inf")))
    return ratio.amin(dim=-1)


def _initial_point(Q: Tensor, p: Tensor, G: Tensor, h: Tensor, A: Tensor, b: Tensor) -> _Point:
    """qpth's and CVXOPT's start: x, y minimise 1/2 x^T Q x + p^T x + 1/2 ||h - G x||^2 subject to A x = b,
    s = h - G x and z = -s, then s and z are each shifted (per problem) so that their smallest entry is 1 where it
    is not positive."""
    ones = torch.ones_like(h)
    factors = _reduced_kkt(Q, G, A, ones)
    start = _newton_step(factors, G, ones, ones, p, torch.zeros_like(h), -h, -b)

    def shifted(v: Tensor) -> Tensor:
        lowest = v.amin(dim=-1, keepdim=True)
        return torch.where(lowest <= 0, v - lowest + 1, v)

    return _Point(start.x, shifted(start.s), shifted(start.z), start.y)


def _residuals(Q, p, G, h, A, b, point: _Point) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Dual residual rx, primal residuals rz and ry, and the duality measure mu = s.z / m."""
    rx = _mv(Q, point.x) + p + _mv(G.transpose(-1, -2), point.z) + _mv(A.transpose(-1, -2), point.y)
    rz = _mv(G, point.x) + point.s - h
    ry = _mv(A, point.x) - b
    mu = (point.s * point.z).sum(dim=-1).abs() / h.shape[-1]
    return rx, rz, ry, mu


def solve_qp_interior_point(
    Q: Tensor, p: Tensor, G: Tensor, h: Tensor, A: Tensor, b: Tensor, max_iter: int = 20
) -> _Point:
    """The primal-dual interior-point method (Mehrotra predictor-corrector), without gradients.

    Evaluates at most ``max_iter`` points (the start and up to ``max_iter - 1`` steps) and returns, per problem,
    the one with the smallest residual ``||rz|| + ||ry|| + ||rx|| + m mu``, as qpth does with ``maxIter``: its loop
    also evaluates ``maxIter`` points (the step taken after the last evaluation is never used). Stops early, as
    qpth, when every residual is below :data:`EPS` or none has improved for :data:`NOT_IMPROVED_LIMIT` iterations.
    """
    point = _initial_point(Q, p, G, h, A, b)
    best, best_residual, not_improved = point, None, 0
    for iteration in range(max_iter):
        rx, rz, ry, mu = _residuals(Q, p, G, h, A, b, point)
        residual = rz.norm(dim=-1) + ry.norm(dim=-1) + rx.norm(dim=-1) + h.shape[-1] * mu
        if best_residual is None:
            best, best_residual = point, residual
        else:
            improved = residual < best_residual  # NaN (a breakdown) never counts as an improvement
            not_improved = 0 if bool(improved.any()) else not_improved + 1
            best = _Point(
                *(
                    torch.where(improved.unsqueeze(1), new, old)
                    for new, old in zip((point.x, point.s, point.z, point.y), (best.x, best.s, best.z, best.y))
                )
            )
            best_residual = torch.where(improved, residual, best_residual)
        if not_improved == NOT_IMPROVED_LIMIT or bool(best_residual.max() < EPS) or iteration == max_iter - 1:
            break
        point = _mehrotra_step(Q, G, A, point, rx, rz, ry, mu)
    return best


def _mehrotra_step(Q, G, A, point: _Point, rx, rz, ry, mu) -> _Point:
    """One predictor-corrector step: the affine (predictor) direction, the centring weight sigma from how far it
    gets, then the corrector direction, and a step of 0.999 of the way to the boundary (at most 1)."""
    s, z = point.s, point.z
    factors = _reduced_kkt(Q, G, A, z / s)
    affine = _newton_step(factors, G, s, z, rx, -s * z, rz, ry)
    alpha = torch.minimum(_step_to_boundary(z, affine.z), _step_to_boundary(s, affine.s)).clamp(max=1.0).unsqueeze(1)
    sigma = (((s + alpha * affine.s) * (z + alpha * affine.z)).sum(-1) / (s * z).sum(-1)) ** 3
    centring = (sigma * mu).unsqueeze(1) - affine.s * affine.z
    zero = torch.zeros_like
    corrector = _newton_step(factors, G, s, z, zero(rx), centring, zero(rz), zero(ry))
    direction = _Point(
        *(
            a + c
            for a, c in zip(
                (affine.x, affine.s, affine.z, affine.y), (corrector.x, corrector.s, corrector.z, corrector.y)
            )
        )
    )
    alpha = 0.999 * torch.minimum(_step_to_boundary(z, direction.z), _step_to_boundary(s, direction.s))
    return point.moved(direction, alpha.clamp(max=1.0))


class QPFunction(torch.autograd.Function):
    """x*(Q, p, G, h, A, b), differentiable in all six (each batched: Q [B, n, n] symmetric positive
    semi-definite, p [B, n], G [B, m, n], h [B, m], A [B, k, n], b [B, k]).

    Backward (Amos & Kolter 2017, eq. 7-8, with the slacks s = h - G x* and duals z, y of the solve): solve

        [[Q, G^T diag(z), A^T], [G, -diag(s), 0], [A, 0, 0]] [dx; dz; dy] = [-grad_x; 0; 0]

    (eliminating dz = (z / s) G dx, the forward's reduced KKT matrix), then grad_Q = (dx x^T + x dx^T) / 2,
    grad_p = dx, grad_G = (z dz_) x^T + z dx^T with dz_ = G dx / s, grad_h = -z dz_, grad_A = dy x^T + y dx^T,
    grad_b = -dy.
    """

    @staticmethod
    def forward(ctx, Q, p, G, h, A, b, max_iter):
        solution = solve_qp_interior_point(Q, p, G, h, A, b, max_iter)
        ctx.save_for_backward(Q, G, A, solution.x, solution.s, solution.z, solution.y)
        return solution.x

    @staticmethod
    def backward(ctx, grad_x):
        Q, G, A, x, s, z, y = ctx.saved_tensors
        n = x.shape[-1]
        d = z / s
        factors = _reduced_kkt(Q, G, A, d)
        rhs = torch.cat([-grad_x, grad_x.new_zeros(A.shape[0], A.shape[-2])], dim=-1)
        solution = torch.linalg.lu_solve(*factors, rhs.unsqueeze(-1)).squeeze(-1)
        dx, dy = solution[:, :n], solution[:, n:]
        z_dz = d * _mv(G, dx)  # diag(z) dz
        outer = lambda u, v: u.unsqueeze(-1) * v.unsqueeze(-2)  # noqa: E731
        grads = (
            (outer(dx, x) + outer(x, dx)) / 2,
            dx,
            outer(z_dz, x) + outer(z, dx),
            -z_dz,
            outer(dy, x) + outer(y, dx),
            -dy,
        )
        return (*(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[:6])), None)


def solve_qp(Q: Tensor, p: Tensor, G: Tensor, h: Tensor, A: Tensor, b: Tensor, max_iter: int = 20) -> Tensor:
    """The minimiser x* [B, n] of 1/2 x^T Q x + p^T x subject to G x <= h and A x = b (batched, see
    :class:`QPFunction`), differentiable through the KKT conditions. ``max_iter``: interior-point iterations
    (points evaluated), qpth's ``maxIter``; fewer give a cheaper, less exact solution."""
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}.")
    return QPFunction.apply(Q, p, G, h, A, b, max_iter)
