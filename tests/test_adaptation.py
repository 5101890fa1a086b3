"""The adaptation engines give the same, exact meta-gradients (float64, against finite differences).

The model is a tiny MAMLConv4 (2 filters, 16x16 inputs, 3-way) so that central finite differences over every
parameter are cheap; it keeps the parts that matter: convolutions, plain batch norm with batch statistics,
ReLU, max pooling and a linear head, several tasks per meta-batch.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsl_lightning.adaptation import LoopInnerLoop, VmapInnerLoop, build_engine
from fsl_lightning.backbones.maml_conv4 import MAMLConv4
from fsl_lightning.backbones.plain_batchnorm import PlainBatchNorm2d, native_batch_norm
from fsl_lightning.episode import Episode
from fsl_lightning.methods.anil import ANIL
from fsl_lightning.methods.maml import MAML
from fsl_lightning.methods.metasgd import MetaSGD
from fsl_lightning.run.errors import UserError

ENGINES = ("learn2learn", "vmap", "loop")
REFERENCE = "learn2learn"  # every other engine is compared with it
OTHERS = tuple(name for name in ENGINES if name != REFERENCE)
WAY, SHOT, QUERY, TASKS, SIDE = 3, 2, 2, 3, 16
INNER_LR = 0.3


# tiny float64 tensors: threads only add overhead (and the machine is shared)
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, batch_norm_scale: bool = True) -> MAMLConv4:
    torch.manual_seed(seed)
    model = MAMLConv4(in_channels=1, way=WAY, hidden_channels=2, image_size=SIDE, batch_norm_scale=batch_norm_scale)
    model = model.double()
    with torch.no_grad():  # batch norm affine away from (1, 0), so that its gradients are exercised in general
        for module in model.modules():
            if isinstance(module, PlainBatchNorm2d):
                if module.weight is not None:
                    module.weight.uniform_(0.8, 1.2)
                module.bias.uniform_(-0.1, 0.1)
    return model


def meta_batch(seed: int = 1) -> Episode:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAY)
    return Episode(
        support_images=torch.randn(TASKS, WAY * SHOT, 1, SIDE, SIDE, generator=generator, dtype=torch.float64),
        support_labels=labels.repeat_interleave(SHOT).expand(TASKS, -1),
        query_images=torch.randn(TASKS, WAY * QUERY, 1, SIDE, SIDE, generator=generator, dtype=torch.float64),
        query_labels=labels.repeat_interleave(QUERY).expand(TASKS, -1),
        class_ids=torch.arange(TASKS * WAY).view(TASKS, WAY),
    )


def tiny_method(method_class: type[MAML], engine: str, steps: int, first_order: bool) -> MAML:
    method = method_class(
        backbone=tiny_model(), inner_lr=INNER_LR, inner_steps=steps, first_order=first_order, engine=engine
    )
    method.double()
    if isinstance(method, MetaSGD):  # distinct per-entry rates, so that a mix-up of rates would show
        with torch.no_grad():
            for rate in method.inner_lrs.values():
                rate.uniform_(0.1, 0.5)
    return method


def analytic_gradient(loss_fn: Callable[[], Tensor], tensors: list[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(loss_fn(), tensors))


@torch.no_grad()
def finite_difference_gradient(loss_fn: Callable[[], Tensor], tensors: list[Tensor], eps: float = 1e-6) -> list[Tensor]:
    """Central differences, one coordinate at a time (tensors are perturbed in place and restored)."""
    gradients = []
    for tensor in tensors:
        gradient = torch.empty_like(tensor)
        flat, flat_gradient = tensor.view(-1), gradient.view(-1)
        for index in range(flat.numel()):
            original = flat[index].item()
            flat[index] = original + eps
            plus = _value(loss_fn)
            flat[index] = original - eps
            minus = _value(loss_fn)
            flat[index] = original
            flat_gradient[index] = (plus - minus) / (2 * eps)
        gradients.append(gradient)
    return gradients


def _value(loss_fn: Callable[[], Tensor]) -> float:
    with torch.enable_grad():  # the inner loop differentiates even when only the value is wanted
        return loss_fn().item()


def assert_gradients_close(actual: list[Tensor], expected: list[Tensor], rtol: float, atol: float) -> None:
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


# --- batch norm -------------------------------------------------------------------------------------------------


def test_plain_batch_norm_matches_torch_batch_norm_with_batch_statistics():
    torch.manual_seed(0)
    inputs = torch.randn(6, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    plain, reference = PlainBatchNorm2d(4).double(), nn.BatchNorm2d(4, track_running_stats=False).double()
    with torch.no_grad():
        for module in (plain, reference):
            module.weight.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0]))
            module.bias.copy_(torch.tensor([-1.0, 0.0, 0.5, 1.0]))
    upstream = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    outputs, expected = plain(inputs), reference(inputs)
    torch.testing.assert_close(outputs, expected)
    grads = torch.autograd.grad((outputs * upstream).sum(), [inputs, plain.weight, plain.bias])
    expected_grads = torch.autograd.grad((expected * upstream).sum(), [inputs, reference.weight, reference.bias])
    assert_gradients_close(grads, expected_grads, rtol=1e-10, atol=1e-10)


def test_plain_batch_norm_uses_batch_statistics_in_eval_mode_too():
    norm = PlainBatchNorm2d(3).eval()
    inputs = 5 + 3 * torch.randn(8, 3, 4, 4)
    outputs = norm(inputs)
    torch.testing.assert_close(outputs.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    assert not list(norm.buffers())


# --- engine level: MAML on the whole network ------------------------------------------------------------------------


def engine_meta_loss(engine: str, model: nn.Module, batch: Episode, steps: int, first_order: bool) -> Tensor:
    inner = build_engine(engine)
    params = inner.adapt(model, batch.support_images, batch.support_labels, steps, INNER_LR, first_order)
    logits = inner.logits(model, params, batch.query_images)
    return F.cross_entropy(logits.flatten(0, 1), batch.query_labels.flatten())


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("steps", [0, 1, 4])
def test_engines_agree_on_adapted_weights_logits_and_meta_gradient(steps, first_order):
    model, batch = tiny_model(), meta_batch()
    inner = {name: build_engine(name) for name in ENGINES}
    adapted = {
        name: engine.adapt(model, batch.support_images, batch.support_labels, steps, INNER_LR, first_order)
        for name, engine in inner.items()
    }
    logits = {name: inner[name].logits(model, adapted[name], batch.query_images) for name in ENGINES}
    params = list(model.parameters())
    grads = {
        name: analytic_gradient(lambda name=name: engine_meta_loss(name, model, batch, steps, first_order), params)
        for name in ENGINES
    }
    for engine in OTHERS:
        for name in dict(model.named_parameters()):
            torch.testing.assert_close(adapted[engine][name], adapted[REFERENCE][name], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(logits[engine], logits[REFERENCE], rtol=1e-12, atol=1e-12)
        assert_gradients_close(grads[engine], grads[REFERENCE], rtol=1e-10, atol=1e-12)


def test_engines_agree_with_a_shift_only_batch_norm():
    """MAML's reference network (batch norm without a scale): torch's fused kernel, which the loop engine uses, is
    given a scale of 1 there (its double backward fails on a shift without a scale); same answer as vmap's plain ops."""
    model, batch = tiny_model(batch_norm_scale=False), meta_batch()
    params = list(model.parameters())
    grads = {
        name: analytic_gradient(lambda name=name: engine_meta_loss(name, model, batch, 2, False), params)
        for name in ENGINES
    }
    for engine in OTHERS:
        assert_gradients_close(grads[engine], grads[REFERENCE], rtol=1e-10, atol=1e-12)


