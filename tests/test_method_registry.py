"""The method registry cannot drift: every registered method is exported and in the test zoo; and, as timm tests
every model of its registry, one training step of every method reaches every parameter it trains."""

from __future__ import annotations

import pytest
import torch

import fsl_lightning.methods as methods
from fsl_lightning.episode import EpisodeSpec, LabelledBatch, split_support_query
from fsl_lightning.methods import METHODS, FewShotMethod
from fsl_lightning.methods.registry import registered
from method_zoo import BUILDERS, RGB_METHODS, build

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = EpisodeSpec(way=5, shot=2, query=3)
BASE_CLASSES = 8  # the transfer family's num_base_classes in the zoo
#: parameters that no training step moves, by design of the method's reference code
UNTRAINED_BY_DESIGN = {
    # bertinetto/r2d2's AdjustLayer adds one scalar to the logit of every class: the softmax cross-entropy does not
    # depend on it, so its gradient is exactly zero (kept, as the reference keeps it)
    ("R2D2", "bias"),
}


def test_every_registered_method_is_exported_and_in_the_zoo():
    assert set(methods.__all__) == set(METHODS) | {"FewShotMethod", "METHODS"}
    assert set(BUILDERS) == set(METHODS)
    assert all(issubclass(method, FewShotMethod) and name == method.__name__ for name, method in METHODS.items())


def test_a_second_method_of_the_same_name_is_refused():
    with pytest.raises(ValueError, match="Two methods are named ProtoNet"):
        registered(type("ProtoNet", (METHODS["ProtoNet"],), {"__module__": "elsewhere"}))
    assert registered(METHODS["ProtoNet"]) is METHODS["ProtoNet"]  # registering the same class again is harmless


def synthetic_training_batch(method: FewShotMethod, name: str):
    """A training batch of random pixels in the form the method trains on: an episode, or a labelled mini-batch."""
    channels, size = (3, 32) if name in RGB_METHODS else (1, 28)
    generator = torch.Generator().manual_seed(0)
    if not method.trains_on_episodes:
        images = torch.rand(2 * BASE_CLASSES, channels, size, size, generator=generator)
        return LabelledBatch(images, torch.arange(BASE_CLASSES).repeat(2))
    images = torch.rand(SPEC.way, SPEC.shot + SPEC.query, channels, size, size, generator=generator)
    return split_support_query(images, torch.arange(SPEC.way), SPEC, seed=0)


TRAINED_METHODS = sorted(name for name, method in METHODS.items() if method.needs_trained_weights)


def test_the_methods_evaluated_untrained_are_the_frozen_ones():
    assert set(METHODS) - set(TRAINED_METHODS) == {"CLIPFewShot", "CLIPZeroShot", "FrozenFeatures", "NearestNeighbour"}


@pytest.mark.parametrize("name", TRAINED_METHODS)
def test_one_training_step_reaches_every_trained_parameter(name):
    method = build(name)
    trained = {key: parameter for key, parameter in method.named_parameters() if parameter.requires_grad}
    assert trained, f"{name} needs trained weights but has no parameter to train"
    method.train()
    loss = method.training_step(synthetic_training_batch(method, name), 0)
    loss.backward()
    unreached = [
        key
        for key, parameter in trained.items()
        if (parameter.grad is None or not parameter.grad.any()) and (name, key) not in UNTRAINED_BY_DESIGN
    ]
    assert not unreached, f"{name}: one training step leaves {unreached} without a gradient"
    assert all(torch.isfinite(parameter.grad).all() for parameter in trained.values())
