"""Each adaptation engine's meta-training step against the fastest exact step.

    python benchmarks/maml_engines.py [--rounds 3] [--steps 30] [--fit-steps 60] [--tasks 8]

MAML 5-way 1-shot 15-query, Omniglot 28x28, the paper's Omniglot Conv4 (64 filters, strided, batch statistics),
meta-batch ``--tasks``, 1 inner step of 0.4, second order, Adam. In one process, in interleaved rounds (medians
reported), meta-iterations per second of:

* ``fit``: ``python -m fsl_lightning fit`` of experiments/omniglot/maml_5w1s.yaml with each engine, timed by
  :class:`~fsl_lightning.callbacks.EpisodeThroughput` (``steps_per_s``) after a warm-up, validation off;
* each engine's model step: ``MAML.training_step`` + backward + Adam on one training batch already in memory;
* hand-written exact steps, no framework: task by task with torch's ``nn.BatchNorm2d`` (one backward of the
  stacked query loss, or one backward per task), task by task with the plain-op batch norm, and ``vmap`` with the
  plain-op batch norm. The fastest of them is the ceiling that the ratios divide by.

Before timing, every step's meta-gradient on the resident batch is compared with the hand-written task-by-task
one (max absolute difference, fp32): the speeds compare the same computation.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fsl_lightning.backbones.maml_conv4 import MAMLConv4  # noqa: E402
from fsl_lightning.backbones.plain_batchnorm import PlainBatchNorm2d  # noqa: E402
from fsl_lightning.data import EpisodicDataModule, Omniglot  # noqa: E402
from fsl_lightning.episode import Episode, EpisodeSpec  # noqa: E402
from fsl_lightning.methods import ANIL, FOMAML, MAML, MetaSGD, Reptile  # noqa: E402
from protonet_omniglot import _device_name, run_fit, timed_rate  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "omniglot" / "maml_5w1s.yaml"
ENGINES = ("auto", "vmap", "learn2learn")  # auto is the loop engine on a CPU, vmap on a GPU
FAMILY = (FOMAML, ANIL, MetaSGD, Reptile)  # with --family: their model steps, engines loop and vmap
INNER_LR, META_LR = 0.4, 1e-3


def network(seed: int = 0) -> MAMLConv4:
    torch.manual_seed(seed)
    return MAMLConv4(in_channels=1, way=5, hidden_channels=64, image_size=28, downsampling="stride")


def with_torch_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each PlainBatchNorm2d replaced by ``nn.BatchNorm2d`` (batch statistics)."""
    model = copy.deepcopy(model)
    for name, child in list(model.named_modules()):
        if isinstance(child, PlainBatchNorm2d):
            norm = nn.BatchNorm2d(child.num_features, child.eps, track_running_stats=False)
            norm.load_state_dict(child.state_dict())
            parent, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent), attribute, norm)
    return model


# --- hand-written exact second-order steps --------------------------------------------------------------------


