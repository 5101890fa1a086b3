"""MAML-like methods on a backbone built with ``nn.BatchNorm2d``: exact meta-gradients, same behaviour, loadable.

Under ``torch.func.vmap`` the second-order gradients of torch's fused batch norm are wrong (pytorch/functorch#534;
once measured 5e-3 on a conv bias whose true gradient is 0). The methods replace it by ``PlainBatchNorm2d``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fsl_lightning.adaptation import build_engine
from fsl_lightning.backbones.plain_batchnorm import PlainBatchNorm2d
from fsl_lightning.methods.anil import ANIL
from fsl_lightning.methods.maml import MAML
from fsl_lightning.methods.metasgd import MetaSGD
from fsl_lightning.methods.reptile import Reptile
from test_adaptation import analytic_gradient, assert_gradients_close, finite_difference_gradient, meta_batch

WAY = 3  # as test_adaptation.meta_batch: 3 tasks of 3-way, 16x16 single-channel float64 images


# tiny float64 tensors: threads only add overhead (and the machine is shared)
pytestmark = pytest.mark.usefixtures("one_thread")


class TorchBatchNormNet(nn.Module):
    """Two strided conv + ``nn.BatchNorm2d`` + ReLU blocks, spatial mean, linear head: [B, 1, 16, 16] -> [B, 3]."""

    def __init__(self, track_running_stats: bool = True, norm: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        blocks = []
        for in_channels in (1, 2):
            convolution = nn.Conv2d(in_channels, 2, 3, stride=2, padding=1)
            blocks += [convolution, norm(2, track_running_stats=track_running_stats), nn.ReLU()]
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2, WAY)

    def forward(self, images):
        return self.head(self.features(images))


def torch_batch_norm_net(seed: int = 0, **kwargs) -> TorchBatchNormNet:
    torch.manual_seed(seed)
    net = TorchBatchNormNet(**kwargs).double()
    with torch.no_grad():  # affine and running statistics away from their initial values
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.8, 1.2)
                module.bias.uniform_(-0.1, 0.1)
                if module.track_running_stats:
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
    return net


@pytest.mark.parametrize("track_running_stats", [False, True])
def test_second_order_meta_gradient_with_torch_batch_norm_is_exact_in_both_engines(track_running_stats):
    """2 inner steps, float64: vmap == loop == learn2learn == central finite differences (before the fix vmap was
    off by ~2e-3 without running statistics, and raised an in-place error with them)."""
    batch = meta_batch()
    gradients = {}
    for engine in ("vmap", "loop", "learn2learn"):
        method = MAML(
            torch_batch_norm_net(track_running_stats=track_running_stats), inner_lr=0.3, inner_steps=2, engine=engine
        )
        gradients[engine] = analytic_gradient(lambda: method.meta_loss(batch)[0], list(method.parameters()))
    numeric = finite_difference_gradient(lambda: method.meta_loss(batch)[0], list(method.parameters()))
    for engine in ("vmap", "loop"):
        assert_gradients_close(gradients[engine], gradients["learn2learn"], rtol=1e-10, atol=1e-12)
    assert_gradients_close(gradients["vmap"], numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method_class", [MAML, ANIL, MetaSGD, Reptile])
def test_every_method_replaces_torch_batch_norm(method_class):
    method = method_class(torch_batch_norm_net())
    norms = [m for m in method.backbone.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    plain = [m for m in method.backbone.modules() if isinstance(m, PlainBatchNorm2d)]
    assert not norms and len(plain) == 2


@pytest.mark.parametrize("track_running_stats", [False, True])
def test_replacement_computes_what_torch_batch_norm_computes_in_train_and_eval(track_running_stats):
    original = torch_batch_norm_net(track_running_stats=track_running_stats)
    method = MAML(torch_batch_norm_net(track_running_stats=track_running_stats))
    images = torch.randn(6, 1, 16, 16, dtype=torch.float64)
    for mode in ("eval", "train"):  # eval first: a training pass of the original updates its running averages
        getattr(original, mode)()
        getattr(method.backbone, mode)()
        with torch.no_grad():
            torch.testing.assert_close(method.backbone(images), original(images), rtol=1e-12, atol=1e-12)


def test_recorded_running_statistics_follow_torch_batch_norm_updates():
    """One recorded training pass updates the copied averages as torch's own forward pass updates the original."""
    original, method = torch_batch_norm_net(), MAML(torch_batch_norm_net())
    images = torch.randn(6, 1, 16, 16, dtype=torch.float64)
    method.on_train_batch_end(None, meta_batch(), 0)  # the hook MAML uses: one plain pass of support + queries
    batch = meta_batch()
    original(torch.cat([batch.support_images.flatten(0, 1), batch.query_images.flatten(0, 1)]))
    original.eval(), method.backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(method.backbone(images), original(images), rtol=1e-10, atol=1e-12)


def test_state_dicts_of_the_torch_batch_norm_backbone_load():
    """A backbone checkpoint written with nn.BatchNorm2d (num_batches_tracked included) loads strictly, and a
    method's own checkpoint loads into a freshly built method."""
    original = torch_batch_norm_net(seed=3)
    method = MAML(torch_batch_norm_net(seed=0))
    method.backbone.load_state_dict(original.state_dict())
    fresh = MAML(torch_batch_norm_net(seed=1))
    fresh.load_state_dict(method.state_dict())
    images = torch.randn(6, 1, 16, 16, dtype=torch.float64)
    for module in (original, fresh.backbone):
        module.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.backbone(images), original(images), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", [nn.BatchNorm1d, nn.InstanceNorm2d, nn.SyncBatchNorm])
def test_other_torch_normalisations_are_refused_with_a_clear_error(norm):
    with pytest.raises(ValueError, match="PlainBatchNorm2d"):
        MAML(TorchBatchNormNet(norm=norm))


def test_momentum_none_is_refused():
    net = TorchBatchNormNet()
    net.features[1].momentum = None
    with pytest.raises(ValueError, match="momentum=None"):
        MAML(net)


def test_vmap_engine_refuses_torch_batch_norm_given_directly():
    batch = meta_batch()
    with pytest.raises(ValueError, match="vmap engine cannot differentiate BatchNorm2d"):
        build_engine("vmap").adapt(torch_batch_norm_net(), batch.support_images, batch.support_labels, 1, 0.3, False)
