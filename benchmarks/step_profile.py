"""Where a training step's time goes on this CPU: the split of one bare ProtoNet Conv4 step by kind of work.

    python benchmarks/step_profile.py                                  # 60-way 1-shot 5-query, this CPU's default
    python benchmarks/step_profile.py --setting channels_last --way 20 # fp32 channels-last, 20-way

The bare step of ``cpu_kernels.py`` (forward, loss, backward, Adam on a resident batch, malloc keeping freed memory as
the CLI does) under ``torch.profiler``: ``--steps`` profiled steps after ``--warmup``. Each operator's *self* CPU time
is put into one kind (convolution, batch norm, pooling, ReLU, dtype casts and copies, the loss and distances, the
optimiser, other); the table gives each kind's share of the profiled time and milliseconds per step. ``fit``'s
distance to this bare step (Lightning's loop, the data pipeline) is ``speed_ceiling.py``'s ratio.
The setting defaults to what the CLI uses on this CPU: channels-last, and bf16 autocast where the CPU has bf16 units.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from cpu_kernels import WORKLOADS, build_step, protonet_workload
from fsl_lightning.run.cpu_features import bf16_training_is_fast, this_cpu
from fsl_lightning.run.cpu_memory import keep_freed_memory_for_reuse

# first match wins: an operator's kind by its name
KINDS = [
    ("convolution", re.compile(r"conv", re.I)),
    ("batch norm", re.compile(r"batch_norm")),
    ("pooling", re.compile(r"pool")),
    ("ReLU", re.compile(r"relu|threshold|clamp_min")),
    ("optimiser (Adam)", re.compile(r"optimizer|_foreach|adam|lerp|addcdiv|addcmul|sqrt", re.I)),
    ("loss and distances", re.compile(r"cross_entropy|log_softmax|nll_loss|cdist|mm|bmm|pow|sum|mean|index|scatter")),
    ("dtype casts and copies", re.compile(r"_to_copy|copy_|to$|contiguous|clone")),
    ("zero fills (gradients, pooling backward)", re.compile(r"fill_|zero_")),
]


def kind_of(operator: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(operator)), "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--way", type=int, default=60)
    parser.add_argument("--setting", default=None, help="a cpu_kernels.py setting; default: this CPU's CLI default")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    keep_freed_memory_for_reuse()
    cpu = this_cpu()
    setting = args.setting or ("channels_last+bf16" if bf16_training_is_fast(cpu) else "channels_last")
    WORKLOADS[f"conv4_{args.way}way"] = lambda: protonet_workload(args.way)
    step = build_step(f"conv4_{args.way}way", setting)
    for _ in range(args.warmup):
        step()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    unprofiled = (time.perf_counter() - started) / args.steps
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(args.steps):
            step()
    by_kind: dict[str, float] = defaultdict(float)
    for event in profiler.key_averages():
        by_kind[kind_of(event.key)] += event.self_cpu_time_total / 1e3 / args.steps  # ms per step
    total = sum(by_kind.values())
    print(f"CPU: {cpu.description()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"ProtoNet Conv4 {args.way}-way 1-shot 5-query at 28x28, {setting}: {1e3 * unprofiled:.1f} ms per step "
        f"unprofiled ({1 / unprofiled:.2f} steps/s), {total:.1f} ms of operator self time per step profiled"
    )
    print("| kind of work | ms per step | share |\n|---|---|---|")
    for kind, milliseconds in sorted(by_kind.items(), key=lambda item: -item[1]):
        print(f"| {kind} | {milliseconds:.1f} | {milliseconds / total:.0%} |")
    print("\nTop operators by self CPU time:")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
