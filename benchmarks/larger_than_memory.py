"""A training split several times larger than the memory its process may use, built, trained on and tested.

A synthetic Omniglot-sized dataset (28x28 grey images, 20 per class; each class a random pattern plus noise, so that
episodes are learnable) whose training split takes ``--gib`` GiB is decoded into the project's cache and trained on
with ProtoNet (Conv4, 5-way 1-shot) with ``data.resident: host``, then tested, all inside a cgroup-v1 memory cgroup
limited to ``--limit-gib`` (Linux, root: ``/sys/fs/cgroup/memory``). The cache entry is built as a decoder that
streams would build it: into a file-backed buffer (``file_backed_uint8``, which the Omniglot and natural-image
decoders fill too), one chunk of classes at a time. A process that copied the split
into its own memory (the cache read with a plain ``torch.load``, as before 2026-12-07) is killed by the cgroup.

    FSL_CACHE_DIR=/tmp/large-cache python benchmarks/larger_than_memory.py --gib 6 --limit-gib 2 [--steps 200]

Prints the peak memory of the cgroup (page cache included, which the kernel reclaims under the limit), and the
process's peak resident set and anonymous memory, next to the split's size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fsl_lightning.data.datasets.base import ClassImages, FewShotDataset  # noqa: E402
from fsl_lightning.data.decoded_cache import cached, file_backed_uint8  # noqa: E402

SIDE, PER_CLASS, CLASSES_PER_CHUNK = 28, 20, 4096
CGROUP = Path("/sys/fs/cgroup/memory/fsl_larger_than_memory")


class SyntheticSplits(FewShotDataset):
    """Training split of about ``gib`` GiB, validation and test splits of 2000 classes each."""

    channels = 1

    def __init__(self, gib: float) -> None:
        self.gib = gib
        self.image_size = SIDE

    def classes_of(self, split: str) -> int:
        if split == "train":
            return int(self.gib * 2**30 / (PER_CLASS * SIDE * SIDE))
        return 2000

    def prepare(self) -> None:
        for split in ("train", "val", "test"):
            self.load_split(split)

    def load_split(self, split: str) -> ClassImages:
        key = f"synthetic-{self.gib}gib-{split}"
        return ClassImages.from_payload(cached(key, ["synthetic", self.gib, split, 1], lambda: self._build(split)))

    def decode_image(self, data, name):
        raise NotImplementedError("synthetic images have no files")

    def _build(self, split: str) -> dict:
        classes = self.classes_of(split)
        count = classes * PER_CLASS
        images = file_backed_uint8((count, 1, SIDE, SIDE))  # as the project's decoders fill theirs, chunk by chunk
        generator = torch.Generator().manual_seed({"train": 0, "val": 1, "test": 2}[split])
        for first in range(0, classes, CLASSES_PER_CHUNK):
            chunk = min(CLASSES_PER_CHUNK, classes - first)
            patterns = torch.rand(chunk, 1, 1, SIDE, SIDE, generator=generator) * 200
            noise = torch.rand(chunk, PER_CLASS, 1, SIDE, SIDE, generator=generator) * 55
            images[first * PER_CLASS : (first + chunk) * PER_CLASS] = (patterns + noise).to(torch.uint8).flatten(0, 1)
        offsets = torch.arange(classes + 1, dtype=torch.long) * PER_CLASS
        return {"images": images, "offsets": offsets, "names": [f"class{c}" for c in range(classes)], "groups": None}


def train_and_test(gib: float, steps: int) -> None:
    """Runs inside the cgroup: build (or map) the splits, train, test; prints the process's own peaks."""
    import lightning as L

    from fsl_lightning.backbones import Conv4
    from fsl_lightning.data import EpisodicDataModule
    from fsl_lightning.episode import EpisodeSpec
    from fsl_lightning.methods import ProtoNet

    start = time.time()
    dataset = SyntheticSplits(gib)
    dataset.prepare()
    built = time.time() - start
    spec = EpisodeSpec(way=5, shot=1, query=5)
    datamodule = EpisodicDataModule(
        dataset,
        train=spec,
        evaluation=spec,
        train_episodes_per_epoch=steps,
        val_episodes=0,
        test_episodes=200,
        resident="host",
    )
    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    model = ProtoNet(Conv4(in_channels=1))
    trainer.fit(model, datamodule=datamodule)
    accuracy = trainer.test(model, datamodule=datamodule, verbose=False)[0]["test/acc"]
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    train_bytes = datamodule.splits["train"].images.numel()
    print(
        f"split: train {train_bytes / 2**30:.2f} GiB ({datamodule.splits['train'].num_classes} classes); "
        f"build or map {built:.0f} s; {steps} steps + 200 test episodes: test accuracy {accuracy:.3f}"
    )
    print(
        f"process: peak resident {status['VmHWM'].strip()}, anonymous now {status['RssAnon'].strip()}, "
        f"file-backed now {status['RssFile'].strip()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=6.0)
    parser.add_argument("--limit-gib", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return train_and_test(args.gib, args.steps)
    CGROUP.mkdir(exist_ok=True)
    (CGROUP / "memory.limit_in_bytes").write_text(str(int(args.limit_gib * 2**30)))
    (CGROUP / "memory.max_usage_in_bytes").write_text("0")

    def enter_cgroup() -> None:
        (CGROUP / "cgroup.procs").write_text(str(os.getpid()))

    command = [sys.executable, __file__, "--inside", f"--gib={args.gib}", f"--steps={args.steps}"]
    print(f"cgroup limit {args.limit_gib} GiB; training split {args.gib} GiB; torch {torch.__version__}", flush=True)
    result = subprocess.run(command, preexec_fn=enter_cgroup, env={**os.environ, "OMP_NUM_THREADS": "2"})
    peak = int((CGROUP / "memory.max_usage_in_bytes").read_text()) / 2**30
    failures = int((CGROUP / "memory.failcnt").read_text())
    print(
        f"exit code {result.returncode}; cgroup peak {peak:.2f} GiB (page cache included), limit reached {failures} times"
    )


if __name__ == "__main__":
    main()
