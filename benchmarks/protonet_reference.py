"""Prototypical Networks side by side with a reference: easyfsl's ``PrototypicalNetworks`` and ``TaskSampler``
against this project's ProtoNet (``experiments/omniglot/protonet_5w1s.yaml``), on the same budget.

easyfsl is never a project dependency: ``setup`` installs it into ``benchmarks/.peers-venv`` (git-ignored,
``peers_venv.py``), which reuses the project's torch and packages through a ``.pth`` file, so no second torch is
downloaded.

    python benchmarks/protonet_reference.py setup                          # once: the peer venv with easyfsl 1.5
    python benchmarks/protonet_reference.py ours --episodes 500
    python benchmarks/protonet_reference.py ours --episodes 500 --distance euclidean   # easyfsl's distance
    benchmarks/.peers-venv/bin/python benchmarks/protonet_reference.py easyfsl --episodes 500
    benchmarks/.peers-venv/bin/python benchmarks/protonet_reference.py evaluate

Both train the project's ``Conv4`` (seeded the same way) with Adam 1e-3 halved every 2000 episodes, on 60-way
1-shot 5-query episodes of the Vinyals training classes (28x28, rotations as classes: the project's decoded
images, given to easyfsl through a map-style dataset with ``get_labels()``, since easyfsl has no Omniglot
class). ``evaluate`` scores each saved network on our 1000 fixed 5-way 1-shot 15-query test episodes through
the project's test loop, and on 1000 seeded easyfsl ``TaskSampler`` test tasks of the same test classes.

Differences that come with easyfsl 1.5 (kept: they are the reference's choices):

* scores are minus the Euclidean distance (``torch.cdist``), not the squared distance of the paper and ours;
* support and query images go through the backbone in two batches (batch norm, in training mode, normalises
  each with its own statistics), where ours passes the episode as one batch;
* its sampler draws classes and images with Python's ``random``, ours with seeded torch generators.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from reference_results import save_result

sys.path.insert(0, str(Path(__file__).resolve().parent))
from maml_reference import TEST_EPISODES, accuracy_on_our_episodes, mean_ci  # noqa: E402
from peers_venv import setup_peers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml"
TRAIN = {"way": 60, "shot": 1, "query": 5}  # the config's training episodes
TEST = {"way": 5, "shot": 1, "query": 15}


# ---------------------------------------------------------------- this project's ProtoNet, through its CLI


def fit_ours(episodes: int, seed: int, out: Path, distance: str) -> None:
    from fsl_lightning.cli import main

    arguments = [
        "fit",
        "--config",
        str(CONFIG.relative_to(REPO)),
        f"--trainer.max_steps={episodes}",
        f"--seed_everything={seed}",
        *([f"--model.init_args.distance={distance}"] if distance != "squared_euclidean" else []),
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--test_after_fit=false",
        f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.enable_progress_bar=false",
    ]
    started = time.perf_counter()
    cli = main(arguments)
    seconds = time.perf_counter() - started
    name = "ours" if distance == "squared_euclidean" else f"ours-{distance}"
    save_result(out, name, cli.model.backbone.state_dict(), seconds, "python -m fsl_lightning " + shlex.join(arguments))


# ---------------------------------------------------------------- easyfsl


class OmniglotSplit(torch.utils.data.Dataset):
    """The project's decoded Vinyals split as (float image [1, 28, 28] in [0, 1], class id) pairs, for easyfsl."""

    def __init__(self, split: str) -> None:
        from fsl_lightning.data import Omniglot

        classes = Omniglot(protocol="vinyals", download=False).load_split(split)
        self.images = classes.images
        counts = classes.class_offsets.diff()
        self.labels = torch.repeat_interleave(torch.arange(len(counts)), counts).tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float() / 255.0, self.labels[index]

    def get_labels(self) -> list[int]:
        return self.labels


