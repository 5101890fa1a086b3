"""MAML side by side with a reference: learn2learn's ``l2l.algorithms.MAML`` fed by learn2learn's own Omniglot
task pipeline, against this project's MAML (engines ``vmap`` and ``learn2learn``), on the same budget.

    python benchmarks/maml_reference.py ours --engine vmap        --iterations 300 --tasks 8
    python benchmarks/maml_reference.py ours --engine learn2learn --iterations 300 --tasks 8
    python benchmarks/maml_reference.py l2l                       --iterations 300 --tasks 8
    python benchmarks/maml_reference.py evaluate                  # every trained model, on both test sets

Each training writes ``<out>/<system>.pt`` (the final network as a MAMLConv4 state dict) and ``<system>.json``
(training seconds, command). ``evaluate`` scores every saved network, always with the test setting of
``experiments/omniglot/maml_5w1s.yaml`` (3 inner steps of 0.4, batch statistics), on

* our 1000 fixed 5-way 1-shot test episodes (Vinyals test classes), through this project's test loop
  (the CLI's data module and ``Trainer.test``), so every system is scored on the very same episodes;
* 1000 seeded test tasks from learn2learn's pipeline over the same test characters, adapted with
  ``l2l.algorithms.MAML`` (clone / adapt).

The reference loop is written here from learn2learn's documented API (MetaDataset, FilteredMetaDataset,
TaskDataset with NWays / KShots / LoadData / RemapLabels / ConsecutiveLabels, RandomClassRotation, FullOmniglot,
OmniglotCNN, MAML.clone / adapt). Its network is l2l's ``OmniglotCNN(5, hidden_size=64, layers=4)``: 4 blocks of
3x3 stride-2 convolution, batch norm on batch statistics, ReLU, spatial mean, linear head: the architecture of
``MAMLConv4(downsampling="stride")`` (checked below: equal outputs after a weight copy). Its initial weights are
copied from a seeded MAMLConv4 (``--init ours``, default) so that the initialisation is not a difference;
``--init l2l`` keeps learn2learn's own (xavier convolutions, U(0, 1) batch-norm scales, N(0, 1) head).

Differences of the data pipelines, by construction of learn2learn's (see ``l2l_task_dataset``):

* classes: the same Vinyals characters (1028 train, 423 test), but learn2learn draws 5 distinct *characters*
  and rotates them, where ours draws 5 of the 4 x 1028 (character, rotation) classes, so two rotations of one
  character can meet in one of our tasks, never in one of learn2learn's;
* rotation: learn2learn 0.2.0's ``RandomClassRotation`` binds its rotation lazily (a closure over the loop
  variable), so all images of a task get the rotation drawn for the last class: one rotation per task, not per
  class; it rotates the 28x28 tensor with torchvision's ``RandomRotation((r, r))``; ours rotates the image with
  ``torch.rot90`` (exact);
* preprocessing: learn2learn resizes the 105x105 PNG with PIL's Lanczos filter, then ``1 - x``; ours inverts,
  then area-averages to 28x28 and rounds to uint8 (then / 255);
* FullOmniglot reads an extracted copy of the local zips (``<out>/l2l-data/omniglot-py``); torchvision's md5 check
  of the zip files is replaced by a check of the extracted folders, since the local zips hold the official pixels
  but are not byte-identical to the official archives.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

from reference_results import save_result

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "omniglot" / "maml_5w1s.yaml"
WAY, SHOT, QUERY = 5, 1, 15
INNER_LR, TEST_INNER_STEPS = 0.4, 3
TEST_EPISODES = int(os.environ.get("REFERENCE_TEST_EPISODES", 1000))  # fewer only for smoke tests
SYSTEMS = ("ours-vmap", "ours-learn2learn", "l2l-reference")


# ---------------------------------------------------------------- this project's MAML, through its CLI


def fit_ours(engine: str, iterations: int, tasks: int, seed: int, out: Path) -> None:
    """Trains through ``python -m fsl_lightning fit`` (in this process) and saves the final backbone."""
    from fsl_lightning.cli import main

    arguments = [
        "fit",
        "--config",
        str(CONFIG.relative_to(REPO)),
        f"--model.init_args.engine={engine}",
        f"--data.train_tasks_per_batch={tasks}",
        f"--trainer.max_steps={iterations}",
        f"--seed_everything={seed}",
        # No validation (the reference has none): the last weights are the ones compared.
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--test_after_fit=false",
        f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.enable_progress_bar=false",
    ]
    started = time.perf_counter()
    cli = main(arguments)
    seconds = time.perf_counter() - started
    state = {k: v.detach().cpu() for k, v in cli.model.backbone.state_dict().items()}
    save_result(out, f"ours-{engine}", state, seconds, "python -m fsl_lightning " + shlex.join(arguments))


# ---------------------------------------------------------------- learn2learn's MAML and task pipeline


def l2l_omniglot(out: Path):
    """learn2learn's FullOmniglot over an extracted copy of the local zips, images as l2l's benchmark makes them."""
    import learn2learn as l2l
    import torchvision
    from PIL.Image import LANCZOS
    from torchvision import transforms

    from fsl_lightning.data.roots import data_root

    root = out / "l2l-data"
    extract_zips(data_root(None) / "omniglot", root / "omniglot-py")
    # The local zips are not byte-identical to the official ones (same pixels): check the folders instead.
    torchvision.datasets.omniglot.Omniglot._check_integrity = lambda self: Path(self.target_folder_path()).is_dir()
    torchvision.datasets.omniglot.Omniglot.target_folder_path = lambda self: Path(self.root) / self._get_target_folder()
    preprocess = transforms.Compose(
        [transforms.Resize(28, interpolation=LANCZOS), transforms.ToTensor(), lambda x: 1.0 - x]
    )
    return l2l.vision.datasets.FullOmniglot(root=str(root), transform=preprocess, download=False)


def extract_zips(source: Path, target: Path) -> None:
    for part in ("images_background", "images_evaluation"):
        if not (target / part).is_dir():
            with zipfile.ZipFile(source / f"{part}.zip") as archive:
                archive.extractall(target)


def l2l_meta_dataset(omniglot):
    """MetaDataset with the labels read from torchvision's index (not by decoding all 32,460 images)."""
    import learn2learn as l2l

    background, evaluation = omniglot.dataset.datasets
    offset = len(background._characters)
    labels = [c for _, c in background._flat_character_images] + [
        c + offset for _, c in evaluation._flat_character_images
    ]
    indices_to_labels = dict(enumerate(labels))
    labels_to_indices: dict[int, list[int]] = {}
    for index, label in indices_to_labels.items():
        labels_to_indices.setdefault(label, []).append(index)
    return l2l.data.MetaDataset(omniglot, labels_to_indices=labels_to_indices, indices_to_labels=indices_to_labels)


