"""CPU precision and kernel choices for the metric and transfer families' training steps.

One process times the bare training step (forward, loss, backward, Adam step on a resident batch) of each workload
under each setting: fp32, bf16 autocast (AMX tiles or AVX512-BF16 where the CPU has them), channels-last memory
format, both together, and ``torch.compile`` (inductor's C++ backend) with and without bf16, at each thread count. Rounds are interleaved
(every setting once per round, in turn) so that a noisy shared machine slows all settings alike; the table gives
the median steps/s over rounds and the ratio to fp32 at the same thread count.

    python benchmarks/cpu_kernels.py                                 # Conv4 20-way and 60-way, ResNet12, 1 and 2 threads
    python benchmarks/cpu_kernels.py --workloads conv4_20way --threads 2 --rounds 5 --settings fp32 bf16

Workloads: ProtoNet Conv4 episodes on Omniglot-sized images (20-way and 60-way 1-shot 5-query, 28x28 grey), and a
ResNet12 pre-training mini-batch (16 images of 84x84, 64 base classes; the transfer family's first stage).
Random pixels: a step's cost does not depend on what the pixels show. The process's malloc keeps freed memory for
reuse, as the CLI's does (``fsl_lightning/run/cpu_memory.py``); ``--glibc-malloc-defaults`` measures glibc's defaults
(run one setting per process then: with the defaults, a step's speed depends on what ran before it in the process).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsl_lightning.backbones import Conv4, ResNet12
from fsl_lightning.methods.functional import class_prototypes, squared_euclidean_distance
from fsl_lightning.run.cpu_features import this_cpu
from fsl_lightning.run.cpu_memory import keep_freed_memory_for_reuse

SETTINGS = (
    "fp32",
    "bf16",
    "channels_last",
    "channels_last+bf16",
    "compile",
    "compile+bf16",
    "compile+channels_last",
    "compile+channels_last+bf16",
)


def protonet_workload(way: int) -> tuple[nn.Module, Callable[[nn.Module], Tensor], Tensor]:
    shot, query = 1, 5
    images = torch.randn(way * (shot + query), 1, 28, 28)
    support_labels = torch.arange(way).repeat_interleave(shot)
    query_labels = torch.arange(way).repeat_interleave(query)

    def loss_of(model: nn.Module, batch: Tensor) -> Tensor:
        features = model(batch).float()
        prototypes = class_prototypes(features[: way * shot], support_labels, way)
        logits = -squared_euclidean_distance(features[way * shot :], prototypes)
        return F.cross_entropy(logits, query_labels)

    return Conv4(in_channels=1), loss_of, images


def resnet12_pretraining_workload() -> tuple[nn.Module, Callable[[nn.Module], Tensor], Tensor]:
    images, labels = torch.randn(16, 3, 84, 84), torch.randint(0, 64, (16,))
    model = nn.Sequential(ResNet12(in_channels=3), nn.Linear(640, 64))

    def loss_of(network: nn.Module, batch: Tensor) -> Tensor:
        return F.cross_entropy(network(batch).float(), labels)

    return model, loss_of, images


WORKLOADS = {
    "conv4_20way": lambda: protonet_workload(20),
    "conv4_60way": lambda: protonet_workload(60),
    "resnet12_pretrain": resnet12_pretraining_workload,
}


def build_step(workload: str, setting: str) -> Callable[[], None]:
    model, loss_of, images = WORKLOADS[workload]()
    if "channels_last" in setting:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    network = torch.compile(model) if "compile" in setting else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if "bf16" in setting else nullcontext

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_of(network, images)
        loss.backward()
        optimizer.step()

    return step


def steps_per_second(step: Callable[[], None], steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="time per setting per round (about)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--glibc-malloc-defaults", action="store_true", help="leave malloc as glibc sets it")
    args = parser.parse_args()
    tuned = not args.glibc_malloc_defaults and keep_freed_memory_for_reuse()
    torch.manual_seed(0)
    print(
        f"CPU: {this_cpu().description()}; torch {torch.__version__}, {torch.get_num_threads()} threads available, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"malloc {'keeps freed memory for reuse' if tuned else 'glibc defaults'}"
    )
    for workload in args.workloads:
        for threads in args.threads:
            torch.set_num_threads(threads)
            steps = {setting: build_step(workload, setting) for setting in args.settings}
            counts = {}
            for setting, step in steps.items():
                for _ in range(args.warmup):
                    step()
                probe = steps_per_second(step, 2)
                counts[setting] = max(2, round(probe * args.seconds))
            rates: dict[str, list[float]] = {setting: [] for setting in args.settings}
            for _ in range(args.rounds):
                for setting, step in steps.items():
                    rates[setting].append(steps_per_second(step, counts[setting]))
            report(workload, threads, rates)


def report(workload: str, threads: int, rates: dict[str, list[float]]) -> None:
    medians = {setting: statistics.median(values) for setting, values in rates.items()}
    reference = medians.get("fp32")
    print(f"\n{workload}, {threads} thread(s): steps/s, median of {len(next(iter(rates.values())))} rounds")
    print("| setting | steps/s (median) | rounds | / fp32 |\n|---|---|---|---|")
    for setting, median in medians.items():
        ratio = f"{median / reference:.2f}" if reference else "-"
        rounds = ", ".join(f"{value:.2f}" for value in rates[setting])
        print(f"| {setting} | {median:.2f} | {rounds} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