def fit_easyfsl(episodes: int, seed: int, out: Path) -> None:
    from easyfsl.methods import PrototypicalNetworks

    from fsl_lightning.backbones import Conv4

    random.seed(seed)
    torch.manual_seed(seed)
    model = PrototypicalNetworks(Conv4(in_channels=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2000, gamma=0.5)
    loader = make_loader("train", TRAIN, episodes)
    model.train()
    started = time.perf_counter()
    for episode, (support, support_labels, queries, query_labels, _) in enumerate(loader):
        model.process_support_set(support, support_labels)
        loss = F.cross_entropy(model(queries), query_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if episode % 100 == 0:
            print(f"episode {episode}: loss {loss.item():.3f}", flush=True)
    seconds = time.perf_counter() - started
    command = f"benchmarks/.peers-venv/bin/python benchmarks/protonet_reference.py easyfsl --episodes {episodes} --seed {seed}"
    save_result(out, "easyfsl", model.backbone.state_dict(), seconds, command)


def make_loader(split: str, episode: dict, tasks: int):
    from easyfsl.samplers import TaskSampler

    # easyfsl 1.5 calls Sampler.__init__(data_source=None), an argument later torch releases dropped: accept it.
    if "data_source" not in inspect.signature(torch.utils.data.Sampler.__init__).parameters:
        torch.utils.data.Sampler.__init__ = lambda self, data_source=None: None

    dataset = OmniglotSplit(split)
    sampler = TaskSampler(
        dataset, n_way=episode["way"], n_shot=episode["shot"], n_query=episode["query"], n_tasks=tasks
    )
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=sampler.episodic_collate_fn)


@torch.no_grad()
def accuracy_on_easyfsl_tasks(state: dict, seed: int) -> torch.Tensor:
    """Per-task accuracy on 1000 seeded easyfsl test tasks, scored by easyfsl's PrototypicalNetworks in eval mode."""
    from easyfsl.methods import PrototypicalNetworks

    from fsl_lightning.backbones import Conv4

    backbone = Conv4(in_channels=1)
    backbone.load_state_dict(state)
    model = PrototypicalNetworks(backbone).eval()
    random.seed(seed)
    accuracies = []
    for support, support_labels, queries, query_labels, _ in make_loader("test", TEST, TEST_EPISODES):
        model.process_support_set(support, support_labels)
        accuracies.append((model(queries).argmax(-1) == query_labels).float().mean().item())
    return torch.tensor(accuracies)


def evaluate(out: Path, seed: int) -> None:
    print(
        f"\n| system | our {TEST_EPISODES} test episodes, acc % (95% CI) | paired difference to ours | "
        f"easyfsl TaskSampler, {TEST_EPISODES} test tasks | training time | command |"
    )
    print("|---|---|---|---|---|---|")
    results = {}
    for name in ("ours", "ours-euclidean", "easyfsl"):
        if (out / f"{name}.json").exists():
            state = torch.load(out / f"{name}.pt")
            results[name] = (
                accuracy_on_our_episodes(out / f"{name}.pt", CONFIG, ()),
                accuracy_on_easyfsl_tasks(state, seed),
                json.loads((out / f"{name}.json").read_text()),
            )
    for name, (ours_episodes, easyfsl_tasks, record) in results.items():
        difference = mean_ci(ours_episodes - results["ours"][0]) if name != "ours" and "ours" in results else "-"
        print(
            f"| {name} | {mean_ci(ours_episodes)} | {difference} | {mean_ci(easyfsl_tasks)} | "
            f"{record['seconds']:.0f} s | `{record['command']}` |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "protonet_reference")
    parser.add_argument("--seed", type=int, default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup")
    for name in ("ours", "easyfsl"):
        sub.add_parser(name).add_argument("--episodes", type=int, default=500)
    sub.choices["ours"].add_argument(
        "--distance", choices=("squared_euclidean", "euclidean"), default="squared_euclidean"
    )
    sub.add_parser("evaluate")
    arguments = parser.parse_args()
    if arguments.command == "setup":
        setup_peers()
    elif arguments.command == "ours":
        fit_ours(arguments.episodes, arguments.seed, arguments.out, arguments.distance)
    elif arguments.command == "easyfsl":
        fit_easyfsl(arguments.episodes, arguments.seed, arguments.out)
    else:
        evaluate(arguments.out, arguments.seed)