def vinyals_characters(omniglot, split: str) -> list[int]:
    """FullOmniglot's character ids of the Vinyals split (its file lists character/rotation pairs)."""
    from fsl_lightning.data.roots import data_root

    background, evaluation = omniglot.dataset.datasets
    names = [c.replace("\\", "/") for c in background._characters + evaluation._characters]
    ids = {name: i for i, name in enumerate(names)}
    entries = (data_root(None) / "omniglot" / "vinyals_splits" / f"{split}.txt").read_text().split()
    return sorted({ids[entry.rpartition("/")[0]] for entry in entries})


def l2l_task_dataset(meta, characters: list[int], num_tasks: int):
    """5-way tasks of 1 + 15 images per class from the given characters, each character in a random rotation."""
    import learn2learn as l2l

    dataset = l2l.data.FilteredMetaDataset(meta, characters)
    task_transforms = [
        l2l.data.transforms.NWays(dataset, WAY),
        l2l.data.transforms.KShots(dataset, SHOT + QUERY),
        l2l.data.transforms.LoadData(dataset),
        l2l.data.transforms.RemapLabels(dataset),
        l2l.data.transforms.ConsecutiveLabels(dataset),
        l2l.vision.transforms.RandomClassRotation(dataset, [0.0, 90.0, 180.0, 270.0]),
    ]
    return l2l.data.TaskDataset(dataset, task_transforms=task_transforms, num_tasks=num_tasks)


