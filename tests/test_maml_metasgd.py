"""Meta-SGD's paper defaults (Li, Zhou, Chen & Li 2017): random initial rates in [0.005, 0.1], one step at test."""

from __future__ import annotations

import pytest
import torch

from fsl_lightning.methods.metasgd import MetaSGD
from test_adaptation import meta_batch, tiny_model


def test_initial_rates_are_drawn_uniformly_from_the_papers_range():
    torch.manual_seed(0)
    rates = torch.cat([rate.flatten() for rate in MetaSGD(tiny_model()).inner_lrs.values()])
    assert 0.005 <= rates.min() and rates.max() <= 0.1
    assert rates.std() > 0.01  # drawn, not one constant


def test_a_task_is_learned_in_one_step_at_test_as_at_training():
    method = MetaSGD(tiny_model())
    assert method.inner_steps == method.test_inner_steps == 1


def test_without_a_range_every_rate_starts_at_inner_lr():
    method = MetaSGD(tiny_model(), inner_lr=0.3, initial_rate_range=None)
    assert all(torch.all(rate == 0.3) for rate in method.inner_lrs.values())


def test_a_reversed_range_is_refused():
    with pytest.raises(ValueError, match="initial_rate_range"):
        MetaSGD(tiny_model(), initial_rate_range=(0.1, 0.005))


def test_the_rates_are_meta_learned():
    method = MetaSGD(tiny_model()).double()
    loss = method.meta_loss(meta_batch())[0]
    gradients = torch.autograd.grad(loss, list(method.inner_lrs.values()))
    assert all(g.abs().sum() > 0 for g in gradients)
