"""SKD's two generation losses, checked by hand on one 2x2 image (Rajasegaran et al. 2020, brjathu/SKD)."""

from __future__ import annotations

import math

import torch
from torch import nn

from fsl_lightning.episode import LabelledBatch
from fsl_lightning.methods import SKD

# the image [[1, 2], [3, 4]] and its counter-clockwise rotations, flattened: with identity heads these are the
# class logits and the rotation logits of the four copies
IMAGE = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
COPIES = [(1, 2, 3, 4), (2, 4, 1, 3), (4, 3, 2, 1), (3, 1, 4, 2)]


def skd_with_identity_heads(**kwargs) -> SKD:
    model = SKD(nn.Flatten(), num_base_classes=4, feature_dim=4, **kwargs)
    with torch.no_grad():
        for head in (model.base_head, model.rotation_head):
            head.weight.copy_(torch.eye(4))
            head.bias.zero_()
    return model


def softplus(value: float) -> float:
    return math.log1p(math.exp(value))


def test_generation_zero_is_cross_entropy_on_all_rotations_plus_twice_the_rotation_bce():
    model = skd_with_identity_heads()
    loss, logits = model.pretraining_loss_and_logits(LabelledBatch(IMAGE, torch.tensor([0])))
    # class 0 on every copy: CE_k = logsumexp(1..4) - copy_k[0]
    log_partition = math.log(sum(math.exp(v) for v in (1, 2, 3, 4)))
    class_loss = sum(log_partition - copy[0] for copy in COPIES) / 4
    # BCE with logits against one-hot rotation k: sum of softplus(z) minus z_k[k], averaged over 4 x 4 entries
    rotation_loss = (4 * sum(softplus(v) for v in (1, 2, 3, 4)) - sum(COPIES[k][k] for k in range(4))) / 16
    assert math.isclose(loss.item(), class_loss + 2.0 * rotation_loss, rel_tol=1e-6)
    assert torch.equal(logits, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))  # accuracy is read on the unrotated copies


def write_teacher(path, scale: float) -> None:
    """A generation-0 checkpoint whose class head is ``scale`` times the identity."""
    state = {
        "base_head.weight": scale * torch.eye(4),
        "base_head.bias": torch.zeros(4),
        "rotation_head.weight": torch.eye(4),
        "rotation_head.bias": torch.zeros(4),
    }
    torch.save({"state_dict": state}, path)


def test_generation_one_is_kl_to_the_teacher_plus_a_tenth_of_the_twin_distance(tmp_path):
    write_teacher(tmp_path / "gen0.ckpt", scale=2.0)
    model = skd_with_identity_heads(teacher_checkpoint=str(tmp_path / "gen0.ckpt"))
    model._teacher = (model._load_teacher(),)
    loss, _ = model.pretraining_loss_and_logits(LabelledBatch(IMAGE, torch.tensor([0])))

    def softmax(values):
        total = sum(math.exp(v) for v in values)
        return [math.exp(v) / total for v in values]

    temperature = 2.0  # brjathu/SKD's --kd_T default (RFS-distill's 4 is Transfer's)
    assert model.temperature == temperature
    teacher = softmax([2 * v / temperature for v in (1, 2, 3, 4)])
    student = softmax([v / temperature for v in (1, 2, 3, 4)])
    kl = sum(t * math.log(t / s) for t, s in zip(teacher, student))
    # ||copy_k - copy_0|| for the three rotations: sqrt(10), sqrt(20), sqrt(10)
    twin = (2 * math.sqrt(10) + math.sqrt(20)) / 3
    assert math.isclose(loss.item(), temperature**2 * kl + 0.1 * twin, rel_tol=1e-6)  # and no cross-entropy


def test_generation_one_starts_from_the_teacher_weights(tmp_path):
    write_teacher(tmp_path / "gen0.ckpt", scale=3.0)
    model = skd_with_identity_heads(teacher_checkpoint=str(tmp_path / "gen0.ckpt"))
    model.setup("fit")
    assert torch.equal(model.base_head.weight, 3.0 * torch.eye(4))