def split_task(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The first ``SHOT`` images of each class are the support set, the rest the queries."""
    order = torch.argsort(labels, stable=True)
    images, labels = images[order].view(WAY, SHOT + QUERY, *images.shape[1:]), labels[order].view(WAY, SHOT + QUERY)
    return (
        images[:, :SHOT].flatten(0, 1),
        labels[:, :SHOT].flatten(),
        images[:, SHOT:].flatten(0, 1),
        labels[:, SHOT:].flatten(),
    )


def adapted_query_logits(maml, images: torch.Tensor, labels: torch.Tensor, steps: int) -> tuple[torch.Tensor, ...]:
    """Clones the meta-learner, adapts the clone on the support set, scores the queries (support and queries go
    through the network separately, so batch norm uses each set's own statistics, as ours does)."""
    support, support_labels, queries, query_labels = split_task(images, labels)
    learner = maml.clone()
    for _ in range(steps):
        learner.adapt(F.cross_entropy(learner(support), support_labels))
    return learner(queries), query_labels


def fit_l2l(iterations: int, tasks: int, seed: int, init: str, out: Path) -> None:
    import learn2learn as l2l

    random.seed(seed)
    torch.manual_seed(seed)
    omniglot = l2l_omniglot(out)
    meta = l2l_meta_dataset(omniglot)
    # num_tasks=-1: a fresh task at every sample(), as our training stream.
    train_tasks = l2l_task_dataset(meta, vinyals_characters(omniglot, "train"), num_tasks=-1)
    network = l2l_network(init, seed)
    maml = l2l.algorithms.MAML(network, lr=INNER_LR, first_order=False)
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)
    started = time.perf_counter()
    for iteration in range(iterations):
        optimizer.zero_grad()
        for _ in range(tasks):
            logits, query_labels = adapted_query_logits(maml, *train_tasks.sample(), steps=1)
            # Mean over tasks of the mean query loss: the meta-loss of ours.
            (F.cross_entropy(logits, query_labels) / tasks).backward()
        optimizer.step()
        if iteration % 50 == 0:
            print(
                f"iteration {iteration}: last task query loss {F.cross_entropy(logits, query_labels).item():.3f}",
                flush=True,
            )
    seconds = time.perf_counter() - started
    command = (
        f"python benchmarks/maml_reference.py l2l --iterations {iterations} --tasks {tasks} --seed {seed} --init {init}"
    )
    save_result(
        out,
        "l2l-reference" if init == "ours" else "l2l-reference-l2l-init",
        l2l_to_ours(network.state_dict()),
        seconds,
        command,
    )


def l2l_network(init: str, seed: int):
    """l2l's OmniglotCNN, started from a seeded MAMLConv4's weights (``init="ours"``) or from its own."""
    from learn2learn.vision.models import OmniglotCNN

    network = OmniglotCNN(output_size=WAY, hidden_size=64, layers=4)
    check_same_network(network)
    if init == "ours":
        torch.manual_seed(seed)
        load_ours_into_l2l(network, our_network().state_dict())
    return network


# ---------------------------------------------------------------- the two networks' weights


def our_network():
    """MAMLConv4 laid out as learn2learn's OmniglotCNN: batch norm with a scale and PyTorch's eps and initialisation
    (MAMLConv4's defaults are cbfinn/maml's: no scale, eps 1e-3, Glorot initialisation)."""
    from fsl_lightning.backbones.maml_conv4 import MAMLConv4

    return MAMLConv4(
        in_channels=1,
        way=WAY,
        hidden_channels=64,
        image_size=28,
        downsampling="stride",
        initialisation="pytorch",
        batch_norm_scale=True,
        batch_norm_eps=1e-5,
    )


def our_key_of(l2l_key: str) -> str | None:
    """``base.<block>.conv|normalize.<p>`` -> ``features.<block>.0|1.<p>``; ``classifier`` -> ``head``; None for
    the running statistics (ours keeps none: batch statistics always, as l2l's network in train mode) and for the
    ``features.1.*`` aliases of ``base`` in l2l's state dict."""
    parts = l2l_key.split(".")
    if parts[0] == "classifier":
        return "head." + parts[1]
    if parts[0] != "base" or parts[-1] in ("running_mean", "running_var", "num_batches_tracked"):
        return None
    return f"features.{parts[1]}.{ {'conv': 0, 'normalize': 1}[parts[2]] }.{parts[3]}"


def l2l_to_ours(l2l_state: dict) -> dict:
    return {our_key_of(k): v.detach().clone() for k, v in l2l_state.items() if our_key_of(k) is not None}


@torch.no_grad()
def load_ours_into_l2l(network, our_state: dict) -> None:
    for key, parameter in network.named_parameters():  # named_parameters lists each shared tensor once
        parameter.copy_(our_state[our_key_of(key)])


def check_same_network(network) -> None:
    """Same architecture: ours and l2l's give the same logits once they hold the same weights."""
    reference = our_network()
    load_ours_into_l2l(network, reference.state_dict())
    images = torch.rand(20, 1, 28, 28)
    network.train()  # batch statistics, as ours always uses
    if not torch.allclose(network(images), reference(images), atol=1e-5):
        raise RuntimeError("learn2learn's OmniglotCNN and MAMLConv4 disagree with the same weights.")


# ---------------------------------------------------------------- evaluation


def backbone_checkpoint(weights: Path, folder: str) -> Path:
    """A checkpoint holding saved backbone weights, for ``test --ckpt_path`` (which refuses to test a method that
    needs training without trained weights)."""
    import lightning

    path = Path(folder) / "weights.ckpt"
    state = {f"backbone.{key}": value for key, value in torch.load(weights).items()}
    torch.save({"state_dict": state, "pytorch-lightning_version": lightning.__version__}, path)
    return path


def accuracy_on_our_episodes(
    weights: Path,
    config: Path = CONFIG,
    overrides: tuple[str, ...] = (f"--model.init_args.test_inner_steps={TEST_INNER_STEPS}",),
) -> torch.Tensor:
    """Per-episode accuracy of saved backbone weights on our fixed test episodes of ``config``, through
    ``python -m fsl_lightning test`` (its data module and test loop)."""
    from fsl_lightning.cli import main

    with tempfile.TemporaryDirectory() as run_folder:  # the CLI saves its config there, not in the checkout
        cli = main(
            [
                "test",
                "--config",
                str(config),
                "--trainer.logger=false",
                "--trainer.enable_progress_bar=false",
                f"--trainer.default_root_dir={run_folder}",
                f"--data.test_episodes={TEST_EPISODES}",
                *overrides,
                "--ckpt_path",
                str(backbone_checkpoint(weights, run_folder)),
            ]
        )
    return cli.model.last_accuracy["test"].per_episode.cpu()


def accuracy_on_l2l_tasks(state: dict, out: Path, seed: int) -> torch.Tensor:
    """Per-task accuracy on 1000 seeded learn2learn test tasks, adapted by ``l2l.algorithms.MAML``."""
    import learn2learn as l2l
    from learn2learn.vision.models import OmniglotCNN

    omniglot = l2l_omniglot(out)
    random.seed(seed)  # the task descriptions (classes, images, rotations) come from Python's random
    tasks = l2l_task_dataset(l2l_meta_dataset(omniglot), vinyals_characters(omniglot, "test"), TEST_EPISODES)
    network = OmniglotCNN(output_size=WAY, hidden_size=64, layers=4)
    load_ours_into_l2l(network, state)
    maml = l2l.algorithms.MAML(network, lr=INNER_LR, first_order=True)  # no meta-gradient at test
    accuracies = []
    for index in range(TEST_EPISODES):
        random.seed(seed * 100_003 + index)  # the rotation of task ``index`` is drawn when it is loaded
        logits, query_labels = adapted_query_logits(maml, *tasks[index], steps=TEST_INNER_STEPS)
        accuracies.append((logits.argmax(-1) == query_labels).float().mean().item())
    return torch.tensor(accuracies)


def mean_ci(values: torch.Tensor) -> str:
    values = values.double()
    return f"{100 * values.mean():.2f} ± {100 * 1.96 * values.std() / math.sqrt(len(values)):.2f}"


def evaluate(out: Path, seed: int) -> None:
    rows, ours_per_episode = [], {}
    for result in sorted(out.glob("*.json")):
        name, record = result.stem, json.loads(result.read_text())
        state = torch.load(out / f"{name}.pt")
        ours_per_episode[name] = accuracy_on_our_episodes(out / f"{name}.pt")
        l2l_tasks = accuracy_on_l2l_tasks(state, out, seed)
        rows.append((name, record, l2l_tasks))
    baseline = ours_per_episode.get("ours-vmap")
    print(
        f"\n| system | our {TEST_EPISODES} test episodes, acc % (95% CI) | paired difference to ours-vmap | "
        f"l2l pipeline, {TEST_EPISODES} test tasks | training time | command |"
    )
    print("|---|---|---|---|---|---|")
    for name, record, l2l_tasks in rows:
        ours = ours_per_episode[name]
        difference = mean_ci(ours - baseline) if baseline is not None and name != "ours-vmap" else "-"
        print(
            f"| {name} | {mean_ci(ours)} | {difference} | {mean_ci(l2l_tasks)} | {record['seconds']:.0f} s | "
            f"`{record['command']}` |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "maml_reference")
    parser.add_argument("--seed", type=int, default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("ours", "l2l"):
        command = sub.add_parser(name)
        command.add_argument("--iterations", type=int, default=300)
        command.add_argument("--tasks", type=int, default=8, help="tasks per meta-batch")
    sub.choices["ours"].add_argument("--engine", choices=("auto", "loop", "vmap", "learn2learn"), default="vmap")
    sub.choices["l2l"].add_argument("--init", choices=("ours", "l2l"), default="ours")
    sub.add_parser("evaluate")
    arguments = parser.parse_args()
    if arguments.command == "ours":
        fit_ours(arguments.engine, arguments.iterations, arguments.tasks, arguments.seed, arguments.out)
    elif arguments.command == "l2l":
        fit_l2l(arguments.iterations, arguments.tasks, arguments.seed, arguments.init, arguments.out)
    else:
        evaluate(arguments.out, arguments.seed)
    sys.exit(0)
