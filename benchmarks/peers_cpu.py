"""Side by side with the peers on this machine's CPU, in one run: rates of this project against easyfsl
1.5 and learn2learn, each system in its own fresh process, in interleaved rounds (medians).

    python benchmarks/peers_cpu.py [--rounds 3] [--protonet-steps 150] [--maml-iterations 30] [--test-episodes 1000]

Installs easyfsl into ``benchmarks/.peers-venv`` first when it is missing (``peers_venv.py``; never a project
dependency; learn2learn is one already). Rows:

* **ProtoNet training**, 20-way 1-shot 5-query, Conv4, Omniglot 28x28 (Vinyals training classes), episodes/s:
  ``python -m fsl_lightning fit`` (validation off; the ``EpisodeThroughput`` callback times the steps after the
  warm-up); easyfsl 1.5 (``TaskSampler`` + ``DataLoader``, 0 workers, ``PrototypicalNetworks``, its training loop
  of ``process_support_set`` / forward / cross-entropy); learn2learn's ``TaskDataset`` (``NWays``, ``KShots``,
  ``LoadData``, ``RemapLabels``, ``ConsecutiveLabels``) feeding the same Conv4 and loss as ours.
* **MAML**, 5-way 1-shot 15-query, meta-batch 8, 1 inner step of 0.4, second order, meta-iterations/s: ``fit`` with
  each engine of ``MAML`` (``vmap``, ``learn2learn``, and ``auto`` when the method has it), against
  ``l2l.algorithms.MAML`` with learn2learn's own Omniglot pipeline, as ``maml_reference.py`` sets it up.
* **Test**, 1000 episodes of 5-way 1-shot 15-query with a Conv4 ProtoNet, episodes/s of the test loop (set-up
  excluded): ``python -m fsl_lightning test`` (``loop_timer.TestLoopTimer``) against ``easyfsl.utils.evaluate``.

Each round runs every system once, in an order rotated from round to round, so that the load of a shared machine
falls on all alike. Every system uses torch's default thread count (``OMP_NUM_THREADS`` passes through as set).
Prints each system's median rate, the per-round rates, and its ratio to the best peer of its row; then what differs
between the systems. Needs real Omniglot under ``$FSL_DATA_ROOT``.

    python benchmarks/peers_cpu.py run <system> --steps N --warmup W   # one system, once (what each round calls)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path[:0] = [str(REPO), str(BENCHMARKS)]  # this checkout's fsl_lightning, and the sibling benchmark modules

PROTONET_TRAIN = {"way": 20, "shot": 1, "query": 5}
MAML_TASKS = 8
TEST = {"way": 5, "shot": 1, "query": 15}
RESULT = "PEERS_CPU_RESULT "  # the line a system's process prints its measurement on
NOTES = """\
What differs between the systems:
* Class pools. ProtoNet rows: all three draw from the same 4112 (character, rotation) classes of the Vinyals
  training split (1028 characters x 4 rotations); easyfsl and learn2learn draw with Python's `random`, ours with
  seeded torch generators. MAML: ours draws 5 of the 4112 classes (two rotations of one character can meet in a
  task); learn2learn's pipeline draws 5 of the 1028 characters and rotates each task (learn2learn 0.2.0's
  RandomClassRotation applies one rotation to the whole task).
