"""Pretrained foundation models (CLIP ViT-B/32, DINOv2 ViT-S/14): speed and accuracy, for BENCHMARKS.md.

    python benchmarks/pretrained_features.py throughput [--precision bf16-mixed] [--batch-size 256]
    python benchmarks/pretrained_features.py episodes [--episodes 1000]
    python benchmarks/pretrained_features.py accuracy [--cifar100 <archive or folder>]
    python benchmarks/pretrained_features.py all

``throughput``: feature extraction, images/s, of each model on 224 x 224 images resident on the device (the
model's preprocessing included), in the given precision.
``episodes``: Caltech-101 test episodes (5-way 1-shot) with frozen DINOv2 features: the first ``test`` embeds the
split once, the second reads the cached features; both are timed, with prototypes and with logistic regression.
``accuracy``: the experiment configs end to end through the CLI (``experiments/caltech101/clip_*.yaml``,
``dinov2_*.yaml``: Caltech-101 5w1s / 5w5s, CLIP zero-shot over the 20 test classes), and CLIP zero-shot on the
10,000 CIFAR-100 test images over all 100 classes (top-1 / top-5, CLIP's 80 ImageNet prompts).

Weights: by default from the official hubs (open_clip's ``openai`` ViT-B-32 and timm's DINOv2 ``lvd142m``, into
the Hugging Face cache); ``--clip-weights`` / ``--dinov2-weights`` take local files instead (the script runs end to
end with them on a machine without internet); ``--random-weights`` uses none (the timings do not depend on the
weights; accuracy rows are then marked as random and mean nothing). ``--tiny`` swaps in small models of the same
architectures at 32 pixels with random weights unless files are given, so that the whole script runs on a CPU in a
few minutes: a smoke test of the script itself, not a measurement.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
import yaml

from fsl_lightning.backbones.clip_backbone import CLIPBackbone
from fsl_lightning.backbones.timm_backbone import TimmBackbone
from fsl_lightning.cli import main
from fsl_lightning.data import Caltech101, DatasetNotFoundError, EpisodicDataModule
from fsl_lightning.data.datasets.cifar import ARCHIVE, TOP, read_cifar100
from fsl_lightning.data.roots import data_root
from fsl_lightning.episode import EpisodeSpec
from fsl_lightning.methods import CLIPZeroShot, FrozenFeatures
from fsl_lightning.methods.clip import top_k_accuracy
from fsl_lightning.methods.episode_classifiers import LogisticRegression, NearestCentroid

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "caltech101"
CLIP_NAME, CLIP_TAG = "ViT-B-32", "openai"
DINOV2_NAME = "vit_small_patch14_dinov2"
#: --tiny: the same architectures, 2 blocks deep and 64 / 48 wide, at 32 / 28 pixels.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"width": 64, "heads": 2, "layers": 2},
}
TINY_DINOV2 = {"depth": 2, "embed_dim": 48, "num_heads": 2, "init_values": 1.0}
CIFAR100_TEST = slice(50_000, None)  # read_cifar100 pools the train file (50,000 images) and then the test file
CONFIGS = (
    ("clip_zeroshot", "Caltech-101 zero-shot, 20-way (all test classes)"),
    ("clip_5w1s", "Caltech-101 5w1s"),
    ("clip_5w5s", "Caltech-101 5w5s"),
    ("dinov2_5w1s", "Caltech-101 5w1s"),
    ("dinov2_5w5s", "Caltech-101 5w5s"),
)


# ----- the models, as the flags ask ----------------------------------------------------------------------------------
def clip_settings(args: argparse.Namespace) -> dict:
    """CLIPBackbone arguments: the real model with its tag, a local file, random weights, or the tiny model."""
    random = args.random_weights or (args.tiny and not args.clip_weights)
    settings = {
        "name": CLIP_NAME,
        "pretrained": None if random else CLIP_TAG,
        "weights_path": args.clip_weights,
        "frozen": True,
    }
    return {**settings, "model_config": TINY_CLIP} if args.tiny else settings


def dinov2_settings(args: argparse.Namespace) -> dict:
    """TimmBackbone arguments, likewise."""
    random = args.random_weights or (args.tiny and not args.dinov2_weights)
    settings = {
        "name": DINOV2_NAME,
        "pretrained": None if random else True,
        "weights_path": args.dinov2_weights,
        "frozen": True,
        "image_size": 28 if args.tiny else 224,
    }
    return {**settings, "model_kwargs": TINY_DINOV2} if args.tiny else settings


def weights_note(settings: dict, accuracy: bool = True) -> str:
    if settings["weights_path"]:
        return f"weights from {settings['weights_path']}"
    if settings["pretrained"] is None:
        return "RANDOM weights: not an accuracy measurement" if accuracy else "random weights"
    return "hub weights"


def image_size(args: argparse.Namespace) -> int:
    return 32 if args.tiny else 224


def autocast(device: torch.device, precision: str):
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----- throughput ----------------------------------------------------------------------------------------------------
def extraction_rate(backbone: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> float:
    """Images/s through the model (preprocessing included) on a resident uint8 batch, after a warm-up."""
    backbone = backbone.to(device).eval()
    side = image_size(args)
    images = torch.randint(0, 256, (args.batch_size, 3, side, side), dtype=torch.uint8, device=device)
    with torch.inference_mode(), autocast(device, args.precision):
        for _ in range(3):
            backbone(images.float().div_(255))
        synchronize(device)
        started = time.perf_counter()
        for _ in range(args.batches):
            backbone(images.float().div_(255))
        synchronize(device)
    return args.batch_size * args.batches / (time.perf_counter() - started)


def throughput(args: argparse.Namespace, device: torch.device) -> list[str]:
    rows = []
    for label, build, settings in (
        (f"CLIP {CLIP_NAME} image tower", CLIPBackbone, clip_settings(args)),
        (f"DINOv2 ViT-S/14 ({DINOV2_NAME})", TimmBackbone, dinov2_settings(args)),
    ):
        rate = extraction_rate(build(**settings), args, device)
        side = image_size(args)
        rows.append(
            f"| feature extraction, {label}, {side}x{side}, batch {args.batch_size}, {args.precision} | "
            f"{rate:,.0f} images/s | {weights_note(settings, accuracy=False)} (speed does not depend on "
            "them) |"
        )
        print(rows[-1], flush=True)
    return rows


# ----- episodes from cached features --------------------------------------------------------------------------------
def episodes(args: argparse.Namespace, device: torch.device) -> list[str]:
    dataset = Caltech101(image_size=image_size(args))
    datamodule = EpisodicDataModule(
        dataset, evaluation=EpisodeSpec(5, 1, 15), val_episodes=1, test_episodes=args.episodes
    )
    rows = []
    for name, classifier in (("prototypes", NearestCentroid()), ("logistic regression", LogisticRegression())):
        model = FrozenFeatures(TimmBackbone(**dinov2_settings(args)), episode_classifier=classifier)
        first = timed_test(model, datamodule, args)
        second = timed_test(model, datamodule, args)
        embedded = len(datamodule.splits["test"].images)
        rows.append(
            f"| {args.episodes} Caltech-101 5w1s test episodes, frozen DINOv2 ViT-S/14, {name} | "
            f"{second:.1f} s from cached features | first run {first:.1f} s, embedding the {embedded} test "
            f"images once; {args.precision} |"
        )
        print(rows[-1], flush=True)
    return rows


def timed_test(model: L.LightningModule, datamodule: EpisodicDataModule, args: argparse.Namespace) -> float:
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    started = time.perf_counter()
    trainer.test(model, datamodule, verbose=False)
    return time.perf_counter() - started


# ----- accuracy ------------------------------------------------------------------------------------------------------
def accuracy(args: argparse.Namespace, device: torch.device, out: Path) -> list[str]:
    rows = [config_row(config, setting, args, out) for config, setting in CONFIGS]
    rows.append(cifar100_zero_shot(args, device))
    print(rows[-1], flush=True)
    return rows


def config_row(config: str, setting: str, args: argparse.Namespace, out: Path) -> str:
    """One experiment config through the CLI ``test``, with the flags' weights (and sizes, with --tiny)."""
    is_clip = config.startswith("clip")
    settings = clip_settings(args) if is_clip else dinov2_settings(args)
    overrides = out / f"{config}_overrides.yaml"
    overrides.write_text(yaml.safe_dump(config_overrides(settings, args)))
    cli_args = [
        "test",
        "--config",
        str(EXPERIMENTS / f"{config}.yaml"),
        "--config",
        str(overrides),
        f"--trainer.accelerator={args.accelerator}",
        "--trainer.devices=1",
        f"--trainer.precision={args.precision}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={out / 'logs'}",
        *([f"--data.test_episodes={args.episodes}"] if args.episodes != 1000 else []),
        *([f"--data.val_episodes={args.val_episodes}"] if args.val_episodes else []),
    ]
    started = time.perf_counter()
    metrics = {key: float(value) for key, value in main(cli_args).trainer.callback_metrics.items()}
    method = "zero-shot" if "zeroshot" in config else ("few-shot, mixed with zero-shot" if is_clip else "frozen")
    model = f"CLIP {CLIP_NAME}" if is_clip else "DINOv2 ViT-S/14"
    top5 = f", top-5 {100 * metrics['test/top5']:.2f}%" if "test/top5" in metrics and "zeroshot" in config else ""
    mix = f", mix weight {metrics['test/mix_weight']:g}" if "test/mix_weight" in metrics else ""
    row = (
        f"| {setting} | {model} {method} ({config}.yaml) | {100 * metrics['test/acc']:.2f} ± "
        f"{100 * metrics['test/acc_ci95']:.2f}%{top5}{mix} | {weights_note(settings)}; "
        f"{time.perf_counter() - started:.0f} s |"
    )
    print(row, flush=True)
    return row


