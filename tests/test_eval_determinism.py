"""The same episodes give the same reported accuracy to the last bit, whatever order the ranks gather them in."""

from __future__ import annotations

import torch

from fsl_lightning.methods.metrics import EpisodeAccuracy, mean_and_ci95


def _accuracies_and_a_reordering() -> tuple[torch.Tensor, torch.Tensor]:
    """1000 accuracies of 75-query episodes and the order two DDP ranks would gather them in (evens, then odds)."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 76, (1000,), generator=generator).double() / 75
    return values, torch.cat([values[0::2], values[1::2]])


def test_naive_mean_and_std_depend_on_the_order_of_the_values():
    """The premise: summed in another order, these values give another mean or std in the last bits."""
    values, reordered = _accuracies_and_a_reordering()
    assert values.mean() != reordered.mean() or values.std() != reordered.std()


def test_summary_is_bit_identical_under_any_order_of_the_values():
    values, reordered = _accuracies_and_a_reordering()
    shuffled = values[torch.randperm(1000, generator=torch.Generator().manual_seed(1))]
    reference = mean_and_ci95(values)
    for other in (reordered, shuffled, values.flip(0)):
        mean, ci95 = mean_and_ci95(other)
        assert mean.item() == reference[0].item() and ci95.item() == reference[1].item()


def test_episode_accuracy_summary_does_not_depend_on_the_update_order_and_keeps_per_episode():
    values, reordered = _accuracies_and_a_reordering()
    summaries = []
    for order in (values, reordered):
        metric = EpisodeAccuracy()
        for value in order:
            metric.update(value)
        summaries.append(metric.compute())
    assert summaries[0].mean.item() == summaries[1].mean.item()
    assert summaries[0].ci95.item() == summaries[1].ci95.item()
    assert torch.equal(summaries[1].per_episode, reordered.to(summaries[1].per_episode.dtype))
    assert summaries[0].episodes == 1000