def test_adaptation_actually_changes_the_weights_and_lowers_the_support_loss():
    """Guards the tests above against a vacuous pass (e.g. both engines returning the initial weights)."""
    model, batch = tiny_model(), meta_batch()
    for name in ENGINES:
        engine = build_engine(name)
        loss = []
        for steps in (0, 4):
            params = engine.adapt(model, batch.support_images, batch.support_labels, steps, INNER_LR, True)
            logits = engine.logits(model, params, batch.support_images)
            loss.append(F.cross_entropy(logits.flatten(0, 1), batch.support_labels.flatten()))
        assert loss[1] < loss[0] - 0.05, (name, loss)


@pytest.mark.parametrize("steps", [1, pytest.param(3, marks=pytest.mark.slow)])
@pytest.mark.parametrize("engine", ENGINES)
def test_second_order_meta_gradient_matches_finite_differences(engine, steps):
    model, batch = tiny_model(), meta_batch()
    params = list(model.parameters())
    exact = analytic_gradient(lambda: engine_meta_loss(engine, model, batch, steps, False), params)
    # The value of the meta-loss does not depend on first_order (only its gradient does): evaluate it cheaply.
    numeric = finite_difference_gradient(lambda: engine_meta_loss(engine, model, batch, steps, True), params)
    assert_gradients_close(exact, numeric, rtol=1e-5, atol=1e-7)
    first_order = analytic_gradient(lambda: engine_meta_loss(engine, model, batch, steps, True), params)
    difference = max((a - b).abs().max().item() for a, b in zip(first_order, numeric))
    assert difference > 1e-4, "first and second order agree: the finite-difference check would not tell them apart"


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("engine", ENGINES)
def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_weights(engine, steps):
    """FOMAML's meta-gradient is sum_t dL_query/dphi_t (Finn et al. 2017, sec. 5.2), by finite differences in phi."""
    model, batch = tiny_model(), meta_batch()
    params = list(model.parameters())
    exact = analytic_gradient(lambda: engine_meta_loss(engine, model, batch, steps, True), params)
    inner = build_engine(engine)
    adapted = inner.adapt(model, batch.support_images, batch.support_labels, steps, INNER_LR, True)
    adapted = {name: p.detach().clone() for name, p in adapted.items()}

    def query_loss() -> Tensor:
        logits = inner.logits(model, adapted, batch.query_images)
        return F.cross_entropy(logits.flatten(0, 1), batch.query_labels.flatten())

    per_task = finite_difference_gradient(query_loss, list(adapted.values()))
    assert_gradients_close(exact, [g.sum(dim=0) for g in per_task], rtol=1e-5, atol=1e-7)


