"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017) and its first-order approximation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from fsl_lightning.adaptation import (
    AdaptedParams,
    EngineName,
    InnerLR,
    build_engine,
    gradients_enabled,
    inner_precision,
    usable_in_autograd,
)
from fsl_lightning.adaptation.base import rate_of
from fsl_lightning.backbones.plain_batchnorm import (
    PlainBatchNorm2d,
    recording_running_statistics,
    replace_torch_batch_norm,
    tracks_running_statistics,
)
from fsl_lightning.episode import Episode, SupportSet
from fsl_lightning.methods.base import FewShotMethod
from fsl_lightning.methods.registry import registered


def batch_norm_parameter_names(module: nn.Module) -> set[str]:
    """Names (as ``module.named_parameters()`` gives them) of the parameters of its :class:`PlainBatchNorm2d` layers."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, layer in module.named_modules()
        if isinstance(layer, PlainBatchNorm2d)
        for name, _ in layer.named_parameters(recurse=False)
    }


def as_meta_batch(episode: Episode) -> Episode:
    """A single episode as a meta-batch of one task (leading dimension T = 1); meta-batches unchanged."""
    if episode.num_tasks is not None:
        return episode
    return episode.map(lambda tensor: tensor.unsqueeze(0))


@dataclass(frozen=True)
class AdaptedWeights:
    """A support set fitted by the MAML family: the inner learner's adapted (fast) weights, by parameter name, each
    with a leading task dimension of 1 (the engines' layout)."""

    weights: AdaptedParams


@registered
class MAML(FewShotMethod):
    """Learns an initialisation from which a few gradient steps on a task's support set fit its queries.

    Meta-training (Finn et al. 2017, Algorithm 2): for each task of the meta-batch, ``inner_steps`` SGD steps
    of size ``inner_lr`` on the support loss, then the query loss of the adapted network; the meta-loss is
    the mean over tasks and queries, differentiated through the inner loop (second order unless
    ``first_order``). The meta-batch is the data module's ``train_tasks_per_batch``. At validation, test and
    predict, each episode is adapted with ``test_inner_steps`` (first-order maths: no meta-gradient is needed).

    The backbone is the whole classifier, images -> [B, way] (e.g.
    :class:`~fsl_lightning.backbones.maml_conv4.MAMLConv4`); training and test episodes must have its ``way``.
    Its ``nn.BatchNorm2d`` modules are replaced by equivalent
    :class:`~fsl_lightning.backbones.plain_batchnorm.PlainBatchNorm2d` (same weights, running averages if it
    tracks them): torch's fused batch norm gives wrong second-order gradients under ``vmap`` (the ``loop``
    engine, which does not vmap, computes them with torch's kernel again). Other ``F.batch_norm``-based layers
    (BatchNorm1d/3d, SyncBatchNorm, InstanceNorm) are refused.

    Args:
        backbone: the network adapted in the inner loop.
        optimizer: the meta-optimiser (Adam, lr 1e-3 in the paper).
        lr_scheduler: optional scheduler of the meta-optimiser.
        scheduler_interval: ``step`` or ``epoch``.
        inner_lr: inner step size alpha (0.4 for 5-way Omniglot in the paper).
        inner_steps: inner steps during meta-training.
        test_inner_steps: inner steps at validation / test / predict.
        first_order: drop the second-order terms (FOMAML).
        engine: ``"auto"`` (``"loop"`` on the CPU, ``"vmap"`` on other devices: the fastest exact engine measured),
            ``"loop"`` (plain autograd task by task, torch's fused batch norm), ``"vmap"`` (vectorised
            ``torch.func``) or ``"learn2learn"`` (task by task); same meta-gradients.
        inner_loop_fp32: run adaptation and query scoring with autocast disabled (recommended; a warning is
            given when switched off).
        adapt_batch_norm: whether the inner loop adapts batch norm's own parameters. ``false`` (cbfinn/maml: its
            batch-norm offsets are TensorFlow layer variables, outside the ``weights`` dict that the inner loop
            updates, so only the outer loop learns them): they keep their meta-learned values in every task.
            ``true`` adapts every parameter, as learn2learn and this project did before (measured effect in
            BENCHMARKS.md).
    """

    tf32_by_default = False  # TF32 perturbs second-order meta-gradients (opt-in, its error reported)
    cpu_channels_last_by_default = False  # the CPU engine (task loop, native batch norm) is tuned for NCHW
    not_compilable_because = (
        "its inner loop calls the backbone with swapped-in adapted weights (torch.func.functional_call or "
        "learn2learn clones), on which a compiled backbone would recompile; the vmap engine is already batched over tasks"
    )

    def __init__(
        self,
        *args: Any,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        test_inner_steps: int = 3,
        first_order: bool = False,
        engine: EngineName = "auto",
        inner_loop_fp32: bool = True,
        adapt_batch_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        replaced = replace_torch_batch_norm(self.backbone)  # in place: the hyper-parameters saved are the config's
        if replaced:
            rank_zero_info(
                f"{type(self).__name__}: {len(replaced)} nn.BatchNorm2d of the backbone replaced by PlainBatchNorm2d "
                "(same weights and running statistics; exact second-order gradients under torch.func)."
            )
        if inner_steps < 0 or test_inner_steps < 0:
            raise ValueError(f"Inner steps must be >= 0, got {inner_steps} and {test_inner_steps}.")
        if not inner_loop_fp32:
            rank_zero_warn(
                "inner_loop_fp32=False: the inner loop follows the trainer's precision. Under bf16/fp16 autocast "
                "second-order meta-gradients can be far from the fp32 ones (measured: cosine 0.25-0.45 between them with 5 inner steps)."
            )
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.test_inner_steps = test_inner_steps
        self.first_order = first_order
        self.engine = build_engine(engine)
        self.inner_loop_fp32 = inner_loop_fp32
        self.adapt_batch_norm = adapt_batch_norm

    # What is adapted, on what inputs, with which step sizes: the hooks ANIL and Meta-SGD override.

    def inner_learner(self) -> nn.Module:
        """The module whose parameters the inner loop adapts (here the whole backbone)."""
        return self.backbone

    def inner_inputs(self, images: Tensor) -> Tensor:
        """The learner's inputs from a meta-batch of images [T, N, C, H, W] (here the images themselves)."""
        return images

    def inner_rates(self) -> InnerLR:
        """Inner step size(s)."""
        return self.held_batch_norm(self.inner_lr)

    def held_batch_norm(self, rates: InnerLR) -> InnerLR:
        """``rates`` with a step size of 0 for the inner learner's batch-norm parameters, unless
        ``adapt_batch_norm``: a zero step leaves them at their meta-learned values in every task while the outer loop
        still learns them, exactly as parameters outside the adapted set (and the same in every engine)."""
        learner = self.inner_learner()
        held = batch_norm_parameter_names(learner)
        if self.adapt_batch_norm or not held:
            return rates
        # tensors, not floats: learn2learn's MetaSGD clones its rates
        return {
            name: torch.zeros((), dtype=p.dtype, device=p.device)
            if name in held
            else torch.as_tensor(rate_of(rates, name), dtype=p.dtype, device=p.device)
            for name, p in learner.named_parameters()
        }

    # The computation.

    def adapted_query_logits(self, batch: Episode, steps: int, first_order: bool) -> Tensor:
        """Adapts to each task's support set and scores its queries: meta-batch -> logits [T, Q, way]."""
        self._check_way(batch.way)
        with inner_precision(self.device.type, self.inner_loop_fp32):
            learner = self.inner_learner()
            support = self.inner_inputs(batch.support_images)
            queries = self.inner_inputs(batch.query_images)
            params = self.adapt_tasks(support, batch.support_labels, steps, first_order, batch.seed)
            return self.engine.logits(learner, params, queries)

    def adapt_tasks(
        self, inputs: Tensor, labels: Tensor, steps: int, first_order: bool, seed: int | None
    ) -> AdaptedParams:
        """The inner learner adapted to each task's labelled inputs [T, N, ...] with ``steps`` SGD steps through the
        engine (``seed``, the episode's, is for inner loops that draw random numbers: Reptile's mini-batches)."""
        return self.engine.adapt(self.inner_learner(), inputs, labels, steps, self.inner_rates(), first_order)

    def meta_loss(self, batch: Episode) -> tuple[Tensor, Tensor]:
        """Mean query cross-entropy over the tasks of a meta-batch, and the query logits [T, Q, way]."""
        logits = self.adapted_query_logits(batch, self.inner_steps, self.first_order)
        # Every task has the same number of queries, so the mean over all of them is the mean of task means.
        return F.cross_entropy(logits.flatten(0, 1), batch.query_labels.flatten()), logits

    def training_step(self, episode: Episode, batch_idx: int) -> Tensor:
        batch = as_meta_batch(episode)
        loss, logits = self.meta_loss(batch)
        self._log_training(loss, logits, batch)
        return loss

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch: Episode, batch_idx: int) -> None:
        """With ``batch_norm: running`` backbones, one plain pass of the meta-batch's images through the updated
        meta-parameters updates the running averages: outside the engines, so that both behave the same."""
        if tracks_running_statistics(self.backbone):
            batch = as_meta_batch(batch)
            images = torch.cat([batch.support_images.flatten(0, 1), batch.query_images.flatten(0, 1)])
            with recording_running_statistics(self.backbone):
                self.backbone(images)

    @property
    def transductive(self) -> bool:
        """Whether batch norm normalises the queries with their own batch statistics (``batch_norm: batch``, the
        paper's), so that a query's logits depend on the queries scored with it."""
        return any(isinstance(m, PlainBatchNorm2d) and not m.running_statistics for m in self.backbone.modules())

    def fit_support(self, support: SupportSet) -> AdaptedWeights:
        """The learner adapted to one support set with ``test_inner_steps`` (validation / test / predict; first-order
        maths: no meta-gradient is needed)."""
        self._check_way(support.way)
        with gradients_enabled(), inner_precision(self.device.type, self.inner_loop_fp32):
            images = self.inner_inputs(usable_in_autograd(support.images).unsqueeze(0))  # a meta-batch of one task
            labels = usable_in_autograd(support.labels).unsqueeze(0)
            weights = self.adapt_tasks(images, labels, self.test_inner_steps, True, support.seed)
        return AdaptedWeights({name: weight.detach() for name, weight in weights.items()})

    def score(self, state: AdaptedWeights, query_images: Tensor, query_indices: Tensor | None = None) -> Tensor:
        """The queries' logits [Q, way] under the adapted weights."""
        with torch.no_grad(), inner_precision(self.device.type, self.inner_loop_fp32):
            queries = self.inner_inputs(query_images.unsqueeze(0))
            return self.engine.logits(self.inner_learner(), state.weights, queries)[0]

    def _log_training(self, loss: Tensor, logits: Tensor, batch: Episode) -> None:
        accuracy = (logits.detach().argmax(dim=-1) == batch.query_labels).float().mean()
        self.train_accuracy(accuracy)
        queries = batch.query_labels.numel()
        self.log("train/loss", loss.detach(), batch_size=queries)
        self.log("train/acc", self.train_accuracy, batch_size=queries)

    def _check_way(self, episode_way: int) -> None:
        """Shapes only (no host sync): a head of another width would silently mis-score the episode."""
        way = getattr(self.backbone, "way", None)
        if way is not None and episode_way != way:
            raise ValueError(
                f"The backbone outputs {way} classes but the episode has way={episode_way}: MAML-like methods need "
                "the same way at training and test (set the backbone's way and the data module's way alike)."
            )


@registered
class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017, section 5.2): the inner gradients are treated as constants, so the
    meta-gradient is the query gradient at the adapted parameters. Same arguments as :class:`MAML`, with
    ``first_order`` true by default."""

    def __init__(self, *args: Any, first_order: bool = True, **kwargs: Any) -> None:
        # mypy: *args might reach the keywords; it holds only the base's leading arguments, and jsonargparse
        # reads the signature through this very call
        super().__init__(*args, first_order=first_order, **kwargs)
