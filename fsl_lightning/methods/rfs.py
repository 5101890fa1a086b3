"""RFS-simple (Tian, Wang, Krishnan, Tenenbaum & Isola, ECCV 2020, "Rethinking Few-Shot Image Classification")."""

from __future__ import annotations

from fsl_lightning.methods.registry import registered
from fsl_lightning.methods.transfer import Transfer


@registered
class RFSSimple(Transfer):
    """Pre-train backbone + linear classifier on all base classes (cross-entropy); for each episode, fit a
    logistic regression on the L2-normalised support features
    (:class:`~fsl_lightning.methods.episode_classifiers.LogisticRegression`). Arguments as :class:`Transfer`."""
