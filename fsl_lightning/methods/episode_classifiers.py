"""Light classifiers fitted on one episode's support features, for methods that pre-train their features.

Each is a callable ``classifier(support, support_labels, queries, way, seed=None) -> logits [Q, way]`` on fixed
(detached) features; fitting runs with autograd enabled even inside Lightning's inference-mode evaluation
loops. Chosen in config by class path, e.g.
``episode_classifier: {class_path: fsl_lightning.methods.episode_classifiers.LogisticRegression}``.

Classifiers that draw random numbers (the probes' initialisation and mini-batch order) draw them all from a CPU
``torch.Generator`` seeded with the episode's ``seed`` (:attr:`fsl_lightning.episode.Episode.seed`), never from
the global RNG: the same episode gives the same logits after ``fit``, from a checkpoint, or in any DDP process.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fsl_lightning.adaptation.context import gradients_enabled
from fsl_lightning.methods.base import Prototypes
from fsl_lightning.methods.functional import class_prototypes, cosine_similarity_matrix

#: the seed of episodes that carry none (training batches, ``predict``), so that those are deterministic too
UNSEEDED_EPISODE_SEED = 0


def chen_cosine_scale(num_classes: int) -> float:
    """The fixed scale of Chen et al.'s cosine classifier (``distLinear``): 2 up to 200 classes, 10 above (their
    code's rule; more classes need sharper softmax inputs)."""
    return 2.0 if num_classes <= 200 else 10.0


def weight_normalised_cosine(features: Tensor, direction: Tensor, gain: Tensor, scale: float) -> Tensor:
    """Chen et al.'s Baseline++ scores ``scale * g_c * cos(x, v_c)``: features [N, D], class directions v [C, D]
    and learned class norms g [C] (weight normalisation, Salimans & Kingma 2016) -> [N, C].

    As their ``distLinear``: the features are divided by ``||x|| + 1e-5`` and the class weight ``g_c v_c / ||v_c||``
    keeps a learned norm, so a class can sharpen or soften its own scores.
    """
    unit_features = features / (features.norm(dim=1, keepdim=True) + 1e-5)
    weights = gain.unsqueeze(1) * F.normalize(direction, dim=1)
    return scale * unit_features @ weights.T


