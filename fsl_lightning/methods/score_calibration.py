"""Scores that do not overclaim: a temperature and an outlier threshold, both fitted on validation episodes.

A method's ``probability`` is a softmax over the support classes; trained with cross-entropy, it is often
over-confident, and it says nothing of a query that resembles none of the classes (a blank page, noise): ProtoNet's
softmax of negative distances is unchanged when every class is equally far. Two numbers, fitted on the logits of
every validation episode of ``fit`` or ``validate`` and saved in the checkpoint (key :data:`CHECKPOINT_KEY`), fix
what they can:

* **temperature** T (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): the probability becomes
  ``softmax(logits / T)``, with the T (between :data:`MIN_TEMPERATURE` and :data:`MAX_TEMPERATURE`) that minimises
  the validation queries' negative log-likelihood. It changes no prediction, only how sure each one says it is.
* **outlier threshold**: the largest logit of a query is how close it is to its nearest class (minus the squared
  distance to the nearest prototype in ProtoNet); a query whose largest logit is below the lowest
  :data:`OUTLIER_QUANTILE` of the validation queries' is farther from every class than 99% of the validation
  queries were from theirs, and is marked as an outlier (the maximum-logit score of Hendrycks et al., "Scaling
  Out-of-Distribution Detection for Real-World Settings", ICML 2022).

Both are fitted on the validation queries' logits, gathered from every DDP rank and sorted
(:class:`ScoreCalibrationFit`), so ranks that each validate a share of the episodes fit the same numbers as one
process. A run without validation episodes (trained on the
validation classes too, as the main job) has neither: its probabilities are the plain softmax, and no query is
marked.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric

#: the range of the fitted temperature (a validation set classified without error would drive it to 0)
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0
#: the share of validation queries whose largest logit falls below the outlier threshold
OUTLIER_QUANTILE = 0.01
#: where a checkpoint keeps the fitted calibration (plain floats)
CHECKPOINT_KEY = "fsl_score_calibration"


class ScoreCalibration(NamedTuple):
    """A temperature for the softmax and an outlier threshold on the largest logit, fitted on ``episodes``
    validation episodes (``queries`` queries in all). (A named tuple, as torchmetrics returns it from
    ``compute()``.)"""

    temperature: float
    outlier_max_logit: float
    episodes: int
    queries: int

    def probabilities(self, logits: Tensor) -> Tensor:
        return (logits.float() / self.temperature).softmax(dim=-1)

    def outliers(self, logits: Tensor) -> Tensor:
        """Whether each query [Q] is farther from every class than the validation queries were from theirs."""
        return logits.float().max(dim=-1).values < self.outlier_max_logit

    def description(self) -> str:
        return (
            f"softmax(logits / {self.temperature:.3g}), the temperature fitted on {self.episodes} validation "
            f"episodes; a query whose largest logit is under {self.outlier_max_logit:.4g} (the lowest "
            f"{100 * OUTLIER_QUANTILE:g}% of the validation queries') is marked as an outlier"
        )

    def to_checkpoint(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> ScoreCalibration | None:
        entry = saved.get(CHECKPOINT_KEY)
        return cls(**entry) if entry else None


class ScoreCalibrationFit(Metric):
    """Collects the validation queries' logits and labels; ``compute()`` fits the :class:`ScoreCalibration` (or
    gives ``None`` without a query).

    The negative log-likelihood of ``softmax(beta * logits)`` is convex in ``beta = 1 / T``, and its derivative,
    the sum over queries of (expected logit under the softmax - the true class's logit), rises with ``beta``: the
    minimum is where the derivative crosses zero, found by bisection (in double precision, on the logits sorted
    row-wise by a stable key, so that the result does not depend on the order the ranks gathered them in).
    """

    full_state_update = False
    # torchmetrics states (add_state): the list states are lists while updating, one tensor once gathered for compute
    logits: list[Tensor] | Tensor
    labels: list[Tensor] | Tensor
    episodes: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("episodes", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        if not isinstance(self.logits, list) or not isinstance(self.labels, list):  # torchmetrics unsyncs first
            raise RuntimeError("ScoreCalibrationFit.update while its states are gathered across processes")
        self.logits.append(logits.detach().float())
        self.labels.append(labels.detach())
        self.episodes += 1

    def compute(self) -> ScoreCalibration | None:
        logits, labels = _concatenated(self.logits), _concatenated(self.labels)
        if logits is None or labels is None or not len(labels):
            return None
        logits, labels = _in_canonical_order(logits.double(), labels)
        temperature = 1.0 / _nll_minimising_beta(logits, labels)
        threshold = torch.quantile(logits.max(dim=-1).values.sort().values, OUTLIER_QUANTILE)
        return ScoreCalibration(temperature, float(threshold), int(self.episodes), len(labels))


def _concatenated(state: Tensor | list[Tensor]) -> Tensor | None:
    """A list state as one tensor (torchmetrics gives a tensor after a DDP gather, a list before)."""
    if isinstance(state, Tensor):
        return state
    return torch.cat(state) if state else None


def _in_canonical_order(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The queries sorted by their true class's logit, then their label: the same queries in any order give the
    same tensors, so that sums over them are the same to the bit on 1 or N processes."""
    order = torch.argsort(labels, stable=True)
    order = order[torch.argsort(logits[order].gather(1, labels[order, None]).squeeze(1), stable=True)]
    return logits[order], labels[order]


def _nll_minimising_beta(logits: Tensor, labels: Tensor, iterations: int = 100) -> float:
    """The inverse temperature in [1 / MAX_TEMPERATURE, 1 / MIN_TEMPERATURE] that minimises the mean negative
    log-likelihood of ``softmax(beta * logits)``: bisection on the sign of its derivative, in log space."""
    true_logits = logits.gather(1, labels[:, None]).squeeze(1)

    def slope(beta: float) -> float:  # d NLL / d beta: E_softmax[logit] - true logit, summed
        return float(((beta * logits).softmax(dim=-1) * logits).sum(dim=-1).sub(true_logits).sum())

    low, high = math.log(1 / MAX_TEMPERATURE), math.log(1 / MIN_TEMPERATURE)
    if slope(math.exp(high)) <= 0:  # still falling at the largest beta: validation told no class apart wrongly
        return math.exp(high)
    if slope(math.exp(low)) >= 0:
        return math.exp(low)
    for _ in range(iterations):
        middle = (low + high) / 2
        low, high = (middle, high) if slope(math.exp(middle)) < 0 else (low, middle)
    return math.exp((low + high) / 2)
