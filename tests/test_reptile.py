"""Reptile (Nichol et al. 2018): its update, and a logged training accuracy that is not memorisation."""

from __future__ import annotations

import pytest
import torch
from test_adaptation import meta_batch, tiny_model

from fsl_lightning.backbones.maml_conv4 import MAMLConv4
from fsl_lightning.episode import Episode
from fsl_lightning.methods.reptile import Reptile

WAY, SHOT, QUERY, TASKS, SIDE = 5, 1, 6, 6, 16


# tiny float64 tensors: threads only add overhead (and the machine is shared)
pytestmark = pytest.mark.usefixtures("one_thread")


def noise_meta_batch(seed: int = 0) -> Episode:
    """Support and query images independent noise: nothing in the support predicts a query's label."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAY)
    return Episode(
        support_images=torch.randn(TASKS, WAY * SHOT, 1, SIDE, SIDE, generator=generator),
        support_labels=labels.repeat_interleave(SHOT).expand(TASKS, -1),
        query_images=torch.randn(TASKS, WAY * QUERY, 1, SIDE, SIDE, generator=generator),
        query_labels=labels.repeat_interleave(QUERY).expand(TASKS, -1),
        class_ids=torch.arange(TASKS * WAY).view(TASKS, WAY),
    )


def test_logged_training_accuracy_is_not_measured_on_queries_the_inner_loop_trained_on():
    """The update's inner loop (support + queries, many large steps) memorises the noise queries; the logged
    accuracy must be that of the network adapted on the support alone: about chance (0.2), not about 1.

    Before the fix train/acc scored the queries with the weights adapted on them (measured 1.0 here)."""
    torch.manual_seed(0)
    method = Reptile(MAMLConv4(in_channels=1, way=WAY, hidden_channels=16, image_size=SIDE), inner_lr=0.5,
                     inner_steps=30)
    method.training_step(noise_meta_batch(), 0)
    assert method.train_accuracy.compute().item() < 0.45


def test_surrogate_gradient_is_theta_minus_the_mean_adapted_weights():
    """One SGD step of size epsilon on the surrogate is theta + epsilon * mean_t (phi_t - theta) (Algorithm 2)."""
    model, batch = tiny_model(), meta_batch()
    method = Reptile(model, inner_lr=0.3, inner_steps=2).double()
    surrogate = method.reptile_loss(batch)
    gradients = torch.autograd.grad(surrogate, list(method.backbone.parameters()))
    images = torch.cat([batch.support_images, batch.query_images], dim=1)
    labels = torch.cat([batch.support_labels, batch.query_labels], dim=1)
    adapted = method.engine.adapt(method.backbone, images, labels, 2, 0.3, True)
    for (name, theta), gradient in zip(method.backbone.named_parameters(), gradients, strict=True):
        torch.testing.assert_close(gradient, theta.detach() - adapted[name].detach().mean(dim=0))