* Distance. easyfsl's PrototypicalNetworks scores with minus the Euclidean distance (torch.cdist) and embeds support
  and queries in two batches; ours and the learn2learn row use minus the squared Euclidean distance (the paper's)
  on one batch of support and queries.
* Per-episode decoding. Ours decodes Omniglot once (the decoded cache) and keeps it as one uint8 tensor; episodes
  are indexed from it. easyfsl and the learn2learn ProtoNet row are fed the same decoded uint8 images through a
  map-style dataset (a float conversion per image, then collation per episode): no file is decoded per episode,
  which favours them. learn2learn's MAML pipeline (FullOmniglot) opens and decodes each PNG, resizes it (Lanczos)
  and rotates it, for every image of every task.
* Test: both score the same Conv4 (seeded weights; speed does not depend on them) on as many episodes; ours draws them
  from its fixed test episodes, easyfsl from a seeded TaskSampler over the same Vinyals test classes."""


@dataclass
class System:
    row: str  # the comparison it belongs to
    name: str
    ours: bool
    rates: list[float] = field(default_factory=list)


# ---------------------------------------------------------------- one system, once (in its own process)


def run_system(system: str, steps: int, warmup: int, scratch: Path) -> dict:
    """Measures one system; returns its rate (per second) and what it ran."""
    import torch

    measure = {
        "easyfsl-protonet": easyfsl_protonet,
        "l2l-protonet": l2l_protonet,
        "l2l-maml": l2l_maml,
        "easyfsl-test": easyfsl_test,
        "ours-test": ours_test,
    }
    if system.startswith("ours-fit-"):
        result = ours_fit(system.removeprefix("ours-fit-"), steps, warmup, scratch)
    else:
        result = measure[system](steps, warmup, scratch)
    return {**result, "threads": torch.get_num_threads()}


def ours_fit(workload: str, steps: int, warmup: int, scratch: Path) -> dict:
    """``python -m fsl_lightning fit`` (its ``main``, in this fresh process), rate from ``EpisodeThroughput``."""
    timing = scratch / "timing.json"
    if workload == "protonet":
        config = "experiments/omniglot/protonet_20w1s.yaml"
        workload_arguments = [f"--data.train.{key}={value}" for key, value in PROTONET_TRAIN.items()]
    else:
        config = "experiments/omniglot/maml_5w1s.yaml"
        workload_arguments = [
            f"--model.init_args.engine={workload.removeprefix('maml-')}",
            f"--data.train_tasks_per_batch={MAML_TASKS}",
            "--model.init_args.inner_steps=1",
        ]
    arguments = [
        "fit",
        "--config",
        config,
        *workload_arguments,
        f"--trainer.max_steps={warmup + steps}",
        f"--data.train_episodes_per_epoch={warmup + steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--test_after_fit=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={scratch}",
        f"--trainer.default_root_dir={scratch}",
        "--trainer.callbacks+=fsl_lightning.callbacks.EpisodeThroughput",
        f"--trainer.callbacks.warmup_steps={warmup}",
        f"--trainer.callbacks.output_path={timing}",
    ]
    run_cli(arguments)
    # ProtoNet: episodes/s; MAML: meta-iterations/s (optimiser steps of MAML_TASKS tasks), the peer's unit
    rate = "episodes_per_s" if workload == "protonet" else "steps_per_s"
    return {"rate": json.loads(timing.read_text())[rate], "steps": steps}


def ours_test(steps: int, warmup: int, scratch: Path) -> dict:
    """``python -m fsl_lightning test`` (its ``main``) on ``steps`` episodes, the test loop alone timed by
    ``loop_timer.TestLoopTimer``."""
    timing = scratch / "test_timing.json"
    arguments = [
        "test",
        "--config",
        "experiments/omniglot/protonet_5w1s.yaml",
        *[f"--data.evaluation.{key}={value}" for key, value in TEST.items()],
        f"--data.test_episodes={steps}",
        "--ckpt_path",
        str(seeded_protonet_checkpoint(scratch)),
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={scratch}",
        "--trainer.callbacks+=loop_timer.TestLoopTimer",
        f"--trainer.callbacks.output_path={timing}",
    ]
    run_cli(arguments)
    result = json.loads(timing.read_text())
    return {"rate": result["episodes"] / result["seconds"], "steps": result["episodes"], "seconds": result["seconds"]}


def run_cli(arguments: list[str]) -> None:
    """What ``python -m fsl_lightning <arguments>`` runs, from the checkout's root (the configs' relative paths)."""
    from fsl_lightning.cli import main

    os.chdir(REPO)
    main(arguments)


def seeded_conv4():
    import torch

    from fsl_lightning.backbones import Conv4

    torch.manual_seed(0)
    return Conv4(in_channels=1)


def seeded_protonet_checkpoint(folder: Path) -> Path:
    """A checkpoint holding a seeded Conv4 as a ProtoNet backbone (``test`` needs one for a method that trains)."""
    import lightning
    import torch

    path = folder / "seeded_protonet.ckpt"
    state = {f"backbone.{key}": value for key, value in seeded_conv4().state_dict().items()}
    torch.save({"state_dict": state, "pytorch-lightning_version": lightning.__version__}, path)
    return path


def timed_rate(step, steps: int, warmup: int) -> float:
    """Calls per second of ``step`` over ``steps`` calls after ``warmup`` untimed ones (all on the CPU)."""
    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - started)


def prototypical_loss(backbone, support, support_labels, queries, query_labels):
    """Ours: support and queries embedded as one batch, minus the squared Euclidean distance, cross-entropy."""
    import torch
    import torch.nn.functional as F

    from fsl_lightning.methods.functional import class_prototypes, squared_euclidean_distance

    embeddings = backbone(torch.cat([support, queries]))
    prototypes = class_prototypes(embeddings[: len(support)], support_labels, int(support_labels.max()) + 1)
    return F.cross_entropy(-squared_euclidean_distance(embeddings[len(support) :], prototypes), query_labels)


def easyfsl_protonet(steps: int, warmup: int, scratch: Path) -> dict:
    """easyfsl's TaskSampler + DataLoader + PrototypicalNetworks and its training loop (as its tutorial writes it)."""
    import torch
    import torch.nn.functional as F
    from easyfsl.methods import PrototypicalNetworks

    from protonet_reference import make_loader

    random.seed(0)
    model = PrototypicalNetworks(seeded_conv4())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    episodes = iter(make_loader("train", PROTONET_TRAIN, warmup + steps))
    model.train()

    def step() -> None:
        support, support_labels, queries, query_labels, _ = next(episodes)
        model.process_support_set(support, support_labels)
        loss = F.cross_entropy(model(queries), query_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return {"rate": timed_rate(step, steps, warmup), "steps": steps}


def l2l_protonet(steps: int, warmup: int, scratch: Path) -> dict:
    """learn2learn's TaskDataset over the decoded Vinyals training classes, the same Conv4 and loss as ours."""
    import learn2learn as l2l
    import torch

    from protonet_reference import OmniglotSplit

    random.seed(0)
    dataset = OmniglotSplit("train")
    labels_to_indices: dict[int, list[int]] = {}
    for index, label in enumerate(dataset.labels):
        labels_to_indices.setdefault(label, []).append(index)
    meta = l2l.data.MetaDataset(
        dataset, labels_to_indices=labels_to_indices, indices_to_labels=dict(enumerate(dataset.labels))
    )
    way, shot, query = PROTONET_TRAIN["way"], PROTONET_TRAIN["shot"], PROTONET_TRAIN["query"]
    tasks = l2l.data.TaskDataset(
        meta,
        num_tasks=-1,
        task_transforms=[
            l2l.data.transforms.NWays(meta, way),
            l2l.data.transforms.KShots(meta, shot + query),
            l2l.data.transforms.LoadData(meta),
            l2l.data.transforms.RemapLabels(meta),
            l2l.data.transforms.ConsecutiveLabels(meta),
        ],
    )
    backbone = seeded_conv4()
    optimizer = torch.optim.Adam(backbone.parameters(), lr=1e-3)

    def step() -> None:
        images, labels = tasks.sample()
        order = torch.argsort(labels, stable=True)
        images, labels = images[order].view(way, shot + query, *images.shape[1:]), labels[order].view(way, shot + query)
        loss = prototypical_loss(
            backbone,
            images[:, :shot].flatten(0, 1),
            labels[:, :shot].flatten(),
            images[:, shot:].flatten(0, 1),
            labels[:, shot:].flatten(),
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return {"rate": timed_rate(step, steps, warmup), "steps": steps}


def l2l_maml(steps: int, warmup: int, scratch: Path) -> dict:
    """``l2l.algorithms.MAML`` on learn2learn's Omniglot task pipeline: ``maml_reference.fit_l2l``'s loop."""
    import learn2learn as l2l
    import torch
    import torch.nn.functional as F

    from maml_reference import (
        INNER_LR,
        adapted_query_logits,
        l2l_meta_dataset,
        l2l_network,
        l2l_omniglot,
        l2l_task_dataset,
        vinyals_characters,
    )

    random.seed(0)
    torch.manual_seed(0)
    omniglot = l2l_omniglot(REPO / "outputs" / "peers_cpu")  # extracts the zips there once
    train_tasks = l2l_task_dataset(l2l_meta_dataset(omniglot), vinyals_characters(omniglot, "train"), num_tasks=-1)
    maml = l2l.algorithms.MAML(l2l_network("ours", 0), lr=INNER_LR, first_order=False)
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad()
        for _ in range(MAML_TASKS):
            logits, query_labels = adapted_query_logits(maml, *train_tasks.sample(), steps=1)
            (F.cross_entropy(logits, query_labels) / MAML_TASKS).backward()
        optimizer.step()

    return {"rate": timed_rate(step, steps, warmup), "steps": steps}


def easyfsl_test(steps: int, warmup: int, scratch: Path) -> dict:
    """``easyfsl.utils.evaluate`` of a PrototypicalNetworks on ``steps`` TaskSampler test tasks."""
    from easyfsl.methods import PrototypicalNetworks
    from easyfsl.utils import evaluate

    from protonet_reference import make_loader

    random.seed(0)
    model = PrototypicalNetworks(seeded_conv4())
    loader = make_loader("test", TEST, steps)
    started = time.perf_counter()
    evaluate(model, loader, device="cpu", use_tqdm=False)
    seconds = time.perf_counter() - started
    return {"rate": steps / seconds, "steps": steps, "seconds": seconds}


# ---------------------------------------------------------------- the rounds (in the parent process)


def systems(include_protonet: bool, include_maml: bool, include_test: bool) -> list[System]:
    """Every system to measure, grouped by the comparison it belongs to."""
    listed = []
    if include_protonet:
        row = "ProtoNet training, 20-way 1-shot 5-query, episodes/s"
        listed += [
            System(row, "fit (fsl_lightning)", True),
            System(row, "easyfsl 1.5", False),
            System(row, "learn2learn TaskDataset", False),
        ]
    if include_maml:
        row = f"MAML 5-way 1-shot, meta-batch {MAML_TASKS}, 2nd order, meta-iterations/s"
        listed += [System(row, f"fit, engine={engine}", True) for engine in maml_engines()]
        listed += [System(row, "l2l.algorithms.MAML + its pipeline", False)]
    if include_test:
        row = "Test, 5-way 1-shot 15-query, episodes/s"
        listed += [System(row, "test (fsl_lightning)", True), System(row, "easyfsl evaluate", False)]
    return listed


def maml_engines() -> list[str]:
    """The MAML engines this checkout offers: ``vmap``, ``learn2learn``, and ``auto`` once it exists."""
    import inspect
    import re

    from fsl_lightning.adaptation import ENGINES
    from fsl_lightning.methods.maml import MAML

    annotation = inspect.signature(MAML.__init__).parameters["engine"].annotation
    offered = set(ENGINES) | set(re.findall(r"[\"'](\w+)[\"']", str(annotation)))
    return [engine for engine in ("vmap", "learn2learn", "auto") if engine in offered]


def command_of(system: System, budget: dict, peer_python: Path, scratch: Path) -> list[str]:
    """The command that measures ``system`` once (``run`` of this script, under the right interpreter)."""
    key, steps, warmup, python = {
        "fit (fsl_lightning)": ("ours-fit-protonet", budget["protonet"], budget["protonet_warmup"], sys.executable),
        "easyfsl 1.5": ("easyfsl-protonet", budget["protonet"], budget["protonet_warmup"], peer_python),
        "learn2learn TaskDataset": ("l2l-protonet", budget["protonet"], budget["protonet_warmup"], sys.executable),
        "l2l.algorithms.MAML + its pipeline": ("l2l-maml", budget["maml"], budget["maml_warmup"], sys.executable),
        "test (fsl_lightning)": ("ours-test", budget["test"], 0, sys.executable),
        "easyfsl evaluate": ("easyfsl-test", budget["test"], 0, peer_python),
    }.get(system.name) or (
        f"ours-fit-maml-{system.name.split('=')[1]}",
        budget["maml"],
        budget["maml_warmup"],
        sys.executable,
    )
    return [
        str(python),
        str(Path(__file__).resolve()),
        "run",
        key,
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        "--scratch",
        str(scratch),
    ]


def measure_once(command: list[str], scratch: Path) -> dict:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(BENCHMARKS)])}
    scratch.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT)]
    if completed.returncode != 0 or not lines:
        raise SystemExit(
            f"failed (exit {completed.returncode}): {' '.join(command)}\n{completed.stdout[-3000:]}\n"
            f"{completed.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len(RESULT) :])


def main(rounds: int, budget: dict, rows: set[str]) -> None:
    from peers_venv import ensure_peers

    print(cpu_name(), flush=True)
    peer_python = ensure_peers()
    from fsl_lightning.data import Omniglot

    Omniglot(protocol="vinyals", download=False).prepare()  # a warm decoded cache before any timing
    listed = systems("protonet" in rows, "maml" in rows, "test" in rows)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch_dir:
        for round_index in range(rounds):
            shift = round_index % len(listed)
            for number, system in enumerate(listed[shift:] + listed[:shift]):
                scratch = Path(scratch_dir) / f"round{round_index}-{number}"
                result = measure_once(command_of(system, budget, peer_python, scratch), scratch)
                system.rates.append(result["rate"])
                print(
                    f"round {round_index + 1}: {system.name} ({system.row.split(',')[0]}): {result['rate']:.2f}/s "
                    f"({result['threads']} threads)",
                    flush=True,
                )
    print_table(listed, rounds, budget, time.perf_counter() - started)


def print_table(listed: list[System], rounds: int, budget: dict, seconds: float) -> None:
    import torch

    print(
        f"\n{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.2f} at the end; {rounds} interleaved rounds in {seconds / 60:.1f} min; "
        f"ProtoNet {budget['protonet']} steps after {budget['protonet_warmup']}, MAML {budget['maml']} meta-iterations "
        f"after {budget['maml_warmup']}, test {budget['test']} episodes"
    )
    print("| comparison | system | rate (median) | per round | ratio to the best peer |")
    print("|---|---|---|---|---|")
    for row in dict.fromkeys(system.row for system in listed):
        members = [system for system in listed if system.row == row]
        best_peer = max(statistics.median(s.rates) for s in members if not s.ours)
        for system in members:
            median = statistics.median(system.rates)
            name = f"**{system.name}**" if system.ours else system.name
            print(
                f"| {row} | {name} | {median:.2f} | {', '.join(f'{r:.2f}' for r in system.rates)} | "
                f"{median / best_peer:.2f}x |"
            )
    print()
    print(NOTES)


def cpu_name() -> str:
    """The CPU's model and its vector units (AVX2, AVX-512, AVX512-BF16, AMX): the speed lead depends on them."""
    from fsl_lightning.run.cpu_features import this_cpu

    return this_cpu().description()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("run", help="measure one system once (what each round calls)")
    one.add_argument("system")
    one.add_argument("--steps", type=int, required=True)
    one.add_argument("--warmup", type=int, default=0)
    one.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--protonet-steps", type=int, default=150)
    parser.add_argument("--protonet-warmup", type=int, default=20)
    parser.add_argument("--maml-iterations", type=int, default=30)
    parser.add_argument("--maml-warmup", type=int, default=5)
    parser.add_argument("--test-episodes", type=int, default=1000)
    parser.add_argument("--rows", default="protonet,maml,test", help="which comparisons, comma-separated")
    arguments = parser.parse_args()
    if arguments.command == "run":
        measured = run_system(arguments.system, arguments.steps, arguments.warmup, arguments.scratch)
        print(RESULT + json.dumps(measured), flush=True)
    else:
        main(
            arguments.rounds,
            {
                "protonet": arguments.protonet_steps,
                "protonet_warmup": arguments.protonet_warmup,
                "maml": arguments.maml_iterations,
                "maml_warmup": arguments.maml_warmup,
                "test": arguments.test_episodes,
            },
            set(arguments.rows.split(",")),
        )