class EpisodeClassifier(ABC):
    """Fits a classifier on the support features and scores the queries.

    ``classifier(support, support_labels, queries, way, seed)`` does both at once; :meth:`fit` and :meth:`score`
    split them (fit a support set once, score queries as they come). A subclass implements either
    :meth:`fit_state` and :meth:`score_state` (the fit kept in a small state) or :meth:`fit_predict` alone:
    then the fit waits for the queries (:class:`SupportFeatures`), and a classifier that reads all the queries
    together (transductive) sets :attr:`transductive`.
    """

    #: whether the logits of a query depend on the other queries scored with it
    transductive: bool = False

    @property
    def needs_base_features(self) -> bool:
        """Whether :meth:`prepare` must be given the base classes' features before scoring (a feature transform
        centred on their mean); the method embeds its training split when an evaluation starts if so."""
        return False

    def prepare(self, base_features: Tensor) -> None:
        """Takes the features [M, D] of the training split's images (called only if :attr:`needs_base_features`)."""

    def __call__(
        self, support: Tensor, support_labels: Tensor, queries: Tensor, way: int, seed: int | None = None
    ) -> Tensor:
        return self.score(self.fit(support, support_labels, way, seed), queries)

    def fit(self, support: Tensor, support_labels: Tensor, way: int, seed: int | None = None) -> Any:
        """The classifier fitted on support features [S, D] with labels [S] in ``0..way-1``; ``seed`` drives any
        randomness of the fit (``None``: :data:`UNSEEDED_EPISODE_SEED`)."""
        seed = UNSEEDED_EPISODE_SEED if seed is None else seed
        with _fitting(support):
            support, support_labels = _fp32_copy(support), support_labels.clone()
            if self._fits_with_the_queries():
                return SupportFeatures(support, support_labels, way, seed)
            return self.fit_state(support, support_labels, way, episode_generator(seed))

    def score(self, state: Any, queries: Tensor) -> Tensor:
        """Logits [Q, way] of query features [Q, D] under a fitted classifier (``state`` of :meth:`fit`)."""
        with _fitting(queries):
            queries = _fp32_copy(queries)
            if isinstance(state, SupportFeatures):
                generator = episode_generator(state.seed)
                return self.fit_predict(state.support, state.labels, queries, state.way, generator)
            return self.score_state(state, queries)

    def fit_state(self, support: Tensor, support_labels: Tensor, way: int, generator: torch.Generator) -> Any:
        """The fitted state from fp32 support features [S, D] (outside inference mode, autograd on); any randomness
        comes from ``generator`` (CPU)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither fit_state nor fit_predict.")

    def score_state(self, state: Any, queries: Tensor) -> Tensor:
        """Logits [Q, way] of fp32 query features [Q, D] under the state of :meth:`fit_state`."""
        raise NotImplementedError(f"{type(self).__name__} implements neither score_state nor fit_predict.")

    def fit_predict(
        self, support: Tensor, support_labels: Tensor, queries: Tensor, way: int, generator: torch.Generator
    ) -> Tensor:
        """support [S, D], support_labels [S] in ``0..way-1``, queries [Q, D] -> logits [Q, way]; any randomness
        comes from ``generator`` (CPU). The one-step alternative to :meth:`fit_state` + :meth:`score_state`."""
        return self.score_state(self.fit_state(support, support_labels, way, generator), queries)

    def _fits_with_the_queries(self) -> bool:
        """Whether this class's most specific fitting code is a one-step :meth:`fit_predict` (written for, or
        overriding, a fit that has to see the queries), rather than :meth:`fit_state`."""

        def owner(name: str) -> type:
            return next(cls for cls in type(self).__mro__ if name in vars(cls))

        one_step = owner("fit_predict")
        return one_step is not EpisodeClassifier and issubclass(one_step, owner("fit_state"))


@dataclass(frozen=True)
class SupportFeatures:
    """The state of a classifier that fits only when it sees the queries (:meth:`EpisodeClassifier.fit_predict`):
    the fp32 support features [S, D], their labels [S], the way and the episode's seed."""

    support: Tensor
    labels: Tensor
    way: int
    seed: int


@dataclass(frozen=True)
class LinearWeights:
    """A fitted probe: its parameters (e.g. weight [way, D] and bias [way]) and the way."""

    parameters: tuple[Tensor, ...]
    way: int


def episode_generator(seed: int) -> torch.Generator:
    """The CPU generator that all of an episode's random draws come from."""
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def _fitting(features: Tensor) -> Iterator[None]:
    """Autograd on, even inside Lightning's inference-mode evaluation loops, and fp32 maths under mixed precision."""
    with gradients_enabled(), torch.autocast(features.device.type, enabled=False):
        yield


def _fp32_copy(features: Tensor) -> Tensor:
    # Fitting works on fp32 copies made outside inference mode: features from Lightning's evaluation loops are
    # inference tensors, which autograd refuses to save.
    return features.detach().float().clone()


