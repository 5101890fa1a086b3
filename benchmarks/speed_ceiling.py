"""Each training workload end to end through ``fit`` against the ceiling of the same model.

    python benchmarks/speed_ceiling.py [--workloads protonet_conv4 maml_1step maml_5steps protonet_resnet12]
                                       [--steps 300] [--cli --speed.channels_last=true ...]

For each workload, in one process on one device: ``fit`` through the CLI (training throughput measured by
:class:`~fsl_lightning.callbacks.EpisodeThroughput`, validation off), then the *ceiling*: the very same model
object, optimiser and speed settings, stepping ``training_step`` + backward + optimiser on one training batch
already on the device (no data pipeline, no Trainer), in the trainer's precision. Prints ours, the ceiling,
the ratio and peak GPU memory; the Conv4 ProtoNet row also times the 1000 fixed test episodes, and the MAML
rows report the meta-gradient error of TF32 against exact fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch

from fsl_lightning.callbacks import SpeedSettings
from protonet_omniglot import _device_name, run_fit, timed_rate

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
WORKLOADS = {
    "protonet_conv4": ("ProtoNet Conv4 Omniglot 28x28 60w5s5q", "omniglot/protonet_5w5s.yaml", []),
    "protonet_60w1s": ("ProtoNet Conv4 Omniglot 28x28 60w1s5q", "omniglot/protonet_5w1s.yaml", []),
    "protonet_20w1s": ("ProtoNet Conv4 Omniglot 28x28 20w1s5q", "omniglot/protonet_5w1s.yaml", ["--data.train.way=20"]),
    "matchingnet_5w1s": ("MatchingNet Conv4 Omniglot 28x28 5w1s, its config", "omniglot/matchingnet_5w1s.yaml", []),
    "maml_5w1s_8tasks": (
        "MAML 2nd order 5w1s15q, 8 tasks, 1 inner step",
        "omniglot/maml_5w1s.yaml",
        ["--model.init_args.inner_steps=1", "--data.train_tasks_per_batch=8"],
    ),
    "baseline_pretrain": (
        "Baseline ResNet12 84x84 pre-training, batches of 64 (Caltech-101)",
        "caltech101/baseline_5w1s.yaml",
        [],
    ),
    "maml_1step": (
        "MAML 2nd order Conv4 5w1s, 32 tasks, 1 inner step",
        "omniglot/maml_5w1s.yaml",
        ["--model.init_args.inner_steps=1"],
    ),
    "maml_5steps": (
        "MAML 2nd order Conv4 5w1s, 32 tasks, 5 inner steps",
        "omniglot/maml_5w1s.yaml",
        ["--model.init_args.inner_steps=5"],
    ),
    "protonet_resnet12": (
        "ProtoNet ResNet12 84x84 5w5s15q bf16-mixed, channels-last",
        "caltech101/protonet_5w5s.yaml",
        ["--trainer.precision=bf16-mixed", "--speed.channels_last=true"],
    ),
}


def measure(workload: str, steps: int, warmup: int, extra: list[str], out: Path) -> str:
    name, config, overrides = WORKLOADS[workload]
    timing_args = [
        f"--trainer.max_steps={warmup + steps}",
        f"--data.train_episodes_per_epoch={warmup + steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--test_after_fit=false",
        f"--trainer.callbacks.warmup_steps={warmup}",
    ]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _, timing, _, cli = run_fit(
        EXPERIMENTS / config, out / workload, [*timing_args, *overrides, *extra], return_cli=True
    )
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    ours = timing["steps_per_s"]  # batches/s, as the ceiling (meta-iterations for MAML)
    ceiling = model_step_ceiling(cli, steps, warmup)
    notes = [f"peak {peak:.0f} MiB"]
    if workload == "protonet_conv4":
        notes.append(f"1000 test episodes in {time_test_episodes(cli):.2f} s")
    if workload.startswith("maml"):
        notes.append(tf32_meta_gradient_error(cli))
    return f"| {name} | {ours:.1f} | {ceiling:.1f} | {ours / ceiling:.2f} | {'; '.join(notes)} |"


def model_step_ceiling(cli, steps: int, warmup: int) -> float:
    """Batches/s of the bare step (training_step, backward, optimiser) of the fitted model on a resident batch."""
    model, trainer = cli.model, cli.trainer
    device = trainer.strategy.root_device
    model.to(device).train()
    model.log = lambda *args, **kwargs: None  # outside the Trainer loop there is nowhere to log to
    batch = cli.datamodule.training_batch(0, device)
    optimizer = _optimizer(model)
    precision = (
        getattr(trainer.precision_plugin, "forward_context", None) or trainer.precision_plugin.train_step_context
    )

    def step() -> None:
        with precision():
            loss = model.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with _speed_settings_of(cli):
        return timed_rate(step, steps, warmup, device)


def time_test_episodes(cli) -> float:
    """Seconds for the data module's 1000 fixed test episodes (``trainer.test``), after one warm-up pass."""
    cli.datamodule.episode_counts["test"] = 1000
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    started = time.perf_counter()
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    return time.perf_counter() - started


def tf32_meta_gradient_error(cli) -> str:
    """Cosine and relative error of the meta-gradient with TF32 against exact fp32, on one meta-batch."""
    model = cli.model
    device = cli.trainer.strategy.root_device
    if device.type != "cuda":
        return "TF32 error: no CUDA device"
    model.to(device).train()
    model.log = lambda *args, **kwargs: None
    batch = cli.datamodule.training_batch(0, device)
    gradients = {}
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    for mode in ("highest", "high"):
        torch.set_float32_matmul_precision(mode)
        torch.backends.cudnn.allow_tf32 = mode == "high"
        model.zero_grad(set_to_none=True)
        model.training_step(batch, 0).backward()
        gradients[mode] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]
    exact, tf32 = gradients["highest"], gradients["high"]
    cosine = torch.nn.functional.cosine_similarity(exact, tf32, dim=0)
    relative = (tf32 - exact).norm() / exact.norm()
    return f"TF32 meta-gradient: cosine {float(cosine):.6f}, relative error {float(relative):.2e}"


def _optimizer(model) -> torch.optim.Optimizer:
    configured = model.configure_optimizers()
    if isinstance(configured, dict):
        return configured["optimizer"]
    return configured


@contextlib.contextmanager
def _speed_settings_of(cli):
    """The run's speed settings (TF32 flags are restored when ``fit`` ends), applied again for the ceiling."""
    speed = next((c for c in cli.trainer.callbacks if isinstance(c, SpeedSettings)), None)
    if speed is None:
        yield
        return
    speed.setup(cli.trainer, cli.model, "fit")
    try:
        yield
    finally:
        speed.teardown(cli.trainer, cli.model, "fit")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first (cuDNN autotuning, compilation)")
    parser.add_argument("--cli", nargs=argparse.REMAINDER, default=[], help="extra CLI overrides for every workload")
    args = parser.parse_args()
    print(f"device: {_device_name()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for workload in args.workloads:
            rows.append(
                measure(
                    workload, args.steps, args.warmup, ["--trainer.enable_progress_bar=false", *args.cli], Path(scratch)
                )
            )
            print(rows[-1], flush=True)
    print(f"\ndevice: {_device_name()}, torch {torch.__version__}")
    print("| workload | fsl_lightning fit (batches/s) | same model, bare step on resident batch | ratio | notes |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