def config_overrides(settings: dict, args: argparse.Namespace) -> dict:
    """A YAML layer over the config (a file: jsonargparse reads `null` given on the command line for a nested
    backbone argument as the string "None")."""
    backbone = {key: value for key, value in settings.items() if key != "name"}
    overrides = {"model": {"init_args": {"backbone": {"init_args": backbone}}}}
    if args.tiny:
        overrides["data"] = {"dataset": {"init_args": {"image_size": 32}}}
    return overrides


def cifar100_zero_shot(args: argparse.Namespace, device: torch.device) -> str:
    settings = clip_settings(args)
    source = Path(args.cifar100) if args.cifar100 else cifar100_source()
    if source is None:
        return (
            f"| CIFAR-100 zero-shot, 100 classes, 10,000 test images | CLIP {CLIP_NAME} | not measured: CIFAR-100 "
            f"not found under {data_root() / 'cifar100'} ({ARCHIVE} or {TOP}/) | |"
        )
    started = time.perf_counter()
    cifar = read_cifar100(source)
    images, labels = cifar.images[CIFAR100_TEST], cifar.fine_labels[CIFAR100_TEST].to(device)
    model = CLIPZeroShot(CLIPBackbone(**settings), templates="openai_imagenet").to(device).eval()
    with torch.inference_mode(), autocast(device, args.precision):
        class_weights = model.class_weights(cifar.fine_names)
        features = torch.cat(
            [model.embed(batch.to(device).float().div_(255)) for batch in images.split(args.batch_size)]
        )
        logits = model.zero_shot_logits(features, class_weights)
    top1, top5 = (100 * float(top_k_accuracy(logits, labels, k)) for k in (1, 5))
    return (
        f"| CIFAR-100 zero-shot, 100 classes, {len(labels):,} test images | CLIP {CLIP_NAME}, 80 ImageNet "
        "prompts | "
        f"top-1 {top1:.2f}%, top-5 {top5:.2f}% | {weights_note(settings)}; {time.perf_counter() - started:.0f} s |"
    )