class LinearProbe(EpisodeClassifier):
    """A new linear layer trained on the support features (Baseline, Chen et al. 2019).

    As their code (``BaselineFinetune.set_forward_adaptation``): ``epochs`` passes over the support set in
    shuffled mini-batches of ``batch_size`` (the last one smaller), SGD with lr 0.01, momentum 0.9, dampening
    0.9 and weight decay 1e-3 on every parameter, from PyTorch's default ``nn.Linear`` initialisation
    (uniform in ``+-1/sqrt(D)``). 5-way 1-shot is 100 x 2 steps, 5-shot 100 x 7.
    """

    def __init__(
        self,
        epochs: int = 100,
        batch_size: int = 4,
        lr: float = 0.01,
        momentum: float = 0.9,
        dampening: float = 0.9,
        weight_decay: float = 1e-3,
    ) -> None:
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs and batch_size must be at least 1, got {epochs} and {batch_size}.")
        self.epochs, self.batch_size = epochs, batch_size
        self.lr, self.momentum, self.dampening, self.weight_decay = lr, momentum, dampening, weight_decay

    def fit_state(self, support: Tensor, support_labels: Tensor, way: int, generator: torch.Generator) -> LinearWeights:
        initial = self.initial_parameters(support.shape[1], way, generator)
        parameters = [tensor.to(support.device).requires_grad_() for tensor in initial]
        optimiser = torch.optim.SGD(parameters, self.lr, self.momentum, self.dampening, self.weight_decay)
        for batch in self.mini_batches(len(support), generator):
            batch = batch.to(support.device)
            optimiser.zero_grad(set_to_none=True)
            F.cross_entropy(self.scores(parameters, support[batch], way), support_labels[batch]).backward()
            optimiser.step()
        return LinearWeights(tuple(parameter.detach() for parameter in parameters), way)

    def score_state(self, state: LinearWeights, queries: Tensor) -> Tensor:
        with torch.no_grad():
            return self.scores(list(state.parameters), queries, state.way)

    def mini_batches(self, count: int, generator: torch.Generator) -> list[Tensor]:
        """Support indices of every step: a fresh permutation per epoch, cut into chunks of ``batch_size``."""
        orders = [torch.randperm(count, generator=generator) for _ in range(self.epochs)]
        return [batch for order in orders for batch in order.split(self.batch_size)]

    def initial_parameters(self, dim: int, way: int, generator: torch.Generator) -> list[Tensor]:
        """Weight [way, D] and bias [way], uniform in ``+-1/sqrt(D)`` as ``nn.Linear``'s default."""
        bound = 1 / math.sqrt(dim)
        return [_uniform((way, dim), bound, generator), _uniform((way,), bound, generator)]

    def scores(self, parameters: list[Tensor], features: Tensor, way: int) -> Tensor:
        weight, bias = parameters
        return features @ weight.T + bias


class CosineProbe(LinearProbe):
    """Baseline++'s episode classifier (Chen et al. 2019): their ``distLinear`` trained like :class:`LinearProbe`.

    Scores ``scale * g_c * cos(x, v_c)`` (:func:`weight_normalised_cosine`): a direction ``v_c`` and a learned
    norm ``g_c`` per class (weight normalisation, ``g`` starting at ``||v_c||``), no bias. ``scale`` defaults to
    their rule for the episode's ``way`` (:func:`chen_cosine_scale`: 2 for 5-way).
    """

    def __init__(
        self,
        epochs: int = 100,
        batch_size: int = 4,
        lr: float = 0.01,
        momentum: float = 0.9,
        dampening: float = 0.9,
        weight_decay: float = 1e-3,
        scale: float | None = None,
    ) -> None:
        super().__init__(epochs, batch_size, lr, momentum, dampening, weight_decay)
        self.scale = scale

    def initial_parameters(self, dim: int, way: int, generator: torch.Generator) -> list[Tensor]:
        """Direction [way, D] as ``nn.Linear``'s default weight, gain [way] its row norms."""
        direction = _uniform((way, dim), 1 / math.sqrt(dim), generator)
        return [direction, direction.norm(dim=1)]

    def scores(self, parameters: list[Tensor], features: Tensor, way: int) -> Tensor:
        direction, gain = parameters
        scale = chen_cosine_scale(way) if self.scale is None else self.scale
        return weight_normalised_cosine(features, direction, gain, scale)