def adapted(model: nn.Module, params: dict[str, Tensor], images: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """One second-order inner step on one task, by autograd."""
    loss = F.cross_entropy(functional_call(model, params, (images,)), labels)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    return {name: p - INNER_LR * g for (name, p), g in zip(params.items(), grads)}


def task_loss(model: nn.Module, params: dict[str, Tensor], batch: Episode, task: int) -> Tensor:
    fast = adapted(model, params, batch.support_images[task], batch.support_labels[task])
    return F.cross_entropy(functional_call(model, fast, (batch.query_images[task],)), batch.query_labels[task])


def loop_stacked_loss(model: nn.Module, batch: Episode) -> None:
    """Task by task, the mean query loss over tasks, one backward."""
    params = dict(model.named_parameters())
    tasks = batch.support_images.shape[0]
    torch.stack([task_loss(model, params, batch, t) for t in range(tasks)]).mean().backward()


def loop_backward_per_task(model: nn.Module, batch: Episode) -> None:
    """Task by task, each task's graph differentiated (and freed) before the next is built."""
    params = dict(model.named_parameters())
    tasks = batch.support_images.shape[0]
    for t in range(tasks):
        (task_loss(model, params, batch, t) / tasks).backward()


def vmap_stacked_loss(model: nn.Module, batch: Episode) -> None:
    """All tasks at once: torch.func.grad inside vmap (needs the plain-op batch norm to be exact)."""
    params = dict(model.named_parameters())

    def support_loss(fast, images, labels):
        return F.cross_entropy(functional_call(model, fast, (images,)), labels)

    def query_loss(support_images, support_labels, query_images, query_labels):
        grads = grad(support_loss)(params, support_images, support_labels)
        fast = {name: p - INNER_LR * grads[name] for name, p in params.items()}
        return F.cross_entropy(functional_call(model, fast, (query_images,)), query_labels)

    losses = vmap(query_loss)(batch.support_images, batch.support_labels, batch.query_images, batch.query_labels)
    losses.mean().backward()


HAND_WRITTEN = {
    "loop, torch BN, one backward": (loop_stacked_loss, True),
    "loop, torch BN, backward per task": (loop_backward_per_task, True),
    "loop, plain BN, one backward": (loop_stacked_loss, False),
    "vmap, plain BN, one backward": (vmap_stacked_loss, False),
}


def hand_written_step(name: str) -> tuple[nn.Module, Callable[[Episode], None]]:
    meta_gradient, torch_norm = HAND_WRITTEN[name]
    model = network()
    model = with_torch_batch_norm(model) if torch_norm else model
    optimizer = torch.optim.Adam(model.parameters(), lr=META_LR)

    def step(batch: Episode) -> None:
        optimizer.zero_grad(set_to_none=True)
        meta_gradient(model, batch)
        optimizer.step()

    return model, step


# --- the method's own step ------------------------------------------------------------------------------------


def engine_step(engine: str, method_class: type[MAML] = MAML) -> tuple[nn.Module, Callable[[Episode], None]]:
    """``training_step`` + backward + Adam, what Lightning's automatic optimisation runs."""
    method = method_class(network(), inner_lr=INNER_LR, engine=engine)
    method.log = lambda *args, **kwargs: None  # outside a Trainer there is nowhere to log to
    method.train()
    optimizer = torch.optim.Adam(method.parameters(), lr=META_LR)

    def step(batch: Episode) -> None:
        loss = method.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return method.backbone, step


def meta_gradient_of(build: Callable[[], tuple[nn.Module, Callable[[Episode], None]]], batch: Episode) -> Tensor:
    """The meta-gradient of one step from the initial weights: every step leaves it on the parameters (it zeroes
    them before its backward, not after)."""
    model, step = build()
    step(batch)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


# --- fit ------------------------------------------------------------------------------------------------------


def fit_rate(engine: str, tasks: int, steps: int, warmup: int, out: Path) -> float:
    overrides = [
        f"--model.init_args.engine={engine}",
        f"--data.train_tasks_per_batch={tasks}",
        f"--trainer.max_steps={warmup + steps}",
        f"--data.train_episodes_per_epoch={warmup + steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--test_after_fit=false",
        f"--trainer.callbacks.warmup_steps={warmup}",
    ]
    _, timing, _ = run_fit(CONFIG, out / engine, overrides)
    return timing["steps_per_s"]


def resident_batch(tasks: int, device: torch.device) -> Episode:
    spec = EpisodeSpec(way=5, shot=1, query=15)
    data = EpisodicDataModule(Omniglot(protocol="vinyals"), train=spec, evaluation=spec, train_tasks_per_batch=tasks)
    data.prepare_data()
    data.setup("fit")
    return data.training_batch(0, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="timed model steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed model steps first")
    parser.add_argument("--fit-steps", type=int, default=60, help="timed fit steps per measurement")
    parser.add_argument("--fit-warmup", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=8, help="tasks per meta-batch")
    parser.add_argument("--engines", nargs="*", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--fit-engines", nargs="*", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--hand-written", nargs="*", default=list(HAND_WRITTEN), choices=list(HAND_WRITTEN))
    parser.add_argument("--skip-gradient-check", action="store_true")
    parser.add_argument("--family", action="store_true", help="also FOMAML, ANIL, Meta-SGD, Reptile: loop vs vmap")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{_device_name()}; load average at start: {os.getloadavg()}, threads {torch.get_num_threads()}", flush=True)
    batch = resident_batch(args.tasks, device)

    steps: dict[str, Callable[[], tuple[nn.Module, Callable[[Episode], None]]]] = {
        **{f"model step, engine {e}": (lambda e=e: engine_step(e)) for e in args.engines},
        **{f"hand-written: {n}": (lambda n=n: hand_written_step(n)) for n in args.hand_written},
    }
    family = {
        f"model step, {m.__name__}, engine {e}": (lambda e=e, m=m: engine_step(e, m))
        for m in (FAMILY if args.family else ())
        for e in ("loop", "vmap")
    }
    reference = meta_gradient_of(lambda: hand_written_step("loop, torch BN, one backward"), batch)
    for name, build in ({} if args.skip_gradient_check else steps).items():
        difference = (meta_gradient_of(build, batch) - reference).abs().max().item()
        print(f"meta-gradient max |difference| to the hand-written loop: {difference:.1e}  {name}", flush=True)

    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_number in range(args.rounds):
            for name, build in {**steps, **family}.items():
                _, step = build()
                rates.setdefault(name, []).append(timed_rate(lambda: step(batch), args.steps, args.warmup, device))
                print(f"round {round_number}: {name}: {rates[name][-1]:.2f} meta-iterations/s", flush=True)
            for engine in args.fit_engines:
                name = f"fit, engine {engine}"
                rate = fit_rate(engine, args.tasks, args.fit_steps, args.fit_warmup, Path(scratch) / str(round_number))
                rates.setdefault(name, []).append(rate)
                print(f"round {round_number}: {name}: {rate:.2f} meta-iterations/s", flush=True)

    medians = {name: statistics.median(values) for name, values in rates.items()}
    ceiling_name = max((n for n in medians if n.startswith("hand-written")), key=medians.get)
    ceiling = medians[ceiling_name]
    print(
        f"\nload average at end: {os.getloadavg()}; device: {_device_name()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.rounds} interleaved rounds, medians"
    )
    print(f"MAML 5w1s15q, Conv4 64 strided, 28x28, meta-batch {args.tasks}, 1 inner step, second order")
    print(f"| step | meta-iterations/s (median) | rounds | / fastest exact step ({ceiling_name[14:]}) |")
    print("|---|---|---|---|")
    for name, value in medians.items():
        print(f"| {name} | {value:.2f} | {', '.join(f'{r:.2f}' for r in rates[name])} | {value / ceiling:.2f} |")


if __name__ == "__main__":
    main()