def cifar100_source() -> Path | None:
    folder = data_root() / "cifar100"
    return next((path for path in (folder / TOP, folder / ARCHIVE) if path.exists()), None)


# ----- main ----------------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("throughput", "episodes", "accuracy", "all"))
    parser.add_argument("--clip-weights", help=f"local open_clip {CLIP_NAME} weights file ({CLIP_TAG} preprocessing)")
    parser.add_argument(
        "--dinov2-weights",
        help="local DINOv2 ViT-S/14 weights (timm's model.safetensors or dinov2_vits14_pretrain.pth)",
    )
    parser.add_argument("--random-weights", action="store_true", help="no pretrained weights (timings only)")
    parser.add_argument("--tiny", action="store_true", help="small models at 32 pixels: a CPU smoke test")
    parser.add_argument("--accelerator", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16-mixed" if torch.cuda.is_available() else "32-true")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20, help="timed batches of the throughput measurement")
    parser.add_argument("--episodes", type=int, default=1000, help="test episodes (episodes and accuracy)")
    parser.add_argument("--val-episodes", type=int, default=0, help="validation episodes (default: the config's)")
    parser.add_argument("--cifar100", help=f"the CIFAR-100 {ARCHIVE} or {TOP}/ (default: under the data root)")
    parser.add_argument("--out", help="folder for logs (default: a temporary folder)")
    return parser.parse_args()


def run(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if args.accelerator in ("cuda", "gpu") else args.accelerator)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        if args.command in ("throughput", "all"):
            rows += throughput(args, device)
        if args.command in ("episodes", "all"):
            rows += episodes(args, device)
        if args.command in ("accuracy", "all"):
            try:
                rows += accuracy(args, device, out)
            except DatasetNotFoundError as error:
                rows.append(f"| accuracy | | not measured: {error} | |")
    print(
        f"\ndevice: {device_name}, torch {torch.__version__}, precision {args.precision}"
        f"{', TINY models (smoke test, not a measurement)' if args.tiny else ''}"
    )
    print("| workload | result | notes |")
    print("|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    run(parse_args())
