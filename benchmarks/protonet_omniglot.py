"""Prototypical Networks on Omniglot: accuracy, training time and throughput, for BENCHMARKS.md.

    python benchmarks/protonet_omniglot.py throughput [--steps 1000]
    python benchmarks/protonet_omniglot.py accuracy [--configs experiments/omniglot/<config>.yaml ...] [--target 0.96]

``throughput`` trains end to end through the CLI (``fit``, 60-way 5-shot 5-query, Conv4, 28x28) and, in the
same process on the same device, times the bare model step on device-resident data (the ceiling), then
prints both and their ratio. ``accuracy`` runs each config in full (by default the four ProtoNet paper
settings; any other method's configs work too), then prints mean ± 95% CI over the fixed test episodes,
training time, and the first time validation accuracy reached ``--target``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fsl_lightning.backbones import Conv4
from fsl_lightning.cli import main
from fsl_lightning.methods.functional import class_prototypes, squared_euclidean_distance

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "omniglot"


def run_fit(config: Path, out: Path, extra: list[str], return_cli: bool = False) -> tuple:
    """Runs ``fit`` (which then tests the best checkpoint); returns test metrics, the timing JSON and seconds
    (and the CLI object, holding the trainer, model and data module, with ``return_cli``)."""
    timing = out / "timing.json"
    args = [
        "fit",
        "--config",
        str(config),
        f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=fsl_lightning.callbacks.EpisodeThroughput",
        f"--trainer.callbacks.output_path={timing}",
        *extra,
    ]
    started = time.perf_counter()
    cli = main(args)
    seconds = time.perf_counter() - started
    metrics = {key: float(value) for key, value in cli.trainer.callback_metrics.items()}
    results = metrics, json.loads(timing.read_text()), seconds
    return (*results, cli) if return_cli else results


def ceiling_episodes_per_s(steps: int, way: int = 60, shot: int = 5, query: int = 5) -> float:
    """The same network and optimiser step on a resident batch: no data pipeline, no Trainer."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = Conv4(in_channels=1).to(device)
    optimizer = torch.optim.Adam(backbone.parameters(), lr=1e-3)
    images = torch.rand(way * (shot + query), 1, 28, 28, device=device)
    support_labels = torch.arange(way, device=device).repeat_interleave(shot)
    query_labels = torch.arange(way, device=device).repeat_interleave(query)

    def step() -> None:
        embeddings = backbone(images)
        prototypes = class_prototypes(embeddings[: way * shot], support_labels, way)
        logits = -squared_euclidean_distance(embeddings[way * shot :], prototypes)
        loss = torch.nn.functional.cross_entropy(logits, query_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed_rate(step, steps, warmup=50, device=device)


def timed_rate(step, steps: int, warmup: int, device: torch.device) -> float:
    """Calls per second of ``step`` over ``steps`` calls after ``warmup`` untimed ones, the device synchronised
    only at the ends of the timed window."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return steps / (time.perf_counter() - started)


def throughput(steps: int) -> None:
    warmup = 50
    with tempfile.TemporaryDirectory() as out:
        extra = [
            f"--trainer.max_steps={warmup + steps}",
            f"--data.train_episodes_per_epoch={warmup + steps}",
            "--trainer.limit_val_batches=0",
            "--test_after_fit=false",
            f"--trainer.callbacks.warmup_steps={warmup}",
            "--trainer.num_sanity_val_steps=0",
        ]
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _, timing, _ = run_fit(EXPERIMENTS / "protonet_5w5s.yaml", Path(out), extra)
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    ours, ceiling = timing["episodes_per_s"], ceiling_episodes_per_s(steps)
    print(f"\ndevice: {_device_name()}, torch {torch.__version__}")
    print("| workload | fsl_lightning fit (episodes/s) | model step on resident data | ratio | peak GPU memory |")
    print("|---|---|---|---|---|")
    print(f"| ProtoNet Conv4 60w5s5q 28x28 fp32 | {ours:.1f} | {ceiling:.1f} | {ours / ceiling:.2f} | {peak:.0f} MiB |")


def accuracy(configs: list[str], target: float, extra: list[str]) -> None:
    rows = []
    for config in configs:
        with tempfile.TemporaryDirectory() as out:
            metrics, timing, seconds = run_fit(Path(config), Path(out), extra)
        reached = [v["seconds"] for v in timing["validations"] if v["val_acc"] >= target]
        rows.append(
            f"| {Path(config).name} | {100 * metrics['test/acc']:.2f} ± {100 * metrics['test/acc_ci95']:.2f} | "
            f"{seconds:.0f} s | {timing['episodes_per_s'] or float('nan'):.0f} | "
            f"{f'{reached[0]:.0f} s' if reached else 'not reached'} |"
        )
    print(f"\ndevice: {_device_name()}, torch {torch.__version__}")
    print(f"| config | test accuracy % (95% CI) | fit + test time | train episodes/s | val acc >= {target:.0%} after |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name() -> str:
    """The GPU's name, or the CPU's model and vector units (AVX2, AVX-512, AVX512-BF16, AMX): figures name their CPU."""
    from fsl_lightning.run.cpu_features import this_cpu

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU: {this_cpu().description()}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("throughput").add_argument("--steps", type=int, default=1000)
    acc = sub.add_parser("accuracy")
    acc.add_argument(
        "--configs",
        nargs="+",
        default=[str(EXPERIMENTS / f"protonet_{s}.yaml") for s in ("5w1s", "5w5s", "20w1s", "20w5s")],
        help="any experiment configs (default: the four ProtoNet paper settings)",
    )
    acc.add_argument("--target", type=float, default=0.96, help="report when val/acc first reaches this")
    acc.add_argument(
        "--cli", nargs=argparse.REMAINDER, default=[], help="extra CLI overrides, e.g. --trainer.max_steps=500"
    )
    arguments = parser.parse_args()
    if arguments.command == "throughput":
        throughput(arguments.steps)
    else:
        accuracy(arguments.configs, arguments.target, arguments.cli)
