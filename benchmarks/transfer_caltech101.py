"""Caltech-101 (this project's split v1): every method's accuracy, and the throughput of both transfer stages.

    python benchmarks/transfer_caltech101.py accuracy [--methods rfs_simple protonet ...] [--cli --trainer.max_steps=2000]
    python benchmarks/transfer_caltech101.py throughput [--steps 300] [--precision bf16-mixed]

``accuracy`` runs each method's ``experiments/caltech101/<method>_5w1s.yaml`` (``fit``, which tests the best
checkpoint on 1000 fixed 5-way 1-shot episodes); the transfer family's pre-training does not depend on the
shot, so its 5-shot row tests the same checkpoint with the ``_5w5s`` config; episodic methods train their own
5-shot run. RFS-distill uses the RFS-simple run of the same table as its teacher. Prints a markdown table:
mean ± 95% CI and wall time.

``throughput`` times stage 1 (RFS pre-training, ResNet12, 84x84, batches of 64 with augmentation: images/s,
end to end through ``fit``), stage 2 (1000 test episodes with the logistic-regression classifier and, for
comparison, ProtoNet's: episodes/s), and the share of a pre-training step spent gathering and augmenting the
batch on the device.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fsl_lightning.cli import main
from protonet_omniglot import _device_name, _synchronize, run_fit

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "caltech101"
TRANSFER = ("baseline", "baseline_pp", "rfs_simple", "rfs_distill", "skd", "transfer_resnet18")
EPISODIC = ("protonet", "r2d2")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def accuracy(methods: list[str], extra: list[str], out: Path) -> None:
    rows = []
    for method in methods:
        teacher = (
            ["--model.init_args.teacher_checkpoint", str(_last_checkpoint(out / "rfs_simple"))]
            if method == "rfs_distill"
            else []
        )
        metrics, _, seconds = run_fit(EXPERIMENTS / f"{method}_5w1s.yaml", out / method, [*extra, *teacher])
        rows.append(_row(method, 1, metrics, f"{seconds:.0f} s"))
        if method in TRANSFER:
            metrics, seconds = _test(EXPERIMENTS / f"{method}_5w5s.yaml", _best_checkpoint(out / method), out, extra)
            rows.append(_row(method, 5, metrics, f"same pre-training; test {seconds:.0f} s"))
        else:
            metrics, _, seconds = run_fit(EXPERIMENTS / f"{method}_5w5s.yaml", out / f"{method}_5s", extra)
            rows.append(_row(method, 5, metrics, f"{seconds:.0f} s"))
        print(rows[-2], rows[-1], sep="\n", flush=True)
    print(
        f"\ndevice: {_device_name()}, torch {torch.__version__}; Caltech-101, fsl_lightning split v1, 84x84, ResNet12"
    )
    print("| method | setting | test accuracy % (95% CI, 1000 episodes) | fit + test time |")
    print("|---|---|---|---|")
    print("\n".join(rows))


def throughput(steps: int, precision: str, episodes: int, out: Path, extra: list[str]) -> None:
    warmup = 30
    stage1 = [
        f"--trainer.max_steps={warmup + steps}",
        f"--data.train_episodes_per_epoch={warmup + steps}",
        "--trainer.limit_val_batches=0",
        "--test_after_fit=false",
        "--trainer.num_sanity_val_steps=0",
        f"--trainer.callbacks.warmup_steps={warmup}",
        f"--trainer.precision={precision}",
        *extra,
    ]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _, timing, _ = run_fit(EXPERIMENTS / "rfs_simple_5w1s.yaml", out / "stage1", stage1)
    batch = 64
    images_per_s = timing["steps_per_s"] * batch
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    share = _data_share(1.0 / timing["steps_per_s"], batch)
    evaluation = [f"--trainer.precision={precision}", f"--data.test_episodes={episodes}", *extra]
    rfs_eval = _episodes_per_s(EXPERIMENTS / "rfs_simple_5w1s.yaml", out, evaluation, episodes)
    proto_eval = _episodes_per_s(EXPERIMENTS / "protonet_5w1s.yaml", out, evaluation, episodes)
    print(f"\ndevice: {_device_name()}, torch {torch.__version__}, precision {precision}")
    print("| workload | rate | notes |")
    print("|---|---|---|")
    print(
        f"| stage 1: RFS pre-training, ResNet12 84x84, batch 64, augmented | {images_per_s:.0f} images/s | "
        f"peak GPU memory {peak:.0f} MiB; gathering + augmenting the batch takes {100 * share:.1f}% of a step |"
    )
    print(
        f"| stage 2: {episodes} test episodes 5w1s, logistic regression on ResNet12 features | {rfs_eval:.1f} episodes/s | untrained weights: the classifier's cost does not depend on them |"
    )
    print(f"| same episodes, ProtoNet | {proto_eval:.1f} episodes/s | |")


def _data_share(step_seconds: float, batch: int, repeats: int = 50) -> float:
    """Seconds to gather + augment one pre-training batch on the device, as a fraction of a whole step."""
    from fsl_lightning.data import Caltech101, EpisodicDataModule
    from fsl_lightning.data.augment import BatchAugmentation

    augmentation = BatchAugmentation(random_resized_crop=False, crop_padding=8)  # as the RFS configs
    datamodule = EpisodicDataModule(Caltech101(), pretrain_batch_size=batch, augmentation=augmentation)
    datamodule.setup("fit")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resident = datamodule.splits["train"].images.to(device)
    indices = torch.randint(len(resident), (batch,), device=device)
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        datamodule.augmentation(resident[indices].float().div_(255))
    _synchronize(device)
    return (time.perf_counter() - started) / repeats / step_seconds


def _episodes_per_s(config: Path, out: Path, extra: list[str], episodes: int) -> float:
    _, seconds = _test(config, None, out, extra)
    return episodes / seconds


def _test(config: Path, checkpoint: Path | None, out: Path, extra: list[str]) -> tuple[dict, float]:
    args = ["test", "--config", str(config), f"--trainer.logger.init_args.save_dir={out / 'tests'}", *QUIET, *extra]
    if checkpoint is not None:
        args += ["--ckpt_path", str(checkpoint)]
    started = time.perf_counter()
    cli = main(args)
    seconds = time.perf_counter() - started
    return {key: float(value) for key, value in cli.trainer.callback_metrics.items()}, seconds


def _best_checkpoint(run: Path) -> Path:
    # checkpoint names end in val_acc<value> (see the configs' ModelCheckpoint filename)
    candidates = [p for p in run.rglob("*.ckpt") if "val_acc" in p.stem]
    if not candidates:
        return _last_checkpoint(run)
    return max(candidates, key=lambda p: float(p.stem.rsplit("val_acc", 1)[1]))


def _last_checkpoint(run: Path) -> Path:
    found = sorted(run.rglob("last.ckpt"))
    if not found:
        raise FileNotFoundError(f"No last.ckpt under {run}: run rfs_simple before rfs_distill.")
    return found[-1]


def _row(method: str, shot: int, metrics: dict, time_note: str) -> str:
    return (
        f"| {method} | 5-way {shot}-shot | {100 * metrics['test/acc']:.2f} ± {100 * metrics['test/acc_ci95']:.2f} "
        f"| {time_note} |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="keep runs here (default: a temporary folder)")
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy")
    acc.add_argument("--methods", nargs="+", default=[*TRANSFER, *EPISODIC])
    acc.add_argument("--cli", nargs=argparse.REMAINDER, default=[], help="extra CLI overrides for every run")
    speed = sub.add_parser("throughput")
    speed.add_argument("--steps", type=int, default=300)
    speed.add_argument("--precision", default="32-true")
    speed.add_argument("--episodes", type=int, default=1000, help="test episodes timed in stage 2")
    speed.add_argument("--cli", nargs=argparse.REMAINDER, default=[], help="extra CLI overrides for every run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        if args.command == "accuracy":
            accuracy(args.methods, [*QUIET, *args.cli], out)
        else:
            throughput(args.steps, args.precision, args.episodes, out, [*QUIET, *args.cli])
