"""The ``speed:`` section of a config: TF32, bf16 training on CPUs with bf16 units, channels-last layout and
``torch.compile``.

Settings that change numerics are off by default where exactness matters: TF32 (10-bit mantissa in matrix
products and convolutions on Ampere and later GPUs) is on by default for methods whose results it does not
visibly change, and off for the MAML family (``FewShotMethod.tf32_by_default = False``), whose second-order
meta-gradients it perturbs; turning it on there warns. Global flags are restored when the run ends.

On the CPU, methods keep their weights channels-last by default (``FewShotMethod.cpu_channels_last_by_default``;
not the MAML family, whose CPU engine is tuned for the plain layout), and those whose accuracy was measured
unchanged by it (``FewShotMethod.cpu_bf16_by_default``: ProtoNet, Siamese, the transfer family) train in bf16
autocast when the CPU has bf16 hardware (AMX tiles or AVX512-BF16; ``cpu_features.bf16_training_is_fast``):
about 3x faster per step together on a 2-core Xeon with AMX and on a 2-core EPYC with AVX512-BF16 (BENCHMARKS.md).
Evaluation stays fp32, and runs channels-last in every CPU process layout (validate, test, predict, and the
Python API's :class:`~fsl_lightning.classifier.FewShotClassifier`: :func:`evaluation_layout`), so that a checkpoint
gives one number on the CPU however it is evaluated.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from fsl_lightning.callbacks.cpu_training_precision import BF16TrainingSteps
from fsl_lightning.run.cpu_features import bf16_training_is_fast, this_cpu

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


class SpeedSettings(Callback):
    """Args:
    tf32: allow TF32 in float32 matrix products and convolutions on CUDA; ``None``: the method's default.
    cpu_bf16: train in bf16 autocast on the CPU (validation, test and prediction stay fp32); ``None``: on for
        methods with ``cpu_bf16_by_default`` when the CPU has bf16 units (AMX or AVX512-BF16; not AVX2-only
        CPUs, where bf16 is no faster) and ``trainer.precision`` is the
        default fp32, off otherwise. A ``trainer.precision`` other than fp32 always wins.
    channels_last: keep 4-D weights (and so convolution outputs) in channels-last layout, which Tensor
        Cores and the CPU's oneDNN kernels prefer (the same maths; only the kernels' summation order may
        differ). ``None``: on the CPU, for methods with ``cpu_channels_last_by_default``, channels-last in
        ``validate``, ``test`` and ``predict`` in any process layout, so that every evaluation of a
        checkpoint (the test after fit, a test alone, one under DDP, the Python API) runs the same kernels
        and gives the same number; and in ``fit`` in a single process. Not in ``fit`` under DDP, where its
        gradients differed from the single-process step by about 2% of an update (tests/test_ddp_training.py;
        cause not found yet): there training and its validations run the plain layout. The module goes back
        to the plain layout when each stage ends. ``True``: channels-last in every stage.
    compile: ``torch.compile`` the backbone in place (checkpoint keys unchanged); methods that cannot be
        compiled (``FewShotMethod.not_compilable_because`` set to the reason) run eagerly with a warning
        giving that reason.
    compile_backend: the ``torch.compile`` backend (``inductor``; ``eager`` / ``aot_eager`` to debug).
    compile_mode: the ``torch.compile`` mode, e.g. ``max-autotune`` or ``reduce-overhead`` (CUDA graphs).
    """

    def __init__(
        self,
        tf32: bool | None = None,
        cpu_bf16: bool | None = None,
        channels_last: bool | None = None,
        compile: bool = False,
        compile_backend: str = "inductor",
        compile_mode: str | None = None,
    ) -> None:
        self.tf32 = tf32
        self.cpu_bf16 = cpu_bf16
        self.channels_last = channels_last
        self.compile = compile
        self.compile_backend = compile_backend
        self.compile_mode = compile_mode
        self._saved_flags: tuple[str, bool] | None = None
        self._layout_to_undo = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._set_tf32(self._wants_tf32(pl_module))
        on_cpu = trainer.strategy.root_device.type == "cpu"
        if stage == "fit" and on_cpu and self._wants_cpu_bf16(trainer, pl_module):
            trainer.strategy.precision_plugin = BF16TrainingSteps()
            rank_zero_info(
                f"Training in bf16 autocast on this CPU's bf16 units ({this_cpu().vector_units}; "
                "validation and test in fp32); --speed.cpu_bf16=false trains in fp32."
            )
        if self._wants_channels_last(pl_module, stage, on_cpu, trainer.world_size):
            pl_module.to(memory_format=torch.channels_last)
            self._layout_to_undo = self.channels_last is None
        if self.compile:
            self._compile(pl_module)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._layout_to_undo:  # each stage sets its own layout (a test after a DDP fit, say)
            pl_module.to(memory_format=torch.contiguous_format)
            self._layout_to_undo = False
        if self._saved_flags is not None:
            matmul_precision, cudnn_tf32 = self._saved_flags
            torch.set_float32_matmul_precision(matmul_precision)
            torch.backends.cudnn.allow_tf32 = cudnn_tf32
            self._saved_flags = None

    def _wants_tf32(self, pl_module: LightningModule) -> bool:
        method_default = getattr(pl_module, "tf32_by_default", True)
        if self.tf32 and not method_default:
            rank_zero_warn(
                f"speed.tf32 is on for {type(pl_module).__name__}: TF32 perturbs second-order meta-gradients "
                "(see BENCHMARKS.md for the measured error). Leave it unset for exact fp32."
            )
        return method_default if self.tf32 is None else self.tf32

    def _wants_cpu_bf16(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        if type(trainer.strategy.precision_plugin) is not Precision:  # a trainer.precision other than fp32 wins
            return False
        if self.cpu_bf16 is not None:
            return self.cpu_bf16
        return getattr(pl_module, "cpu_bf16_by_default", False) and bf16_training_is_fast(this_cpu())

    def _wants_channels_last(self, pl_module: LightningModule, stage: str, on_cpu: bool, world_size: int) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        if not _channels_last_by_default(pl_module, on_cpu):
            return False
        return stage != "fit" or world_size == 1

    def _set_tf32(self, enabled: bool) -> None:
        if self._saved_flags is None:
            self._saved_flags = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
        torch.set_float32_matmul_precision("high" if enabled else "highest")
        torch.backends.cudnn.allow_tf32 = enabled

    def _compile(self, pl_module: LightningModule) -> None:
        reason = getattr(pl_module, "not_compilable_because", None)
        if reason:
            rank_zero_warn(f"speed.compile is ignored for {type(pl_module).__name__}: {reason}")
            return
        backbone = getattr(pl_module, "backbone", None)
        if backbone is None or getattr(backbone, "_compiled_by_speed_settings", False):
            return
        backbone.compile(backend=self.compile_backend, mode=self.compile_mode)
        backbone._compiled_by_speed_settings = True
        rank_zero_info(f"Compiled the backbone with torch.compile (backend {self.compile_backend}).")


def evaluation_layout(module: ModuleT, device: torch.device) -> ModuleT:
    """``module`` in the layout that ``SpeedSettings``' defaults evaluate it in on ``device`` (channels-last on the CPU
    for methods with ``cpu_channels_last_by_default``), for evaluation outside a Trainer: the Python API's
    predictions then equal ``predict``'s."""
    if _channels_last_by_default(module, device.type == "cpu"):
        module.to(memory_format=torch.channels_last)
    return module


def _channels_last_by_default(module: torch.nn.Module, on_cpu: bool) -> bool:
    """Whether the defaults evaluate ``module`` channels-last: on the CPU, for methods that ask for it."""
    return on_cpu and getattr(module, "cpu_channels_last_by_default", False)