def fused_batch_norm_calls(compute: Callable[[], Tensor]) -> int:
    """How many times torch's batch-norm operator (``F.batch_norm``) ran while computing ``compute()`` and its
    gradient: plain-op batch norm never calls it."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        compute().backward()
    return sum(event.count for event in profile.key_averages() if event.key == "aten::batch_norm")


def test_the_loop_engine_runs_torch_fused_batch_norm_and_the_vmap_engine_plain_ops():
    """The loop engine's exactness above is then that of torch's kernel, not of the plain ops it replaces; and it
    leaves the modules as it found them (the vmap engine and the running-statistics pass need the plain ops)."""
    model, batch = tiny_model(), meta_batch()
    calls = {
        name: fused_batch_norm_calls(lambda name=name: engine_meta_loss(name, model, batch, 1, False))
        for name in ("loop", "vmap")
    }
    # 4 norms x 3 tasks x (support forward, query forward)
    assert calls == {"loop": 4 * TASKS * 2, "vmap": 0}
    assert not any(getattr(module, "native", False) for module in model.modules())


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_native_batch_norm_computes_what_the_plain_ops_compute(mode):
    """Batch statistics (and, in eval mode with running averages, the averages) with both kernels: same values,
    same first and second derivatives."""
    torch.manual_seed(0)
    norm = getattr(PlainBatchNorm2d(3, running_statistics=True).double(), mode)()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
    inputs = torch.randn(5, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 3, 4, 4, dtype=torch.float64)

    def derivatives() -> list[Tensor]:
        outputs = norm(inputs)
        first = torch.autograd.grad((outputs * upstream).sum(), [inputs, norm.weight], create_graph=True)
        second = torch.autograd.grad(
            first[0].pow(2).sum() + first[1].pow(2).sum(),
            [inputs, norm.weight, norm.bias],
            allow_unused=True,
            materialize_grads=True,
        )
        return [outputs, *first, *second]

    plain = derivatives()
    with native_batch_norm(norm):
        fused = derivatives()
    assert_gradients_close(fused, plain, rtol=1e-10, atol=1e-12)


def test_auto_runs_the_loop_engine_on_the_cpu_and_vmap_on_accelerators():
    auto = build_engine("auto")
    assert isinstance(auto.engine_for(torch.device("cpu")), LoopInnerLoop)
    for accelerator in ("cuda", "mps", "xpu"):  # today's GPU behaviour, kept: not measured on this machine
        assert isinstance(auto.engine_for(torch.device(accelerator)), VmapInnerLoop)
    model, batch = tiny_model(), meta_batch()
    assert fused_batch_norm_calls(lambda: engine_meta_loss("auto", model, batch, 1, False)) > 0
    assert MAML(tiny_model()).engine.name == "auto"  # the methods' default


def test_an_unknown_engine_is_refused_with_the_choices():
    with pytest.raises(UserError, match="auto, learn2learn, loop, vmap"):
        build_engine("loops")


# --- method level: every parameter the meta-optimiser updates ---------------------------------------------------


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("method_class", [MAML, ANIL, MetaSGD])
def test_methods_have_the_same_meta_gradient_in_every_engine(method_class, steps, first_order):
    batch = meta_batch()
    grads = {}
    for engine in ENGINES:
        method = tiny_method(method_class, engine, steps, first_order)
        grads[engine] = analytic_gradient(lambda: method.meta_loss(batch)[0], list(method.parameters()))
    for engine in OTHERS:
        assert_gradients_close(grads[engine], grads[REFERENCE], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("steps", [1, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("method_class", [ANIL, MetaSGD])
def test_second_order_method_meta_gradient_matches_finite_differences(method_class, steps):
    """ANIL: the body's gradient through the features; Meta-SGD: the gradient of the learned rates too.

    On the loop engine (the CPU default, with torch's fused batch norm); the other engines equal it to 1e-10
    (test above), hence match too.
    """
    batch = meta_batch()
    method = tiny_method(method_class, "loop", steps, first_order=False)
    params = list(method.parameters())
    exact = analytic_gradient(lambda: method.meta_loss(batch)[0], params)
    numeric = finite_difference_gradient(lambda: method.meta_loss(batch)[0], params)
    assert_gradients_close(exact, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("adapt_batch_norm", [False, True])
def test_metasgd_with_equal_rates_is_maml(adapt_batch_norm):
    batch = meta_batch()
    maml = MAML(
        backbone=tiny_model(), inner_lr=INNER_LR, inner_steps=2, engine="vmap", adapt_batch_norm=adapt_batch_norm
    )
    metasgd = MetaSGD(
        backbone=tiny_model(),
        inner_lr=INNER_LR,
        inner_steps=2,
        engine="vmap",
        initial_rate_range=None,
        adapt_batch_norm=adapt_batch_norm,
    ).double()
    maml.double()
    torch.testing.assert_close(metasgd.meta_loss(batch)[0], maml.meta_loss(batch)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_maml_holds_batch_norm_out_of_the_inner_loop_and_meta_learns_it(engine):
    """cbfinn/maml: batch norm's offsets are not among the adapted weights, yet the outer loop trains them."""
    method = tiny_method(MAML, engine, 2, False)
    batch = meta_batch()
    learner = method.inner_learner()
    adapted = method.adapt_tasks(batch.support_images, batch.support_labels, 2, False, None)
    norms = [name for name, module in learner.named_modules() if isinstance(module, PlainBatchNorm2d)]
    for name, parameter in learner.named_parameters():
        moved = not torch.equal(adapted[name], parameter.expand_as(adapted[name]))
        assert moved != (name.rpartition(".")[0] in norms), name
    method.meta_loss(batch)[0].backward()
    assert all(learner.get_submodule(name).bias.grad.abs().sum() > 0 for name in norms)


def test_anil_adapts_only_the_head():
    batch = meta_batch()
    anil = tiny_method(ANIL, "vmap", 2, False)
    params = anil.engine.adapt(
        anil.inner_learner(), anil.inner_inputs(batch.support_images), batch.support_labels, 2, INNER_LR, False
    )
    assert set(params) == {"weight", "bias"} and params["weight"].shape == (TASKS, WAY, 2)


# --- mixed precision ---------------------------------------------------------------------------------------------


def test_inner_loop_stays_fp32_under_bf16_autocast_unless_the_user_opts_out():
    batch = meta_batch()
    batch = Episode(
        batch.support_images.float(),
        batch.support_labels,
        batch.query_images.float(),
        batch.query_labels,
        batch.class_ids,
    )
    fp32 = MAML(backbone=tiny_model().float(), inner_lr=INNER_LR, inner_steps=2)
    reference = fp32.meta_loss(batch)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        protected = fp32.meta_loss(batch)[0]
    with pytest.warns(UserWarning, match="inner_loop_fp32"):
        opted_out = MAML(backbone=tiny_model().float(), inner_lr=INNER_LR, inner_steps=2, inner_loop_fp32=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = opted_out.meta_loss(batch)[0]
    torch.testing.assert_close(protected, reference, rtol=1e-6, atol=1e-6)
    assert (low.float() - reference).abs() > 1e-4  # autocast really was active: the protection is not vacuous