class LogisticRegression(EpisodeClassifier):
    """Multinomial logistic regression on L2-normalised features (RFS, Tian et al. 2020).

    Minimises ``sum_i CE(W x_i + b, y_i) + ||W||^2 / (2 C)`` (bias not penalised): the objective of
    scikit-learn's ``LogisticRegression(C=C)`` that the RFS code uses. The optimum is unique, so any exact solver
    gives the same classifier; this one is fast on a GPU and never waits on the host:

    * the optimal ``W`` lies in the span of the support features (a component orthogonal to them adds to the
      penalty and nothing to the data term), so ``W = B X`` with ``B`` [way, S]: ``way * (S + 1)`` unknowns
      (130 for 5-way 5-shot) instead of ``way * (D + 1)``;
    * in those few unknowns, ``newton_steps`` Newton steps with the exact Hessian (float64, a small ridge
      keeping it invertible along directions that do not change the classifier) converge to machine precision;
      a fixed count keeps the fit free of data-dependent control flow.
    """

    def __init__(self, C: float = 1.0, normalize: bool = True, newton_steps: int = 20) -> None:
        if C <= 0:
            raise ValueError(f"The inverse regularisation strength C must be positive, got {C}.")
        if newton_steps < 1:
            raise ValueError(f"newton_steps must be at least 1, got {newton_steps}.")
        self.C, self.normalize, self.newton_steps = C, normalize, newton_steps

    def fit_state(self, support: Tensor, support_labels: Tensor, way: int, generator: torch.Generator) -> LinearWeights:
        if self.normalize:
            support = F.normalize(support, dim=-1)
        support64 = support.double()
        gram = support64 @ support64.T  # [S, S]
        coefficients = self.fit_coefficients(gram, support_labels, way)
        return LinearWeights((coefficients[:, :-1] @ support64, coefficients[:, -1]), way)  # W = B X, b (float64)

    def score_state(self, state: LinearWeights, queries: Tensor) -> Tensor:
        if self.normalize:
            queries = F.normalize(queries, dim=-1)
        weights, bias = state.parameters
        return (queries.double() @ weights.T + bias).to(queries.dtype)

    def fit_coefficients(self, gram: Tensor, labels: Tensor, way: int) -> Tensor:
        """``[B | b]`` [way, S + 1] minimising the objective written in the span of the support features.

        With ``Phi = [K | 1]`` [S, S + 1] the logits are ``Phi [B | b]^T``; gradient and Hessian are written out
        (softmax cross-entropy: ``(P - Y)^T Phi`` and ``sum_i (diag p_i - p_i p_i^T) (x) phi_i phi_i^T``; the
        penalty ``tr(B K B^T) / 2C`` adds ``B K / C`` and ``K / C`` on each class's block).
        """
        count = len(gram)
        targets = F.one_hot(labels, way).to(gram.dtype)
        design = torch.cat([gram, torch.ones(count, 1, dtype=gram.dtype, device=gram.device)], dim=1)  # Phi
        penalty = torch.zeros(count + 1, count + 1, dtype=gram.dtype, device=gram.device)
        penalty[:count, :count] = gram / self.C
        penalty_hessian = torch.block_diag(*[penalty] * way)
        ridge = 1e-9 * torch.eye(way * (count + 1), dtype=gram.dtype, device=gram.device)
        theta = torch.zeros(way, count + 1, dtype=gram.dtype, device=gram.device)
        for _ in range(self.newton_steps):
            probabilities = (design @ theta.T).softmax(dim=-1)  # [S, way]
            gradient = (probabilities - targets).T @ design + theta @ penalty
            curvature = torch.diag_embed(probabilities) - probabilities.unsqueeze(2) * probabilities.unsqueeze(1)
            hessian = torch.einsum("ikl,ij,im->kjlm", curvature, design, design).reshape(ridge.shape)
            step = torch.linalg.solve(hessian + penalty_hessian + ridge, gradient.reshape(-1))
            theta = theta - step.view(way, count + 1)
        return theta


class NearestCentroid(EpisodeClassifier):
    """Cosine similarity to the class means of L2-normalised support features (no fitting at all)."""

    def __init__(self, scale: float = 10.0) -> None:
        self.scale = scale

    def fit_state(self, support: Tensor, support_labels: Tensor, way: int, generator: torch.Generator) -> Prototypes:
        """The class means of the L2-normalised support features."""
        return Prototypes(class_prototypes(F.normalize(support, dim=-1), support_labels, way))

    def score_state(self, state: Prototypes, queries: Tensor) -> Tensor:
        return self.scale * cosine_similarity_matrix(queries, state.prototypes)


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> Tensor:
    return (2 * torch.rand(shape, generator=generator) - 1) * bound
