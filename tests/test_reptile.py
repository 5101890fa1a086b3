"""Reptile (Nichol et al. 2018): its update, and a logged training accuracy that is not memorisation."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from fsl_lightning.backbones.maml_conv4 import MAMLConv4
from fsl_lightning.episode import Episode
from fsl_lightning.methods.reptile import Reptile
from test_adaptation import meta_batch, tiny_model

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
    method = Reptile(
        MAMLConv4(in_channels=1, way=WAY, hidden_channels=16, image_size=SIDE),
        inner_lr=0.5,
        inner_steps=30,
        inner_optimizer="sgd",
        inner_batch_size=None,
        test_inner_batch_size=None,
    )
    method.training_step(noise_meta_batch(), 0)
    assert method.train_accuracy.compute().item() < 0.45


def test_surrogate_gradient_is_theta_minus_the_mean_adapted_weights():
    """One SGD step of size epsilon on the surrogate is theta + epsilon * mean_t (phi_t - theta) (Algorithm 2)."""
    model, batch = tiny_model(), meta_batch()
    method = Reptile(model, inner_lr=0.3, inner_steps=2, inner_optimizer="sgd", inner_batch_size=None).double()
    surrogate = method.reptile_loss(batch)
    gradients = torch.autograd.grad(surrogate, list(method.backbone.parameters()))
    images = torch.cat([batch.support_images, batch.query_images], dim=1)
    labels = torch.cat([batch.support_labels, batch.query_labels], dim=1)
    adapted = method.engine.adapt(method.backbone, images, labels, 2, 0.3, True)
    for (name, theta), gradient in zip(method.backbone.named_parameters(), gradients, strict=True):
        torch.testing.assert_close(gradient, theta.detach() - adapted[name].detach().mean(dim=0))


# The reference code's inner optimiser: Adam (beta1 = 0) whose second moments carry over from task to task.


def sequential_torch_adam(model: torch.nn.Module, batch: Episode, steps: int, lr: float) -> tuple[list[dict], Tensor]:
    """What openai/supervised-reptile does, with torch's own Adam: ONE optimiser for all tasks; before each task only
    the weights are reset to theta, never the optimiser's state. Returns each task's adapted weights and the final
    second moments (flattened)."""
    theta = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-12)
    images = torch.cat([batch.support_images, batch.query_images], dim=1)
    labels = torch.cat([batch.support_labels, batch.query_labels], dim=1)
    adapted = []
    for task_images, task_labels in zip(images, labels):
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(theta[name])
        for _ in range(steps):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(task_images), task_labels).backward()
            optimiser.step()
        adapted.append({name: p.detach().clone() for name, p in model.named_parameters()})
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(theta[name])
    squares = torch.cat([optimiser.state[p]["exp_avg_sq"].flatten() for p in model.parameters()])
    return adapted, squares


def adam_reptile(model: torch.nn.Module, lr: float, steps: int) -> Reptile:
    method = Reptile(model, inner_lr=lr, inner_steps=steps, inner_batch_size=None, test_inner_batch_size=None).double()
    method.inner_adam.eps = 1e-12  # where epsilon enters is the one difference between TensorFlow's and torch's Adam
    return method


def test_inner_adam_is_torch_adam_with_beta1_zero_carried_from_task_to_task():
    batch = meta_batch()
    method = adam_reptile(tiny_model(), lr=0.01, steps=3)
    expected, expected_squares = sequential_torch_adam(tiny_model(), batch, steps=3, lr=0.01)
    surrogate = method.reptile_loss(batch)  # adapts every task and keeps the moments, as meta-training does
    images = torch.cat([batch.support_images, batch.query_images], dim=1)
    assert surrogate.requires_grad and len(expected) == len(images) > 1
    torch.testing.assert_close(method.inner_adam_moments.squares, expected_squares, rtol=1e-6, atol=1e-12)
    assert int(method.inner_adam_moments.step) == 3 * len(images)
    # the last task's adapted weights, recomputed from the moments before it: replay the run task by task
    replay = adam_reptile(tiny_model(), lr=0.01, steps=3)
    for task, task_expected in enumerate(expected):
        one_task = batch.map(lambda tensor, t=task: tensor[t : t + 1])
        adapted = replay.inner_adam.adapt(
            replay.backbone,
            replay.inner_adam_moments,
            torch.cat([one_task.support_images, one_task.query_images], dim=1),
            torch.cat([one_task.support_labels, one_task.query_labels], dim=1),
            3,
            None,
            torch.Generator(),
            keep_moments=True,
        )
        for name, value in task_expected.items():
            torch.testing.assert_close(adapted[name][0], value, rtol=1e-4, atol=1e-5)  # steps are lr = 1e-2


def test_evaluation_adapts_from_the_stored_moments_and_leaves_them_unchanged():
    """Each evaluation episode starts from the same moments (the reference restores its whole state after an
    evaluation), so an episode's logits do not depend on what was evaluated before it."""
    batch = meta_batch()
    method = adam_reptile(tiny_model(), lr=0.01, steps=2)
    method.reptile_loss(batch)  # some training: non-zero moments
    stored = method.inner_adam_moments.squares.clone(), method.inner_adam_moments.step.clone()
    both = method.adapted_query_logits(batch.map(lambda tensor: tensor[:2]), steps=4, first_order=True)
    second_alone = method.adapted_query_logits(batch.map(lambda tensor: tensor[1:2]), steps=4, first_order=True)
    torch.testing.assert_close(both[1], second_alone[0])
    torch.testing.assert_close(method.inner_adam_moments.squares, stored[0])
    assert torch.equal(method.inner_adam_moments.step, stored[1])


def test_inner_mini_batches_are_cut_from_shuffled_passes_over_the_task():
    """As the reference's sampling without replacement: 5 batches of 10 from 50 images see every image once."""
    from fsl_lightning.adaptation.carried_adam import _mini_batches

    batches = list(_mini_batches(50, 10, 5, torch.Generator().manual_seed(0), torch.device("cpu")))
    assert [len(b) for b in batches] == [10] * 5
    assert sorted(torch.cat(batches).tolist()) == list(range(50))
    straddling = torch.cat(list(_mini_batches(5, 3, 4, torch.Generator().manual_seed(0), torch.device("cpu"))))
    assert sorted(straddling[:5].tolist()) == list(range(5)) and sorted(straddling[5:10].tolist()) == list(range(5))


def test_a_checkpoint_of_the_other_inner_optimiser_is_refused_in_one_line():
    from fsl_lightning.run.errors import UserError

    sgd = Reptile(tiny_model(), inner_optimizer="sgd")
    adam = Reptile(tiny_model())
    with pytest.raises(UserError, match=r"inner_optimizer=sgd --model\.init_args\.inner_lr=0\.1\.$"):
        adam.on_load_checkpoint({"state_dict": sgd.state_dict(), "hyper_parameters": {"inner_lr": 0.1}})
    with pytest.raises(UserError, match="inner_optimizer=adam"):
        sgd.on_load_checkpoint({"state_dict": adam.state_dict()})
    adam.on_load_checkpoint({"state_dict": Reptile(tiny_model()).state_dict()})  # same optimiser: loads
